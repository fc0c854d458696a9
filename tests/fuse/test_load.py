"""Load through a real mount: many clients cycling sandboxes while others read and write.

Separate processes, each with its own control connection or its own files:

* ``CLIENTS`` (at least 8) cycle processes: create a sandbox (a read-only
  directory, a single-file mapping, a group of lazy read-only leaves, a
  read-write directory), use it (read mapped files and check every byte, list
  it, write a file into the read-write mapping and read it back through the
  mount and on the host, rename and unlink it), destroy it, and check that its
  name no longer resolves.  Each process has its own sandbox name and recreates
  it every cycle with another file at ``/tool``; the mount runs with ``--ttl
  60``, so an entry or page the kernel kept from the previous incarnation would
  show the wrong bytes.
* ``READERS`` reader processes stream the files of their own long-lived sandbox
  in random chunks, checking every byte, dropping the page cache after each
  file so every round reaches sandboxfs.
* ``WRITERS`` writer processes write files in scattered pwrites into a
  read-write mapping of their own long-lived sandbox, read them back through
  the mount (page cache dropped) and natively on the host, truncate, rename and
  unlink them.

The load runs for a bounded time, twice: a warm-up, then the measured run.
Afterwards: zero errors and zero wrong bytes in every process; once the kernel
has dropped its dentries and inodes (``drop_caches``), the server's inode table
is back at its baseline (the count right after mounting) with no open handles;
and the server's RSS (``VmRSS``) after the measured run exceeds the one after
the warm-up by at most ``RSS_SLACK`` plus ``RSS_PER_LIVE_SANDBOX`` for each
sandbox that is live at the end and was not at the warm-up's end.  Cycles per
second are printed (and named in every failure); they are not asserted.

``SANDBOXFS_SOAK=1`` (``make soak``) runs 5 minutes with more processes.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import queue
import random
import time
import traceback
from pathlib import Path
from typing import Any, Callable


from sandboxfs.control.client import Client

from .harness import Mount

SOAK = os.environ.get("SANDBOXFS_SOAK") == "1"
CLIENTS = 16 if SOAK else 8
READERS = 4 if SOAK else 2
WRITERS = 4 if SOAK else 2
LOAD_SECONDS = float(os.environ.get("SANDBOXFS_LOAD_SECONDS", 300.0 if SOAK else 10.0))
WARMUP_SECONDS = min(30.0 if SOAK else 3.0, max(1.0, LOAD_SECONDS / 4))
SETTLE_SECONDS = 30.0  # for the kernel to send its FORGETs after drop_caches
RSS_SLACK = 16 << 20  # allocator and high-water noise of a Python process
RSS_PER_LIVE_SANDBOX = 256 << 10  # a sandbox here has < 10 mappings: far less than this
MAX_ERRORS_KEPT = 5

# Host files mapped into every sandbox: name -> size (odd sizes, up to 512 KiB).
SOURCE_SIZES = {f"f{i}.bin": size for i, size in enumerate(
    [1, 4095, 4096, 4097, 65_537, 131_071, 200_003, 524_288]
)}
GROUP_NAMES = ["f0.bin", "f1.bin", "f2.bin", "f3.bin"]
# A cycle sandbox's /tool maps one of these in turn: a stale cached entry or page
# from the previous incarnation of the sandbox would show the wrong bytes.
TOOL_NAMES = ["f3.bin", "f4.bin", "f5.bin"]


# -- host tree and expectations ------------------------------------------------------------


def make_sources(directory: Path) -> dict[str, bytes]:
    """Random files in ``directory`` (and ``deep/er/``); returns relative path -> bytes."""
    rng = random.Random(1)
    files = {name: rng.randbytes(size) for name, size in SOURCE_SIZES.items()}
    files["deep/er/nested.bin"] = rng.randbytes(33_333)
    for relative, data in files.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def nodes_of_live_sandboxes(files: dict[str, bytes]) -> int:
    """The most inodes the kernel can hold once only the long-lived sandboxes are in use.

    The root; per reader its top, ``src`` and everything below; per writer the
    same plus ``out`` (its files are all unlinked at the end).
    """
    directories = {str(parent) for relative in files for parent in Path(relative).parents} - {"."}
    below_src = len(files) + len(directories)
    return 1 + READERS * (2 + below_src) + WRITERS * (3 + below_src)


def cycle_mappings(src: Path, out: Path, tool: str) -> list[tuple]:
    return [
        ("/src", src),
        ("/tool", src / tool),
        *[(f"/group/{name}", src / name) for name in GROUP_NAMES],  # lazy leaves, one group
        ("/out", out, True),
    ]


def cycle_expected(files: dict[str, bytes], tool: str) -> dict[str, bytes]:
    """Relative path inside a cycle sandbox -> the bytes it must show."""
    expected = {f"src/{relative}": data for relative, data in files.items()}
    expected["tool"] = files[tool]
    expected.update({f"group/{name}": files[name] for name in GROUP_NAMES})
    return expected


# -- what a worker process reports ---------------------------------------------------------


class Tally:
    """Counts of one worker process, sent back to the test as a dict."""

    def __init__(self, kind: str, index: int) -> None:
        self.kind = kind
        self.index = index
        self.units = 0  # cycles, files read or files written
        self.bytes = 0
        self.errors = 0
        self.wrong_bytes = 0
        self.messages: list[str] = []

    def error(self, text: str) -> None:
        self.errors += 1
        self._keep(text)

    def wrong(self, what: str, got: bytes, want: bytes) -> None:
        self.wrong_bytes += 1
        self._keep(f"wrong bytes in {what}: got {len(got)} bytes, want {len(want)}"
                   f"{'' if len(got) != len(want) else ' (same length, different content)'}")

    def check(self, what: str, got: bytes, want: bytes) -> None:
        if got != want:
            self.wrong(what, got, want)
        self.bytes += len(got)

    def _keep(self, text: str) -> None:
        if len(self.messages) < MAX_ERRORS_KEPT:
            self.messages.append(f"{self.kind}{self.index}: {text}")

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def read_through(path: Path, rng: random.Random) -> bytes:
    """Read a whole file in random-sized chunks, then drop its page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks, offset = [], 0
        while True:
            chunk = os.pread(fd, rng.randint(1, 96 * 1024), offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_scattered(fd: int, data: bytes, rng: random.Random) -> None:
    """Fill ``fd`` with ``data`` by pwrites of odd sizes in random order."""
    pieces, offset = [], 0
    while offset < len(data):
        size = rng.randint(1, 40_000)
        pieces.append((offset, data[offset:offset + size]))
        offset += size
    rng.shuffle(pieces)
    for offset, piece in pieces:
        if os.pwrite(fd, piece, offset) != len(piece):
            raise OSError(errno.EIO, f"short write at {offset}")


# -- the worker processes -------------------------------------------------------------------


def one_cycle(client: Client, mount_point: Path, name: str, mappings: list[tuple],
              expected: dict[str, bytes], host_out: Path, rng: random.Random, tally: Tally) -> None:
    """create -> use -> destroy one sandbox; wrong bytes are tallied, failures raise."""
    created = client.create_sandbox(name, mappings)
    top = Path(os.fsdecode(created["path"]))
    try:
        if sorted(os.listdir(top)) != ["group", "out", "src", "tool"]:
            tally.error(f"{name}: listing {sorted(os.listdir(top))}")
        for relative in ["tool", *rng.sample(sorted(expected), 2)]:
            tally.check(f"{name}/{relative}", read_through(top / relative, rng), expected[relative])
        data = rng.randbytes(rng.randint(1, 100_000))
        result = top / "out" / f"result-{name}.bin"
        fd = os.open(result, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            write_scattered(fd, data, rng)
        finally:
            os.close(fd)
        tally.check(f"{name}: written file read back", read_through(result, rng), data)
        tally.check(f"{name}: written file on the host",
                    (host_out / result.name).read_bytes(), data)
        os.rename(result, top / "out" / "done.bin")
        os.unlink(top / "out" / "done.bin")
    finally:
        client.destroy_sandbox(name)
    try:
        os.stat(top)
        tally.error(f"{name}: still resolves after destroy_sandbox")
    except FileNotFoundError:
        pass


def cycle_worker(index: int, control: str, mount_point: str, src: str, out: str,
                 files: dict[str, bytes], seconds: float, start, results) -> None:
    """Create -> use -> destroy sandbox ``c<index>`` on one connection until ``seconds`` pass.

    The name is this worker's alone and is recreated every cycle, each time
    with another file at ``/tool``.
    """
    tally = Tally("cycle", index)
    rng = random.Random(index)
    name = f"c{index}"
    variants = [(cycle_mappings(Path(src), Path(out), tool), cycle_expected(files, tool))
                for tool in TOOL_NAMES]
    try:
        with Client(control) as client:
            start.wait()
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                mappings, expected = variants[tally.units % len(variants)]
                try:
                    one_cycle(client, Path(mount_point), name, mappings, expected, Path(out),
                              rng, tally)
                except Exception as exc:
                    tally.error(f"{name} cycle {tally.units}: {exc!r}")
                tally.units += 1
    except Exception:
        tally.error(traceback.format_exc())
    results.put(tally.as_dict())


def reader_worker(index: int, top: str, files: dict[str, bytes], seconds: float,
                  start, results) -> None:
    """Stream the files of a long-lived sandbox, checking every byte, until ``seconds`` pass."""
    tally = Tally("reader", index)
    rng = random.Random(1000 + index)
    names = sorted(files)
    try:
        start.wait()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            relative = rng.choice(names)
            try:
                tally.check(relative, read_through(Path(top) / "src" / relative, rng), files[relative])
            except OSError as exc:
                tally.error(f"{relative}: {exc!r}")
            tally.units += 1
    except Exception:
        tally.error(traceback.format_exc())
    results.put(tally.as_dict())


def write_one(top: Path, host: Path, number: int, rng: random.Random, tally: Tally) -> None:
    """Write, verify, shrink, verify, rename and unlink one file in a read-write mapping."""
    path = top / "out" / f"w{number}.bin"
    data = rng.randbytes(rng.randint(1, 400_000))
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        write_scattered(fd, data, rng)
        if rng.random() < 0.2:
            os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # read back from sandboxfs
        tally.check(f"{path.name} read back", os.pread(fd, len(data) + 1, 0), data)
        tally.check(f"{path.name} on the host", (host / path.name).read_bytes(), data)
        keep = rng.randint(0, len(data))
        os.ftruncate(fd, keep)
        if os.fstat(fd).st_size != keep or os.stat(path).st_size != keep:
            tally.error(f"{path.name}: size after ftruncate to {keep}: "
                        f"fstat {os.fstat(fd).st_size}, stat {os.stat(path).st_size}")
    finally:
        os.close(fd)
    tally.check(f"{path.name} truncated, on the host", (host / path.name).read_bytes(), data[:keep])
    os.rename(path, top / "out" / f"done{number}.bin")
    os.unlink(top / "out" / f"done{number}.bin")


def writer_worker(index: int, top: str, host: str, seconds: float, start, results) -> None:
    """Write and verify files in a long-lived read-write mapping until ``seconds`` pass."""
    tally = Tally("writer", index)
    rng = random.Random(2000 + index)
    try:
        start.wait()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                write_one(Path(top), Path(host), tally.units, rng, tally)
            except OSError as exc:
                tally.error(f"file {tally.units}: {exc!r}")
            tally.units += 1
    except Exception:
        tally.error(traceback.format_exc())
    results.put(tally.as_dict())


# -- running a phase ------------------------------------------------------------------------


class Load:
    """The mount, its host tree and its long-lived sandboxes; runs load phases."""

    def __init__(self, mount: Mount, workdir: Path) -> None:
        self.mount = mount
        self.control = str(mount.mount_point) + ".sock"
        self.src = workdir / "src"
        self.files = make_sources(self.src)
        self.out = workdir / "out"
        self.phase = 0

    def long_lived(self, client: Client) -> tuple[list[str], list[tuple[str, Path]]]:
        """Create the readers' and writers' sandboxes; returns their tops (and writers' hosts)."""
        readers = []
        for j in range(READERS):
            readers.append(os.fsdecode(client.create_sandbox(f"reader{j}", [("/src", self.src)])["path"]))
        writers = []
        for j in range(WRITERS):
            host = self.out / f"writer{j}"
            host.mkdir(parents=True)
            top = client.create_sandbox(f"writer{j}", [("/src", self.src), ("/out", host, True)])
            writers.append((os.fsdecode(top["path"]), host))
        return readers, writers

    def run_phase(self, seconds: float, readers: list[str], writers: list[tuple[str, Path]]):
        """All worker processes for ``seconds``; returns (their tallies, wall seconds)."""
        self.phase += 1
        context = multiprocessing.get_context("fork")
        start, results = context.Event(), context.Queue()
        processes: list[multiprocessing.Process] = []

        def spawn(target: Callable, *args: Any) -> None:
            process = context.Process(target=target, args=(*args, seconds, start, results),
                                      daemon=True)
            process.start()
            processes.append(process)

        for k in range(CLIENTS):
            out = self.out / f"phase{self.phase}-cycle{k}"
            out.mkdir(parents=True)
            spawn(cycle_worker, k, self.control, str(self.mount.mount_point), str(self.src),
                  str(out), self.files)
        for j, top in enumerate(readers):
            spawn(reader_worker, j, top, self.files)
        for j, (top, host) in enumerate(writers):
            spawn(writer_worker, j, top, str(host))
        try:
            began = time.monotonic()
            start.set()
            tallies = collect(results, processes, time.monotonic() + seconds + 120)
            wall = time.monotonic() - began
            for process in processes:
                process.join(timeout=30)
        finally:
            for process in processes:  # only on failure: ours, by PID
                if process.is_alive():
                    process.kill()
                    process.join(timeout=10)
        return tallies, wall


def collect(results, processes: list, deadline: float) -> list[dict]:
    """One tally per process; fails if one died without reporting or hung."""
    tallies: list[dict] = []
    while len(tallies) < len(processes):
        try:
            tallies.append(results.get(timeout=1.0))
            continue
        except queue.Empty:
            pass
        exited = [p for p in processes if p.exitcode is not None]
        if len(exited) == len(processes) and results.empty():
            codes = [p.exitcode for p in processes]
            raise AssertionError(f"worker processes died without reporting: exit codes {codes}")
        if time.monotonic() > deadline:
            raise AssertionError(f"worker processes hung: {len(tallies)} of {len(processes)} reported")
    return tallies


# -- measuring the server ------------------------------------------------------------------


def drop_kernel_caches() -> None:
    """Make the kernel drop unused dentries and inodes: it then FORGETs our inodes.

    Without this the kernel keeps what it cached (here: the long-lived
    sandboxes' entries) until memory pressure; ``2`` leaves the page cache alone.
    """
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")


def settle_inodes(client: Client, target: int, drop: bool = True) -> dict:
    """Wait until the inode table is at most ``target`` with no handles (or time is up).

    With ``drop``, the kernel is told to drop its caches before each look:
    otherwise it keeps what it has cached until memory pressure or ``--ttl``.
    Returns the last stats.
    """
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        if drop:
            drop_kernel_caches()
        stats = client.stats()
        if (stats["inodes"] <= target and stats["handles"] == 0) or time.monotonic() > deadline:
            return stats
        time.sleep(0.2)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def summarize(tallies: list[dict], wall: float) -> dict[str, Any]:
    by_kind: dict[str, list[dict]] = {}
    for tally in tallies:
        by_kind.setdefault(tally["kind"], []).append(tally)
    cycles = sum(t["units"] for t in by_kind.get("cycle", []))
    return {
        "cycles": cycles,
        "cycles_per_s": round(cycles / wall, 1),
        "files_read": sum(t["units"] for t in by_kind.get("reader", [])),
        "files_written": sum(t["units"] for t in by_kind.get("writer", [])),
        "mib_checked": round(sum(t["bytes"] for t in tallies) / (1 << 20), 1),
        "errors": sum(t["errors"] for t in tallies),
        "wrong_bytes": sum(t["wrong_bytes"] for t in tallies),
        "messages": [m for t in tallies for m in t["messages"]][:20],
        "idle": [f"{t['kind']}{t['index']}" for t in tallies if t["units"] == 0],
        "wall_s": round(wall, 1),
    }


def announce(capsys, text: str) -> None:
    """Print at once, even under pytest's output capture."""
    with capsys.disabled():
        print(f"\n{text}", flush=True)


# -- the test ------------------------------------------------------------------------------


def test_sandbox_cycles_under_read_and_write_load(sandboxfs_mount, workdir, capsys):
    mount = sandboxfs_mount(["--ttl", "60"])
    pid = mount.proc.pid
    load = Load(mount, workdir)
    with Client(load.control) as client:
        baseline = settle_inodes(client, 1)
        rss_start = rss_bytes(pid)
        readers, writers = load.long_lived(client)
        live_before = len(client.list())
        explained = nodes_of_live_sandboxes(load.files)

        warm_tallies, warm_wall = load.run_phase(WARMUP_SECONDS, readers, writers)
        warm = summarize(warm_tallies, warm_wall)
        after_warm = settle_inodes(client, baseline["inodes"])
        rss_warm = rss_bytes(pid)

        tallies, wall = load.run_phase(LOAD_SECONDS, readers, writers)
        main = summarize(tallies, wall)
        # Destroyed sandboxes leave nothing even before drop_caches: destroy_sandbox
        # invalidates their entry, and the kernel then forgets everything below it.
        before_drop = settle_inodes(client, explained, drop=False)
        after_load = settle_inodes(client, baseline["inodes"])
        rss_end = rss_bytes(pid)
        live_after = len(client.list())
        control_errors = client.stats()["errors"]

    figures = (
        f"{CLIENTS} cycle clients, {READERS} readers, {WRITERS} writers; "
        f"warm-up {warm['cycles_per_s']} cycles/s; measured run: {main['cycles']} cycles in "
        f"{main['wall_s']} s = {main['cycles_per_s']} cycles/s, {main['files_read']} files "
        f"streamed, {main['files_written']} files written, {main['mib_checked']} MiB checked; "
        f"inodes baseline {baseline['inodes']} -> {after_warm['inodes']} after warm-up -> "
        f"{before_drop['inodes']} after load before drop_caches (live sandboxes explain "
        f"{explained}) -> {after_load['inodes']} after drop_caches (handles {after_load['handles']}); "
        f"RSS {rss_start >> 20} MiB at start, {rss_warm >> 20} MiB after warm-up, "
        f"{rss_end >> 20} MiB after load; live sandboxes {live_before} -> {live_after}"
    )
    announce(capsys, f"[load] {figures}")
    for phase in (warm, main):
        assert phase["errors"] == 0 and phase["wrong_bytes"] == 0, (figures, phase["messages"])
        assert phase["idle"] == [], f"processes that did nothing: {phase['idle']}; {figures}"
    assert control_errors == {}, f"control requests failed: {control_errors}; {figures}"
    assert mount.alive(), f"sandboxfs died:\n{mount.log()[-3000:]}"
    assert "Traceback" not in mount.log(), mount.log()[-3000:]
    assert before_drop["inodes"] <= explained, (
        f"{before_drop['inodes']} inodes after the load with only the long-lived sandboxes "
        f"in use, which explain at most {explained}: destroyed sandboxes leaked; {figures}"
    )
    for stats in (after_warm, after_load):
        assert stats["inodes"] == baseline["inodes"] and stats["handles"] == 0, (
            f"inode table not back at its baseline within {SETTLE_SECONDS} s of drop_caches "
            f"(inodes {stats['inodes']}, handles {stats['handles']}); {figures}"
        )
    assert live_after == live_before == READERS + WRITERS, figures
    allowed = RSS_SLACK + RSS_PER_LIVE_SANDBOX * max(0, live_after - live_before)
    assert rss_end - rss_warm <= allowed, (
        f"RSS grew by {(rss_end - rss_warm) >> 20} MiB over the measured run "
        f"(allowed {allowed >> 20} MiB); {figures}"
    )
    leftovers = [p for p in load.out.rglob("*") if p.is_file()]
    assert leftovers == [], f"files the workers unlinked are still on the host: {leftovers[:5]}"
