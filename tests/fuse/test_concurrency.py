"""Concurrency through a real mount: one slow request never freezes the others.

Every request of a mount is served by one trio loop, so host I/O that blocks
must leave the loop (fs/host_io.read_nowait: preadv2(RWF_NOWAIT), else a worker thread).
Covered here:

* a read stalled on a slow host filesystem (``slowfs.py``, a FUSE fs whose
  reads sleep) does not delay stat/open/read/readdir of other mappings;
* many threads reading distinct files at once all get the host's bytes;
* many threads writing distinct files at once leave the right bytes on the host.

The only timing asserts are generous no-stall bounds (``FAST_OP_BOUND``
against a ``SLOW_READ_DELAY`` three times longer).
"""

from __future__ import annotations

import concurrent.futures
import os
import random
import sys
import threading
import time
from pathlib import Path

import pytest

from sandboxfs.fuse.child_mount import ChildMount

from .slowfs import FILE_NAME, content as slowfs_content

SLOWFS_SCRIPT = Path(__file__).with_name("slowfs.py")
SLOW_READ_DELAY = 3.0
FAST_OP_BOUND = 1.0
THREADS = 8
STRESS_SECONDS = 2.0


# -- the slow host filesystem ------------------------------------------------------------


class SlowFS(ChildMount):
    """A running ``slowfs.py`` child; its stdout (one line per read) goes to its log."""

    def __init__(self, mount_point: Path, log_path: Path, delay: float) -> None:
        super().__init__([sys.executable, str(SLOWFS_SCRIPT), str(mount_point), str(delay)],
                         mount_point, log_path)

    def wait_for_read(self, timeout: float = 10.0) -> None:
        """Return once a read has reached slowfs (and is now sleeping)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "read started" in self.log():
                return
            time.sleep(0.01)
        raise AssertionError(f"no read reached slowfs within {timeout}s:\n{self.log()}")


@pytest.fixture
def slowfs(workdir: Path) -> SlowFS:
    """A mounted slowfs; request it *before* sandboxfs_mount so it is torn down after."""
    mount_point = workdir / "slowfs-mnt"
    mount_point.mkdir()
    with SlowFS(mount_point, workdir / "slowfs.log", SLOW_READ_DELAY) as fs:
        yield fs


# -- helpers -----------------------------------------------------------------------------


def read_file(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def timed(operation, *args):
    """Run ``operation(*args)``; return (its result, seconds it took)."""
    start = time.monotonic()
    result = operation(*args)
    return result, time.monotonic() - start


def make_host_files(directory: Path, count: int, *, base_size: int = 100_000) -> dict[str, bytes]:
    """``count`` files of distinct random content and odd sizes; returns name -> bytes."""
    directory.mkdir(exist_ok=True)
    rng = random.Random(count)
    files = {}
    for i in range(count):
        name = f"file{i}.bin"
        data = rng.randbytes(base_size + i * 4097)
        (directory / name).write_bytes(data)
        files[name] = data
    return files


def run_in_threads(worker, args_list) -> list:
    """Run ``worker(*args)`` for each args in parallel threads; re-raise the first failure."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(args_list)) as pool:
        futures = [pool.submit(worker, *args) for args in args_list]
        return [future.result(timeout=60) for future in futures]


# -- a slow host read does not stall the loop ---------------------------------------------


def test_slow_host_read_does_not_stall_other_mappings(slowfs, sandboxfs_mount, workdir):
    fast_files = make_host_files(workdir / "fast", 4, base_size=10_000)
    (workdir / "fast" / "subdir").mkdir()
    mount = sandboxfs_mount([
        "--ttl", "0",  # every stat below reaches sandboxfs, none is answered by the kernel cache
        "--mapping", f"ro:/slow:{slowfs.mount_point}",
        "--mapping", f"ro:/fast:{workdir / 'fast'}",
    ])
    slow_result: list[bytes] = []
    reader = threading.Thread(
        target=lambda: slow_result.append(read_file(mount / "slow" / FILE_NAME.decode())),
        daemon=True,
    )
    reader.start()
    slowfs.wait_for_read()

    # Each operation names an entry not looked up before, so each is a new request.
    durations = {}
    for name, data in fast_files.items():
        st, durations[f"stat {name}"] = timed(os.stat, mount / "fast" / name)
        assert st.st_size == len(data)
    got, durations["read file0.bin"] = timed(read_file, mount / "fast" / "file0.bin")
    assert got == fast_files["file0.bin"]
    listing, durations["listdir subdir"] = timed(os.listdir, mount / "fast" / "subdir")
    assert listing == []
    listing, durations["listdir fast"] = timed(os.listdir, mount / "fast")
    assert sorted(listing) == sorted([*fast_files, "subdir"])

    slow = {op: seconds for op, seconds in durations.items() if seconds >= FAST_OP_BOUND}
    assert not slow, f"requests stalled behind a slow host read: {slow}"
    assert reader.is_alive(), "the slow read ended before the fast requests: nothing was tested"
    reader.join(timeout=60)
    assert not reader.is_alive(), "the slow read through sandboxfs never finished"
    assert slow_result == [slowfs_content()]


# -- many readers, many writers ------------------------------------------------------------


def _read_repeatedly(path: Path, expected: bytes, until: float) -> int:
    """Read ``path`` in random chunks until ``until``, dropping the page cache each round.

    Dropping the cache (POSIX_FADV_DONTNEED) makes every round a real request
    to sandboxfs instead of a page-cache hit.  Returns the number of rounds.
    """
    rng = random.Random(str(path))
    rounds = 0
    while time.monotonic() < until or rounds == 0:
        fd = os.open(path, os.O_RDONLY)
        try:
            chunks, offset = [], 0
            while True:
                chunk = os.pread(fd, rng.randint(1, 64 * 1024), offset)
                if not chunk:
                    break
                chunks.append(chunk)
                offset += len(chunk)
            assert b"".join(chunks) == expected, f"{path}: wrong bytes in round {rounds}"
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        rounds += 1
    return rounds


def test_concurrent_readers_of_distinct_files_get_host_bytes(sandboxfs_mount, workdir):
    files = make_host_files(workdir / "src", THREADS)
    mount = sandboxfs_mount(["--mapping", f"ro:/src:{workdir / 'src'}"])
    until = time.monotonic() + STRESS_SECONDS
    rounds = run_in_threads(
        _read_repeatedly, [(mount / "src" / name, data, until) for name, data in files.items()]
    )
    assert all(count >= 1 for count in rounds)


def _write_scattered(path: Path, data: bytes, seed: int) -> None:
    """Create ``path`` and fill it with ``data`` by pwrites of odd sizes in random order."""
    rng = random.Random(seed)
    pieces, offset = [], 0
    while offset < len(data):
        size = rng.randint(1, 20_000)
        pieces.append((offset, data[offset:offset + size]))
        offset += size
    rng.shuffle(pieces)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for offset, piece in pieces:
            assert os.pwrite(fd, piece, offset) == len(piece)
        os.fsync(fd)
    finally:
        os.close(fd)


def test_concurrent_writers_of_distinct_files_leave_host_bytes(sandboxfs_mount, workdir):
    (workdir / "out").mkdir()
    mount = sandboxfs_mount(["--mapping", f"rw:/out:{workdir / 'out'}"])
    rng = random.Random(7)
    files = {f"out{i}.bin": rng.randbytes(300_000 + i * 1031) for i in range(THREADS)}
    run_in_threads(
        _write_scattered,
        [(mount / "out" / name, data, seed) for seed, (name, data) in enumerate(files.items())],
    )
    for name, data in files.items():
        assert (workdir / "out" / name).read_bytes() == data, f"host {name} differs"
    assert sorted(os.listdir(workdir / "out")) == sorted(files)
