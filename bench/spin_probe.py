"""Polling before sleeping (``sandboxfs mount --spin-us``): the same workload on mounts that
differ only in it, side by side in one run.

    python -m bench.spin_probe [--rounds 7] [--spins 0,50] [--files 3000]

Each round mounts every setting afresh (so "first" means a cold kernel cache), in rotated
order, server pinned to the last CPU and this process to CPU 0 (bench.mounts), and
measures: stat of N files first and repeated, open+read+close of N small files repeated,
and ``gcc -c`` of a file including 300 headers, first and repeated.  It prints medians,
per-setting ratios to the first setting (paired round by round), and the server's CPU per
request.  Results are documented in docs/design.md ("Polling before sleeping").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench import mounts
from bench.measure import paired_ratio, rounds
from sandboxfs.client import Client


def _per_op_us(paths: list[str], op) -> float:
    started = time.perf_counter()
    for path in paths:
        op(path)
    return (time.perf_counter() - started) / len(paths) * 1e6


def _read(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.read(fd, 65536)
    finally:
        os.close(fd)


def _gcc_ms(directory: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["gcc", "-c", "-I", "inc", "main.c", "-o", "/dev/null"], cwd=directory,
                   check=True)
    return (time.perf_counter() - started) * 1e3


def _make_data(data: Path, files: int) -> None:
    (data / "files").mkdir(parents=True)
    for i in range(files):
        (data / "files" / f"f{i}").write_bytes(b"x" * (100 + i % 900))
    (data / "gcc" / "inc").mkdir(parents=True)
    for i in range(300):
        (data / "gcc" / "inc" / f"h{i}.h").write_text(f"#define H{i} {i}\nint f{i}(int);\n")
    (data / "gcc" / "main.c").write_text(
        "".join(f'#include "h{i}.h"\n' for i in range(300)) + "int main(void){return H9;}\n")


def _measure(root: Path, names: list[str]) -> dict[str, float]:
    paths = [str(root / "files" / name) for name in names]
    got = {"stat_first": _per_op_us(paths, os.stat), "stat_repeat": _per_op_us(paths, os.stat)}
    _per_op_us(paths, _read)  # first opens: the pages come in
    got["read_repeat"] = _per_op_us(paths, _read)
    got["gcc_first"] = _gcc_ms(root / "gcc")
    got["gcc_repeat"] = _gcc_ms(root / "gcc")
    return got


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--spins", default="0,50", help="comma-separated --spin-us values")
    parser.add_argument("--files", type=int, default=3000)
    args = parser.parse_args(argv)
    spins = [float(s) for s in args.spins.split(",")]
    mounts.pin_client()
    work = Path(tempfile.mkdtemp(prefix="spin-probe-"))
    samples: dict[float, dict[str, list[float]]] = {s: {} for s in spins}
    cpu: dict[float, list[float]] = {s: [] for s in spins}
    try:
        data = work / "data"
        _make_data(data, args.files)
        names = sorted(os.listdir(data / "files"))
        for r, warm, order in rounds(spins, 1, args.rounds):
            for spin in order:
                child = mounts.sandboxfs(work, [f"ro:/d:{data}"], name=f"m{r}-{spin:g}",
                                         extra=["--spin-us", f"{spin:g}"]).start()
                try:
                    before = mounts.cpu_seconds(child.proc.pid)
                    got = _measure(child.mount_point / "d", names)
                    used = mounts.cpu_seconds(child.proc.pid) - before
                    ops = Client(child.socket).stats()["fuse_ops"]
                    requests = sum(v for k, v in ops.items()
                                   if not k.startswith(("server_", "spin_")))
                finally:
                    child.stop()
                if warm:
                    continue
                for key, value in got.items():
                    samples[spin].setdefault(key, []).append(value)
                cpu[spin].append(used / max(requests, 1) * 1e6)
        base = spins[0]
        report = {}
        for spin in spins:
            row = {key: statistics.median(values) for key, values in samples[spin].items()}
            row["server_cpu_us_per_request"] = statistics.median(cpu[spin])
            row["ratio_to_first"] = {key: paired_ratio(values, samples[base][key])["median"]
                                     for key, values in samples[spin].items()}
            report[f"spin {spin:g} us"] = row
        print(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
