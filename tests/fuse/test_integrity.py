"""Data integrity through a read-write mapping: an fsx-style random-operation stress.

One file lives in a read-write mapping of a real mount; a model file in a native
directory (tmpfs, /dev/shm) receives exactly the same operations.  A seeded
``random.Random`` picks each operation and its arguments, so a run is replayed
exactly by its seed.  Operations (all real syscalls, on both files):

* pwrite at random offsets and lengths (also past the end, leaving holes),
  through either of two O_RDWR descriptors, and write(2) through an O_APPEND one;
* ftruncate up and down, truncate(2) by path (a different way to the same inode),
  and a reopen with O_TRUNC;
* pread at random places (also past the end), through the read-write descriptors,
  an O_RDONLY one (opened with ``keep_cache``) and, with ``--ttl 0``, one on a hard
  link (another inode to the kernel, which must still see every change);
* mmap reads, and mmap writes flushed with msync;
* fstat and stat(2) by path, compared on size;
* fsync / fdatasync;
* rename within the mapping (between its top and a subdirectory), keeping the
  descriptors open, and close + reopen by the current name;
* a full compare, which also reads the underlying host file natively.

Every result (bytes, sizes, return values, errno) must equal the model's.  The
first mismatch fails with the seed, the operation number and the tail of the
operation log.  The run is repeated with ``--ttl 0`` and with a long ``--ttl``
(the kernel then trusts its cached attributes for 60 s, which catches a size or
page cache that the server failed to keep coherent).

CI runs a few thousand operations with a fixed seed.  ``SANDBOXFS_SOAK=1`` (``make
soak``) runs 1,000,000 per mount with a random seed printed up front;
``SANDBOXFS_SEED`` fixes the seed and ``SANDBOXFS_OPS`` the number of operations.
"""

from __future__ import annotations

import collections
import itertools
import mmap
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from .harness import Mount

CI_SEED = 20240611
CI_OPS = 4_000
SOAK_OPS = 1_000_000
MAX_FILE_SIZE = 1 << 20  # fsx's default is 256 KiB; bigger crosses more FUSE request sizes
LOG_TAIL = 40
NAMES = ("f0", "f1", "sub/f2", "sub/f3")  # rename rotates among these (all in the mapping)
LINK_NAME = "lnk"  # a hard link to the file (--ttl 0 only: two names are two kernel inodes)
# Descriptor roles kept open on the file, and their flags.
ROLES = {"a": os.O_RDWR, "b": os.O_RDWR, "app": os.O_WRONLY | os.O_APPEND, "ro": os.O_RDONLY}


class Mismatch(AssertionError):
    """The mount and the model disagreed."""


def soak() -> bool:
    return os.environ.get("SANDBOXFS_SOAK") == "1"


def run_seed() -> int:
    if "SANDBOXFS_SEED" in os.environ:
        return int(os.environ["SANDBOXFS_SEED"])
    return random.SystemRandom().randrange(1 << 32) if soak() else CI_SEED


def run_ops() -> int:
    if "SANDBOXFS_OPS" in os.environ:
        return int(os.environ["SANDBOXFS_OPS"])
    return SOAK_OPS if soak() else CI_OPS


def first_difference(got: bytes, want: bytes) -> str:
    """Where two byte strings part, for the failure message."""
    for index, (a, b) in enumerate(zip(got, want)):
        if a != b:
            return (f"first difference at +{index}: got {got[index:index + 16].hex()} "
                    f"want {want[index:index + 16].hex()}")
    return f"lengths differ: got {len(got)} bytes, want {len(want)}"


def listing(directory: Path) -> list[str]:
    """Names in ``directory`` and its ``sub``, sorted."""
    return sorted(os.listdir(directory)) + sorted(f"sub/{n}" for n in os.listdir(directory / "sub"))


def read_all(fd: int) -> bytes:
    """The whole file through ``fd`` (pread from 0 until EOF)."""
    chunks, offset = [], 0
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


class Fsx:
    """Random operations on a file in the mount, mirrored on a model file.

    ``fds`` maps a descriptor role (``a``, ``b``: O_RDWR; ``app``: O_WRONLY |
    O_APPEND) to a (mount fd, model fd) pair.  ``name`` is the file's current
    relative name in both directories.
    """

    def __init__(self, rng: random.Random, mount_dir: Path, model_dir: Path, host_dir: Path,
                 link: bool = False) -> None:
        self.rng = rng
        self.link = link
        self.mount_dir = mount_dir
        self.model_dir = model_dir
        self.host_dir = host_dir
        self.name = NAMES[0]
        self.fds: dict[str, tuple[int, int]] = {}
        self.log: collections.deque[str] = collections.deque(maxlen=LOG_TAIL)
        self.counts: collections.Counter[str] = collections.Counter()
        self.op_number = 0
        for directory in (mount_dir, model_dir):
            (directory / "sub").mkdir()
        self._open(os.O_CREAT | os.O_EXCL)
        if link:
            for directory in (model_dir, mount_dir):
                os.link(directory / self.name, directory / LINK_NAME)
            self._open_link()
        self.operations: list[tuple[str, Callable[[], None], int]] = [
            ("write", self.op_write, 20),
            ("append", self.op_append, 5),
            ("read", self.op_read, 20),
            ("mapread", self.op_mapread, 6),
            ("mapwrite", self.op_mapwrite, 4),
            ("ftruncate", self.op_ftruncate, 6),
            ("truncate", self.op_truncate_path, 3),
            ("stat", self.op_stat, 8),
            ("fsync", self.op_fsync, 2),
            ("rename", self.op_rename, 3),
            ("reopen", self.op_reopen, 3),
            ("trunc-open", self.op_trunc_open, 1),
            ("compare", self.op_compare, 2),
        ]

    # -- bookkeeping ------------------------------------------------------------------

    def _paths(self) -> tuple[Path, Path]:
        return self.mount_dir / self.name, self.model_dir / self.name

    def _open(self, extra: int = 0) -> None:
        for role, flags in ROLES.items():
            self._open_role(role, flags | extra)
            extra &= ~(os.O_CREAT | os.O_EXCL)  # created by the first role

    def _open_role(self, role: str, flags: int, name: str | None = None) -> None:
        name = name or self.name
        model_fd = os.open(self.model_dir / name, flags, 0o644)
        try:
            mount_fd = os.open(self.mount_dir / name, flags, 0o644)
        except BaseException:
            os.close(model_fd)
            raise
        self.fds[role] = (mount_fd, model_fd)

    def _open_link(self) -> None:
        """A read-only descriptor on the hard link: another inode to the kernel."""
        self._open_role("lnk", os.O_RDONLY, LINK_NAME)

    def _close_role(self, role: str) -> None:
        for fd in self.fds.pop(role):
            os.close(fd)

    def close(self) -> None:
        for role in list(self.fds):
            self._close_role(role)

    def model_size(self) -> int:
        return os.fstat(self.fds["a"][1]).st_size

    def note(self, text: str) -> None:
        self.log.append(f"#{self.op_number} {text}")

    def fail(self, what: str) -> None:
        raise Mismatch(f"op #{self.op_number}: {what}")

    def check(self, what: str, got, want) -> None:
        if got != want:
            if isinstance(got, (bytes, bytearray)) and isinstance(want, (bytes, bytearray)):
                self.fail(f"{what}: {first_difference(bytes(got), bytes(want))}")
            self.fail(f"{what}: got {got!r}, want {want!r}")

    def both(self, what: str, action: Callable[[int], object], role: str = "a"):
        """Run ``action(fd)`` on the model then the mount; results and errnos must agree."""
        mount_fd, model_fd = self.fds[role]
        try:
            want = action(model_fd)
        except OSError as exc:
            want = f"OSError errno {exc.errno}"
        try:
            got = action(mount_fd)
        except OSError as exc:
            got = f"OSError errno {exc.errno}"
        self.check(what, got, want)
        return got

    def role(self) -> str:
        """A read-write descriptor."""
        return self.rng.choice(("a", "b"))

    def reading_role(self) -> str:
        return self.rng.choice(("a", "b", "ro", "lnk") if self.link else ("a", "b", "ro"))

    def length(self) -> int:
        """Mostly small lengths, sometimes up to 128 KiB (more than one FUSE request)."""
        limit = self.rng.choice((16, 512, 4096, 65536, 131072))
        return self.rng.randint(1, limit)

    # -- operations -------------------------------------------------------------------

    def op_write(self) -> None:
        role, length = self.role(), self.length()
        offset = self.rng.randint(0, MAX_FILE_SIZE - length)
        data = self.rng.randbytes(length)
        self.note(f"pwrite fd={role} off={offset} len={length}")
        self.both("pwrite result", lambda fd: os.pwrite(fd, data, offset), role)

    def op_append(self) -> None:
        length = self.length()
        data = self.rng.randbytes(length)
        if self.model_size() + length > MAX_FILE_SIZE:
            self.note(f"append skipped (size {self.model_size()})")
            return
        self.note(f"append len={length} at {self.model_size()}")
        self.both("append result", lambda fd: os.write(fd, data), "app")

    def op_read(self) -> None:
        role, length = self.reading_role(), self.length()
        offset = self.rng.randint(0, self.model_size() + 4096)
        self.note(f"pread fd={role} off={offset} len={length}")
        self.both(f"pread fd={role} off={offset} len={length}",
                  lambda fd: os.pread(fd, length, offset), role)

    def op_mapread(self) -> None:
        size = self.model_size()
        if size == 0:
            self.note("mapread skipped (empty)")
            return
        offset = self.rng.randrange(size)
        length = min(self.length(), size - offset)
        self.note(f"mapread size={size} off={offset} len={length}")
        mount_fd, model_fd = self.fds["a"]
        with mmap.mmap(mount_fd, size, access=mmap.ACCESS_READ) as view:
            got = view[offset:offset + length]
        self.check(f"mmap read off={offset} len={length}", got, os.pread(model_fd, length, offset))

    def op_mapwrite(self) -> None:
        size = self.model_size()
        if size == 0:
            self.note("mapwrite skipped (empty)")
            return
        offset = self.rng.randrange(size)
        length = min(self.length(), size - offset)
        data = self.rng.randbytes(length)
        self.note(f"mapwrite size={size} off={offset} len={length}")
        mount_fd, model_fd = self.fds["a"]
        with mmap.mmap(mount_fd, size, access=mmap.ACCESS_WRITE) as view:
            view[offset:offset + length] = data
            view.flush()  # msync(MS_SYNC): the pages go to sandboxfs as writes
        os.pwrite(model_fd, data, offset)

    def new_size(self) -> int:
        size = self.model_size()
        if self.rng.random() < 0.5:
            return self.rng.randint(0, size)  # down (or equal)
        return self.rng.randint(size, MAX_FILE_SIZE)  # up (or equal)

    def op_ftruncate(self) -> None:
        role, size = self.role(), self.new_size()
        self.note(f"ftruncate fd={role} {self.model_size()} -> {size}")
        self.both("ftruncate", lambda fd: os.ftruncate(fd, size), role)

    def op_truncate_path(self) -> None:
        size = self.new_size()
        mount_path, model_path = self._paths()
        self.note(f"truncate path={self.name} {self.model_size()} -> {size}")
        os.truncate(model_path, size)
        os.truncate(mount_path, size)
        # The descriptors must see the new size at once, whatever the attribute timeout.
        self.both("fstat size after truncate by path", lambda fd: os.fstat(fd).st_size,
                  self.role())

    def op_stat(self) -> None:
        role = self.rng.choice(list(self.fds))
        mount_path, model_path = self._paths()
        self.note(f"stat fd={role} path={self.name}")
        self.both(f"fstat size fd={role}", lambda fd: os.fstat(fd).st_size, role)
        self.check("stat size by path", os.stat(mount_path).st_size, os.stat(model_path).st_size)

    def op_fsync(self) -> None:
        role = self.rng.choice(("a", "b", "app"))
        data_only = self.rng.random() < 0.5
        self.note(f"{'fdatasync' if data_only else 'fsync'} fd={role}")
        self.both("fsync", lambda fd: (os.fdatasync if data_only else os.fsync)(fd), role)

    def op_rename(self) -> None:
        new_name = self.rng.choice([name for name in NAMES if name != self.name])
        self.note(f"rename {self.name} -> {new_name}")
        for directory in (self.model_dir, self.mount_dir):
            os.rename(directory / self.name, directory / new_name)
        self.name = new_name
        self.check("listing after rename", listing(self.mount_dir), listing(self.model_dir))

    def op_reopen(self) -> None:
        self.note(f"close all, reopen {self.name}")
        self.close()
        self._open()
        if self.link:
            self._open_link()

    def op_trunc_open(self) -> None:
        self.note(f"reopen fd=b of {self.name} with O_TRUNC (size {self.model_size()} -> 0)")
        self._close_role("b")
        self._open_role("b", os.O_RDWR | os.O_TRUNC)
        self.both("fstat size after O_TRUNC open, fd=a", lambda fd: os.fstat(fd).st_size, "a")

    def op_compare(self) -> None:
        mount_path, _ = self._paths()
        self.note(f"full compare of {self.name} (fresh fd, descriptor a, host file)")
        want = read_all(self.fds["a"][1])
        with open(mount_path, "rb") as f:  # read-only open: keep_cache, the cached pages
            self.check("full compare through a new read-only fd", f.read(), want)
        for role in ("a", "ro", "lnk") if self.link else ("a", "ro"):
            self.check(f"full compare through fd {role}", read_all(self.fds[role][0]), want)
        self.check("host file (read natively)", (self.host_dir / self.name).read_bytes(), want)

    # -- driver -----------------------------------------------------------------------

    def run(self, count: int) -> None:
        names = [name for name, _, _ in self.operations]
        actions = [action for _, action, _ in self.operations]
        weights = list(itertools.accumulate(w for _, _, w in self.operations))
        indices = range(len(actions))
        for self.op_number in range(1, count + 1):
            index = self.rng.choices(indices, cum_weights=weights)[0]
            self.counts[names[index]] += 1
            actions[index]()
        self.op_number += 1
        self.op_compare()


# -- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture
def model_dir() -> Iterator[Path]:
    """A native directory for the model file, on tmpfs when there is one."""
    parent = "/dev/shm" if os.path.isdir("/dev/shm") else None
    path = Path(tempfile.mkdtemp(prefix="sbx-fsx-model-", dir=parent))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def announce(capsys, text: str) -> None:
    """Print at once, even under pytest's output capture (the soak's seed must show up front)."""
    with capsys.disabled():
        print(f"\n{text}", flush=True)


def run_fsx(mount: Mount, host_dir: Path, model_dir: Path, seed: int, count: int, label: str,
            test_id: str = "tests/fuse/test_integrity.py", link: bool = False):
    """Run ``count`` random operations; fail with everything needed to replay them."""
    fsx = Fsx(random.Random(seed), mount / "rw", model_dir, host_dir, link=link)
    started = time.monotonic()
    try:
        fsx.run(count)
    except Exception as exc:
        tail = "\n".join(fsx.log)
        raise Mismatch(
            f"{label}: {exc}\nreplay: SANDBOXFS_SEED={seed} SANDBOXFS_OPS={count} "
            f"pytest '{test_id}'\nlast operations:\n{tail}\n"
            f"sandboxfs log:\n{mount.log()[-3000:]}"
        ) from exc
    finally:
        fsx.close()
    return fsx, time.monotonic() - started


# -- the test ------------------------------------------------------------------------------


@pytest.mark.parametrize("ttl", ["0", "60"])
def test_random_operations_match_a_native_model(
    ttl, sandboxfs_mount, workdir, model_dir, capsys, request
):
    seed, count = run_seed(), run_ops()
    label = f"fsx --ttl {ttl} seed {seed}, {count} ops"
    announce(capsys, f"[integrity] {label} (replay: SANDBOXFS_SEED={seed} SANDBOXFS_OPS={count})")
    host_dir = workdir / "host"
    host_dir.mkdir()
    mount = sandboxfs_mount(["--ttl", ttl, "--mapping", f"rw:/rw:{host_dir}"])

    # With --ttl 0 the kernel revalidates before every read, so even a hard link
    # (another inode to the kernel) must show every change at once.
    fsx, seconds = run_fsx(mount, host_dir, model_dir, seed, count, label, request.node.nodeid,
                           link=ttl == "0")

    ops_done = sum(fsx.counts.values())
    assert ops_done == count, f"{label}: ran {ops_done} operations"
    assert "answering EIO" not in mount.log(), mount.log()[-3000:]
    announce(capsys, f"[integrity] {label}: 0 mismatches in {seconds:.1f} s "
                     f"({count / seconds:.0f} ops/s); {dict(sorted(fsx.counts.items()))}")
