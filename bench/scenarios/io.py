"""Scenario 3: raw I/O through the layers: native directory, sandboxfs (both transports, and
``--no-open``), each with one directory mapping and with one mapping per file, and bindfs.

All show the same host directory.  *sandboxfs* is a read-only directory mapping (and a
read-write one for writes) in one sandbox of the shared mount, which runs our kernel
transport (--ttl 60); *sandboxfs_no_open* the same mappings (static ``--mapping``) of a
second mount on the kernel transport with ``--no-open``; *sandboxfs_pyfuse3* those of a
third mount on the pyfuse3 transport.  Each ``*_files`` layer is the same mount with, each
round, a sandbox that maps every input as its own read-only mapping at the same relative
path (the big file, each small file, each gcc header and main.c, each entry of the listed
directory, which so becomes a directory of file mappings), as a build tool maps declared
inputs; writes still go to a read-write directory mapping.  The big and small files they
map are twins of the directory layers' (same size, other host files): a mount may answer
one kernel inode per read-only host file across its sandboxes (fs.shared_files), so
otherwise whichever layer of a mount ran second would find the pages warm.  Their listed
directory is new each round (a new sandbox), the other layers list the same one every
round.  Those sandboxes are created after the round's files and before its first timed
operation, and destroyed at its end (not timed; each server is left to go idle after
either).  bindfs has its caches on (see mounts.BINDFS_OPTIONS).  Servers run on the last
CPU, this process on CPU 0 (``mounts.pin_client``).

Each round creates fresh files on the host (all of them before the first layer runs), so
"first" means never looked at through that layer (the host page cache is warm: we measure
the layer, not the disk); "repeat" is the same operation right after.  Layers run in
rotated order; the first round is a warm-up and is dropped.

Server CPU per request, two figures:

* per LOOKUP, in each layer's own *stat first* phase (each stat of a new name is one LOOKUP
  on every layer): (a) the server's own counter (``fuse_ops["server_cpu_us"]``: thread CPU
  from a request read to its reply written; the kernel transport only: pyfuse3's counts
  requests, not their time) and (b) the server process's CPU from /proc
  (``mounts.thread_cpu_ns``: all its threads, wake-ups and the reads of requests
  included), each over the LOOKUPs the server counted in that phase (bindfs, which counts
  nothing: over the stats plus one for their new directory, the count the sandboxfs
  counters show); kept per measured round and summed;
* over the whole scenario: each sandboxfs server's CPU (/proc, clock ticks) less what it
  spent creating and destroying the per-file sandboxes, over every FUSE request it
  counted, dominated by the big reads and writes.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

from bench import mounts, tree
from sandboxfs.client import Client
from bench.measure import Progress, Timer, paired_ratio, rounds, summary

# layer -> the mount that serves it (None: no FUSE server)
SERVED_BY = {"native": None, "sandboxfs": "sandboxfs", "sandboxfs_files": "sandboxfs",
             "sandboxfs_no_open": "sandboxfs_no_open",
             "sandboxfs_no_open_files": "sandboxfs_no_open",
             "sandboxfs_pyfuse3": "sandboxfs_pyfuse3",
             "sandboxfs_pyfuse3_files": "sandboxfs_pyfuse3", "bindfs": "bindfs"}
LAYERS = tuple(SERVED_BY)
PER_FILE = tuple(layer for layer in LAYERS if layer.endswith("_files"))
SANDBOXFS_MOUNTS = ("sandboxfs", "sandboxfs_no_open", "sandboxfs_pyfuse3")
CHUNK = 1 << 20
SETTLE_SECONDS = 0.02  # a server whose CPU grew less than 2% over this long is idle

# metric -> (unit, better): "higher" for throughput, "lower" for latency
METRICS = {
    "seq_read_first": ("MB/s", "higher"),
    "seq_read_repeat": ("MB/s", "higher"),
    "stat_first": ("µs/op", "lower"),
    "stat_repeat": ("µs/op", "lower"),
    "stat_missing_first": ("µs/op", "lower"),
    "stat_missing_repeat": ("µs/op", "lower"),
    "small_read_first": ("µs/file", "lower"),
    "small_read_repeat": ("µs/file", "lower"),
    "readdir_10k": ("ms", "lower"),
    "seq_write": ("MB/s", "higher"),
    "gcc_first": ("ms", "lower"),
    "gcc_repeat": ("ms", "lower"),
}
GCC_HEADERS = 300


def steps(config) -> int:
    return config.warmup + config.repeats


def _read_all(path: Path, buf: bytearray) -> int:
    total = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            total += n
    return total


def _write_all(path: Path, mb: int, block: bytes) -> None:
    with open(path, "wb", buffering=0) as f:
        for _ in range(mb):
            f.write(block)


def _per_op(paths: list[str], op) -> float:
    with Timer() as t:
        for p in paths:
            op(p)
    return t.elapsed * 1e6 / len(paths)


def _missing_stat(path: str) -> None:
    try:
        os.stat(path)
    except FileNotFoundError:
        return
    raise AssertionError(f"{path} exists")


def _open_read_close(path: str) -> None:
    with open(path, "rb", buffering=0) as f:
        f.read()


def _make_gcc_tree(directory: Path) -> list[Path]:
    """A fresh C file including GCC_HEADERS fresh headers (new names: nothing cached);
    returns its files."""
    headers = tree.make_toolchain(directory / "inc", GCC_HEADERS)
    (directory / "main.c").write_bytes(tree.c_source(headers, 0, GCC_HEADERS))
    return [Path(h) for h in headers.inputs] + [directory / "main.c"]


def _gcc_ms(directory: Path) -> float:
    with Timer() as t:
        subprocess.run(["gcc", "-O1", "-c", "main.c", "-I", "inc", "-o", os.devnull],
                       cwd=directory, check=True, capture_output=True)
    return t.elapsed * 1000


class _Server:
    """One FUSE server process: its CPU from /proc and, for sandboxfs, its own counters."""

    def __init__(self, child: mounts.FuseChild, client: Client | None = None) -> None:
        self.child = child
        self.client = client
        self.control_ns = 0  # CPU spent on the per-file sandboxes' create and destroy

    def counters(self) -> dict[str, int]:
        return self.client.stats()["fuse_ops"] if self.client is not None else {}

    def phase_start(self) -> tuple[int, dict]:
        counts = self.counters()  # first: answering it is not part of the phase
        return mounts.thread_cpu_ns(self.child.pid), counts

    def phase_end(self, start: tuple[int, dict]) -> dict:
        ns = mounts.thread_cpu_ns(self.child.pid)  # first: the stats call is not part of it
        counts = self.counters()
        delta = {k: v - start[1].get(k, 0) for k, v in counts.items()}
        return {"proc_us": (ns - start[0]) / 1000, "own_us": delta.get("server_cpu_us"),
                "lookups": delta.get("lookup"), "requests": _requests(delta)}

    def settle(self, timeout: float = 2.0) -> None:
        """Wait until the server is idle (a destroyed sandbox is freed after the answer)."""
        deadline = time.monotonic() + timeout
        last = mounts.thread_cpu_ns(self.child.pid)
        while time.monotonic() < deadline:
            time.sleep(SETTLE_SECONDS)
            now = mounts.thread_cpu_ns(self.child.pid)
            if now - last < SETTLE_SECONDS * 1e9 * 0.02:
                return
            last = now

    def control(self, call, *args):
        """``call(*args)`` on the control socket, then settle; its CPU goes to control_ns."""
        before = mounts.thread_cpu_ns(self.child.pid)
        result = call(*args)
        self.settle()
        self.control_ns += mounts.thread_cpu_ns(self.child.pid) - before
        return result


def _requests(counts: dict[str, int]) -> int:
    """FUSE requests in a fuse_ops dict (without the transport's other counters)."""
    return sum(v for k, v in counts.items()
               if k not in ("server_cpu_us", "spin_hits", "spin_misses"))


def _make_inputs(big: Path, small: Path, config, block: bytes) -> None:
    """A round's fresh big file and directory of small files."""
    _write_all(big, config.io_file_mb, block)
    small.mkdir()
    for i in range(config.io_small_files):
        (small / f"f{i}").write_bytes(block[: 100 + i % 4000])


def run(env, config, progress: Progress) -> dict:
    data = env.workdir / "io-data"
    data.mkdir()
    big_dir = data / "listing"
    big_dir.mkdir()
    entries = [big_dir / f"entry{i:05d}" for i in range(config.io_dir_entries)]
    for entry in entries:
        entry.write_bytes(b"")
    written = data / "w"
    written.mkdir()
    sandbox = env.strategy("sandboxfs").client(99)
    sandbox.create_sandbox("io", [("/data", str(data), False), ("/w", str(written), True)])
    bind = env.start(mounts.bindfs(env.workdir, data))
    other = env.start(mounts.sandboxfs(env.workdir, [f"ro:/data:{data}", f"rw:/w:{written}"],
                                       name="sandboxfs-pyfuse3", transport="pyfuse3"))
    no_open = env.start(mounts.sandboxfs(env.workdir, [f"ro:/data:{data}", f"rw:/w:{written}"],
                                         name="sandboxfs-no-open", extra=("--no-open",)))
    children = {"sandboxfs": env.mount, "sandboxfs_no_open": no_open, "sandboxfs_pyfuse3": other}
    servers = {name: _Server(child, Client(child.socket)) for name, child in children.items()}
    servers["bindfs"] = _Server(bind)
    dir_roots = {"native": data, "sandboxfs": env.mount.mount_point / "io" / "data",
                 "sandboxfs_no_open": no_open.mount_point / "data",
                 "sandboxfs_pyfuse3": other.mount_point / "data", "bindfs": bind.mount_point}
    dir_write_roots = {"native": written, "sandboxfs": env.mount.mount_point / "io" / "w",
                       "sandboxfs_no_open": no_open.mount_point / "w",
                       "sandboxfs_pyfuse3": other.mount_point / "w",
                       "bindfs": bind.mount_point / "w"}
    before = {name: _server_load(servers[name]) for name in SANDBOXFS_MOUNTS}
    block = os.urandom(CHUNK)
    buf = bytearray(CHUNK)
    samples: dict[str, dict[str, list[float]]] = {m: {l: [] for l in LAYERS} for m in METRICS}
    stat_cpu = {l: {"proc_us": [], "own_us": [], "lookups": [], "requests": []}
                for l in LAYERS if SERVED_BY[l]}
    mapping_counts: dict[str, list[int]] = {l: [] for l in PER_FILE}
    live: list[tuple[_Server, str]] = []  # per-file sandboxes to destroy
    try:
        for r, warm, order in rounds(LAYERS, config.warmup, config.repeats):
            big, small = data / f"big{r}", data / f"small{r}"
            # The per-file layers read twins of these at the same sandbox paths: a sandboxfs
            # mount may answer one kernel inode per host file across its sandboxes, and the
            # directory layer's reads would then warm the per-file layer's.
            twin_big, twin_small = data / f"big{r}.f", data / f"small{r}.f"
            _make_inputs(big, small, config, block)
            _make_inputs(twin_big, twin_small, config, block)
            gcc_files = {layer: _make_gcc_tree(data / f"gcc{r}-{layer}") for layer in LAYERS}
            roots, write_roots = dict(dir_roots), dict(dir_write_roots)
            for layer in PER_FILE:
                server, name = servers[SERVED_BY[layer]], f"io-files{r}"
                files = [(big, twin_big)] + [(small / f"f{i}", twin_small / f"f{i}")
                                             for i in range(config.io_small_files)]
                files += [(f, f) for f in gcc_files[layer] + entries]
                mappings = [(f"/data/{inside.relative_to(data)}", str(host), False)
                            for inside, host in files] + [("/w", str(written), True)]
                server.control(server.client.create_sandbox, name, mappings)
                live.append((server, name))
                [listed] = [s for s in server.client.list() if s["name"] == name]
                assert listed["mappings"] == len(mappings), (layer, listed, len(mappings))
                mapping_counts[layer].append(listed["mappings"])
                mount_point = children[SERVED_BY[layer]].mount_point
                roots[layer] = mount_point / name / "data"
                write_roots[layer] = mount_point / name / "w"
            got: dict[str, dict[str, float]] = {m: {} for m in METRICS}
            cpu: dict[str, dict] = {}
            for layer in order:
                root = roots[layer]
                server = servers.get(SERVED_BY[layer])
                got["gcc_first"][layer] = _gcc_ms(root / f"gcc{r}-{layer}")
                got["gcc_repeat"][layer] = _gcc_ms(root / f"gcc{r}-{layer}")
                mb = config.io_file_mb
                with Timer() as t:
                    _read_all(root / big.name, buf)
                got["seq_read_first"][layer] = mb / t.elapsed
                with Timer() as t:
                    _read_all(root / big.name, buf)
                got["seq_read_repeat"][layer] = mb / t.elapsed
                names = [str(root / small.name / f"f{i}") for i in range(config.io_small_files)]
                missing = [str(root / small.name / f"no{i}") for i in range(config.io_small_files)]
                start = server.phase_start() if server else None
                got["stat_first"][layer] = _per_op(names, os.stat)
                if server:
                    cpu[layer] = server.phase_end(start)
                got["stat_repeat"][layer] = _per_op(names, os.stat)
                got["stat_missing_first"][layer] = _per_op(missing, _missing_stat)
                got["stat_missing_repeat"][layer] = _per_op(missing, _missing_stat)
                got["small_read_first"][layer] = _per_op(names, _open_read_close)
                got["small_read_repeat"][layer] = _per_op(names, _open_read_close)
                with Timer() as t:
                    listing = os.listdir(root / "listing")
                assert len(listing) == config.io_dir_entries, (layer, len(listing))
                got["readdir_10k"][layer] = t.elapsed * 1000
                target = write_roots[layer] / f"written{r}-{layer}"
                with Timer() as t:
                    _write_all(target, mb, block)
                got["seq_write"][layer] = mb / t.elapsed
                os.unlink(written / target.name)
            while live:
                server, name = live.pop()
                server.control(server.client.destroy_sandbox, name)
            os.unlink(big)
            os.unlink(twin_big)
            if not warm:
                for metric, by_layer in got.items():
                    for layer, value in by_layer.items():
                        samples[metric][layer].append(value)
                for layer, phase in cpu.items():
                    if layer == "bindfs":  # no counters: the stats and their directory
                        phase.update(lookups=config.io_small_files + 1,
                                     requests=config.io_small_files + 1)
                    for key, value in phase.items():
                        stat_cpu[layer][key].append(value)
            progress.step(f"round {r + 1}{' (warm-up)' if warm else ''}: re-read MB/s " + ", ".join(
                f"{l} {got['seq_read_repeat'][l]:.0f}" for l in LAYERS) + "; first stat µs " +
                ", ".join(f"{l} {got['stat_first'][l]:.1f}" for l in LAYERS))
        cpu_per_request = {}
        for name in SANDBOXFS_MOUNTS:
            cpu_s, requests = _server_load(servers[name])
            cpu_s -= servers[name].control_ns / 1e9
            cpu_per_request[name] = (cpu_s - before[name][0]) * 1e6 / max(
                1, requests - before[name][1])
    finally:
        for server, name in live:  # a round cut short; a dead server is stopped below
            with contextlib.suppress(OSError):
                server.client.destroy_sandbox(name)
        sandbox.destroy_sandbox("io")
        for server in servers.values():
            if server.client is not None:
                server.client.close()
        other.stop()
        no_open.stop()
        bind.stop()
    rows = []
    for metric, (unit, better) in METRICS.items():
        row = {"metric": metric, "unit": unit, "better": better,
               "layers": {l: summary(samples[metric][l]) for l in LAYERS}}
        # sandboxfs / bindfs per round, oriented so that > 1 means sandboxfs is better
        b, n = samples[metric]["bindfs"], samples[metric]["native"]
        for layer in ("sandboxfs", "sandboxfs_files"):
            s = samples[metric][layer]
            row[f"{layer}_vs_bindfs"] = paired_ratio(s, b) if better == "higher" else paired_ratio(b, s)
            row[f"{layer}_vs_native"] = paired_ratio(s, n) if better == "higher" else paired_ratio(n, s)
        rows.append(row)
    return {"layers": list(LAYERS), "per_file_layers": list(PER_FILE),
            "served_by": {l: s for l, s in SERVED_BY.items() if s},
            "samples": samples, "rows": rows,
            "bindfs_options": mounts.BINDFS_OPTIONS + " --multithreaded",
            "per_file_mappings": mapping_counts,
            "stat_first_server_cpu": {l: _stat_cpu_summary(v) for l, v in stat_cpu.items()},
            "server_cpu_us_per_request": cpu_per_request,
            "server_cpu_control_ms": {name: servers[name].control_ns / 1e6
                                      for name in SANDBOXFS_MOUNTS}}


def _stat_cpu_summary(phases: dict[str, list]) -> dict:
    """One layer's stat-first phases: totals, per-LOOKUP figures overall and per round."""
    lookups = sum(phases["lookups"])
    own = None if None in phases["own_us"] else sum(phases["own_us"])
    return {
        "lookups": lookups, "requests": sum(phases["requests"]),
        "proc_us_per_lookup": sum(phases["proc_us"]) / lookups if lookups else None,
        "own_us_per_lookup": own / lookups if own is not None and lookups else None,
        "proc_us_per_lookup_rounds": summary([c / n for c, n in zip(phases["proc_us"],
                                                                     phases["lookups"]) if n]),
        "own_us_per_lookup_rounds": summary([] if own is None else [
            c / n for c, n in zip(phases["own_us"], phases["lookups"]) if n]),
        "per_round": phases,
    }


def _server_load(server: _Server) -> tuple[float, int]:
    """(CPU seconds, FUSE requests answered) of one sandboxfs server so far."""
    return mounts.cpu_seconds(server.child.pid), _requests(server.counters())
