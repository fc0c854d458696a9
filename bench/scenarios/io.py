"""Scenario 3: raw I/O through the layers: native directory, sandboxfs (both transports, and
``--no-open``), bindfs.

All show the same host directory: sandboxfs as a read-only mapping (and a
read-write one for writes) in one sandbox of the shared mount, which runs our
kernel transport (--ttl 60), as the same mappings of a second mount on the
pyfuse3 transport and of a third on the kernel transport with ``--no-open``;
bindfs with its caches on (see mounts.BINDFS_OPTIONS).
Server CPU per FUSE request is each sandboxfs server's CPU time (from /proc)
over the requests it counted, across the scenario.  Each round creates fresh files on the host, so "first"
means never looked at through that layer (the host page cache is warm: we
measure the layer, not the disk); "repeat" is the same operation right after.
Layers run in rotated order; the first round is a warm-up and is dropped.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from bench import mounts, tree
from sandboxfs.client import Client
from bench.measure import Progress, Timer, paired_ratio, rounds, summary

LAYERS = ("native", "sandboxfs", "sandboxfs_no_open", "sandboxfs_pyfuse3", "bindfs")
CHUNK = 1 << 20

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


def _make_gcc_tree(directory: Path) -> None:
    """A fresh C file including GCC_HEADERS fresh headers (new names: nothing cached)."""
    headers = tree.make_toolchain(directory / "inc", GCC_HEADERS)
    (directory / "main.c").write_bytes(tree.c_source(headers, 0, GCC_HEADERS))


def _gcc_ms(directory: Path) -> float:
    with Timer() as t:
        subprocess.run(["gcc", "-O1", "-c", "main.c", "-I", "inc", "-o", os.devnull],
                       cwd=directory, check=True, capture_output=True)
    return t.elapsed * 1000


def run(env, config, progress: Progress) -> dict:
    data = env.workdir / "io-data"
    data.mkdir()
    big_dir = data / "listing"
    big_dir.mkdir()
    for i in range(config.io_dir_entries):
        (big_dir / f"entry{i:05d}").write_bytes(b"")
    written = data / "w"
    written.mkdir()
    sandbox = env.strategy("sandboxfs").client(99)
    sandbox.create_sandbox("io", [("/data", str(data), False), ("/w", str(written), True)])
    bind = env.start(mounts.bindfs(env.workdir, data))
    other = env.start(mounts.sandboxfs(env.workdir, [f"ro:/data:{data}", f"rw:/w:{written}"],
                                       name="sandboxfs-pyfuse3", transport="pyfuse3"))
    no_open = env.start(mounts.sandboxfs(env.workdir, [f"ro:/data:{data}", f"rw:/w:{written}"],
                                         name="sandboxfs-no-open", extra=("--no-open",)))
    roots = {"native": data, "sandboxfs": env.mount.mount_point / "io" / "data",
             "sandboxfs_no_open": no_open.mount_point / "data",
             "sandboxfs_pyfuse3": other.mount_point / "data", "bindfs": bind.mount_point}
    write_roots = {"native": written, "sandboxfs": env.mount.mount_point / "io" / "w",
                   "sandboxfs_no_open": no_open.mount_point / "w",
                   "sandboxfs_pyfuse3": other.mount_point / "w", "bindfs": bind.mount_point / "w"}
    servers = {"sandboxfs": (env.mount, Client(env.mount.socket)),
               "sandboxfs_no_open": (no_open, Client(no_open.socket)),
               "sandboxfs_pyfuse3": (other, Client(other.socket))}
    before = {name: _server_load(child, client) for name, (child, client) in servers.items()}
    block = os.urandom(CHUNK)
    buf = bytearray(CHUNK)
    samples: dict[str, dict[str, list[float]]] = {m: {l: [] for l in LAYERS} for m in METRICS}
    try:
        for r, warm, order in rounds(LAYERS, config.warmup, config.repeats):
            big = data / f"big{r}"
            _write_all(big, config.io_file_mb, block)
            small = data / f"small{r}"
            small.mkdir()
            for i in range(config.io_small_files):
                (small / f"f{i}").write_bytes(block[: 100 + i % 4000])
            got: dict[str, dict[str, float]] = {m: {} for m in METRICS}
            for layer in order:
                root = roots[layer]
                _make_gcc_tree(data / f"gcc{r}-{layer}")  # made just before: host cache warm
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
                got["stat_first"][layer] = _per_op(names, os.stat)
                got["stat_repeat"][layer] = _per_op(names, os.stat)
                got["stat_missing_first"][layer] = _per_op(missing, _missing_stat)
                got["stat_missing_repeat"][layer] = _per_op(missing, _missing_stat)
                got["small_read_first"][layer] = _per_op(names, _open_read_close)
                got["small_read_repeat"][layer] = _per_op(names, _open_read_close)
                with Timer() as t:
                    entries = os.listdir(root / "listing")
                assert len(entries) == config.io_dir_entries, (layer, len(entries))
                got["readdir_10k"][layer] = t.elapsed * 1000
                target = write_roots[layer] / f"written{r}-{layer}"
                with Timer() as t:
                    _write_all(target, mb, block)
                got["seq_write"][layer] = mb / t.elapsed
                os.unlink(written / target.name)
            os.unlink(big)
            if not warm:
                for metric, by_layer in got.items():
                    for layer, value in by_layer.items():
                        samples[metric][layer].append(value)
            progress.step(f"round {r + 1}{' (warm-up)' if warm else ''}: re-read MB/s " + ", ".join(
                f"{l} {got['seq_read_repeat'][l]:.0f}" for l in LAYERS) + "; repeated stat µs " +
                ", ".join(f"{l} {got['stat_repeat'][l]:.1f}" for l in LAYERS))
        cpu_per_request = {}
        for name, (child, client) in servers.items():
            cpu, requests = _server_load(child, client)
            cpu_per_request[name] = (cpu - before[name][0]) * 1e6 / max(1, requests - before[name][1])
    finally:
        sandbox.destroy_sandbox("io")
        for _child, client in servers.values():
            client.close()
        other.stop()
        no_open.stop()
        bind.stop()
    rows = []
    for metric, (unit, better) in METRICS.items():
        row = {"metric": metric, "unit": unit, "better": better,
               "layers": {l: summary(samples[metric][l]) for l in LAYERS}}
        # sandboxfs / bindfs per round, oriented so that > 1 means sandboxfs is better
        s, b = samples[metric]["sandboxfs"], samples[metric]["bindfs"]
        row["sandboxfs_vs_bindfs"] = paired_ratio(s, b) if better == "higher" else paired_ratio(b, s)
        n = samples[metric]["native"]
        row["sandboxfs_vs_native"] = paired_ratio(s, n) if better == "higher" else paired_ratio(n, s)
        rows.append(row)
    return {"layers": list(LAYERS), "samples": samples, "rows": rows,
            "bindfs_options": mounts.BINDFS_OPTIONS + " --multithreaded",
            "server_cpu_us_per_request": cpu_per_request}


def _server_load(child, client: Client) -> tuple[float, int]:
    """(CPU seconds, FUSE requests answered) of one sandboxfs server so far."""
    counts = client.stats()["fuse_ops"]
    requests = sum(v for k, v in counts.items() if k != "server_cpu_us")
    return mounts.cpu_seconds(child.pid), requests
