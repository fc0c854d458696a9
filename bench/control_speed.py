"""Control-socket speed: create/destroy round trips, memory per live mapping, and a symlink forest.

Run: ``.venv/bin/python bench/control_speed.py [--quick] [--json FILE]``  (or ``make bench-control``).

What it measures, side by side in one run (interleaved, medians):
* create_sandbox round trip through the real socket, for N mappings drawn
  from a synthetic toolchain tree (20 files per directory);
* destroy_sandbox round trip for the same sandbox;
* the same inputs as a symlink forest built in Python the way Bazel's
  processwrapper-sandbox does it (mkdir per directory + symlink per file,
  then delete it all), and the ratio forest / sandboxfs;
* RSS of the server per live mapping, with many sandboxes alive at once.

It mounts a real sandboxfs in a child process and always unmounts it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from sandboxfs.client import Client

FILES_PER_DIR = 20


def make_toolchain(root: Path, count: int) -> list[str]:
    """A tree of ``count`` small files, 20 per directory, 3 levels deep; returns their paths."""
    paths = []
    for index in range(count):
        d = index // FILES_PER_DIR
        directory = root / f"lib{d // 400}" / f"pkg{(d // 20) % 20}" / f"mod{d % 20}"
        if index % FILES_PER_DIR == 0:
            directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"header{index % FILES_PER_DIR}.h"
        path.write_bytes(b"")
        paths.append(str(path))
    return paths


def symlink_forest(sandbox: Path, root: Path, inputs: list[str]) -> None:
    """Build then delete a symlink forest the way processwrapper-sandbox does."""
    made = set()
    for host in inputs:
        target = sandbox / "external" / os.path.relpath(host, root)
        parent = target.parent
        if parent not in made:
            os.makedirs(parent, exist_ok=True)
            made.add(parent)
        os.symlink(host, target)
    shutil.rmtree(sandbox)


class Server:
    """A sandboxfs mount in a child process, stopped by PID whatever happens."""

    def __init__(self, workdir: Path) -> None:
        self.mount_point = workdir / "mnt"
        self.mount_point.mkdir()
        self.socket = str(self.mount_point) + ".sock"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sandboxfs", "mount", "--log-level", "warning",
             "--ttl", "0", "--control", self.socket, str(self.mount_point)],
        )
        deadline = time.monotonic() + 15
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("sandboxfs did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                subprocess.run(["fusermount3", "-u", "-z", str(self.mount_point)])
                self.proc.kill()
                self.proc.wait()


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def bench_sizes(client: Client, workdir: Path, root: Path, inputs: list[str], sizes, repeats) -> list[dict]:
    rows = []
    for n in sizes:
        subset = inputs[:n]
        mappings = [("/external/" + os.path.relpath(p, root), p) for p in subset]
        create, destroy, forest = [], [], []
        for rep in range(repeats + 1):  # the first round warms caches and is dropped
            t0 = time.perf_counter()
            client.create_sandbox(f"b{rep}", mappings)
            t1 = time.perf_counter()
            client.destroy_sandbox(f"b{rep}")
            t2 = time.perf_counter()
            symlink_forest(workdir / f"forest{rep}", root, subset)
            t3 = time.perf_counter()
            if rep:
                create.append(t1 - t0)
                destroy.append(t2 - t1)
                forest.append(t3 - t2)
        sbx = median_ms(create) + median_ms(destroy)
        row = {
            "mappings": n,
            "create_ms": round(median_ms(create), 2),
            "create_ms_min_max": [round(min(create) * 1000, 2), round(max(create) * 1000, 2)],
            "destroy_ms": round(median_ms(destroy), 3),
            "sandboxfs_total_ms": round(sbx, 2),
            "symlink_forest_ms": round(median_ms(forest), 2),
            "speedup_vs_forest": round(median_ms(forest) / sbx, 1),
            "us_per_mapping": round(sbx * 1000 / n, 2),
        }
        rows.append(row)
        print(f"N={n:>7}: create {row['create_ms']:8.2f} ms  destroy {row['destroy_ms']:6.3f} ms  "
              f"forest {row['symlink_forest_ms']:9.2f} ms  -> {row['speedup_vs_forest']}x faster",
              flush=True)
    return rows


def bench_stall(client: Client, server: Server, root: Path, inputs: list[str]) -> dict:
    """Worst stat latency in one sandbox while another, of len(inputs) mappings, is created."""
    client.create_sandbox("probe", [("/f", inputs[0])])
    probe = server.mount_point / "probe" / "f"
    mappings = [("/external/" + os.path.relpath(p, root), p) for p in inputs]
    latencies: list[float] = []
    done = threading.Event()

    def stat_loop() -> None:
        while not done.is_set():
            t0 = time.perf_counter()
            os.stat(probe)  # --ttl 0 below: every stat is a FUSE request
            latencies.append(time.perf_counter() - t0)

    worker = threading.Thread(target=stat_loop)
    worker.start()
    try:
        time.sleep(0.2)
        t0 = time.perf_counter()
        client.create_sandbox("big", mappings)
        took = time.perf_counter() - t0
        time.sleep(0.2)
    finally:
        done.set()
        worker.join()
    client.destroy_sandbox("big")
    client.destroy_sandbox("probe")
    result = {"mappings": len(inputs), "create_ms": round(took * 1000, 1),
              "stat_count": len(latencies),
              "stat_median_us": round(statistics.median(latencies) * 1e6, 1),
              "stat_max_ms": round(max(latencies) * 1000, 2)}
    print(f"stall: creating {len(inputs)} mappings took {result['create_ms']} ms; meanwhile "
          f"{len(latencies)} stats in another sandbox: median {result['stat_median_us']} us, "
          f"worst {result['stat_max_ms']} ms", flush=True)
    return result


def bench_memory(client: Client, root: Path, inputs: list[str], live: int) -> dict:
    """RSS growth per live mapping with ``live`` mappings in sandboxes of len(inputs) each."""
    base = client.stats()["rss_bytes"]
    mappings = [("/external/" + os.path.relpath(p, root), p) for p in inputs]
    count = max(1, live // len(mappings))
    for i in range(count):
        client.create_sandbox(f"m{i}", mappings)
    grown = client.stats()["rss_bytes"] - base
    for i in range(count):
        client.destroy_sandbox(f"m{i}")
    total = count * len(mappings)
    result = {"live_mappings": total, "rss_growth_bytes": grown,
              "bytes_per_mapping": round(grown / total, 1)}
    print(f"memory: {total} live mappings -> {result['bytes_per_mapping']} bytes of RSS each", flush=True)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument("--json", metavar="FILE", help="write every figure here")
    args = parser.parse_args(argv)
    sizes = [100, 1000] if args.quick else [100, 1000, 10_000, 100_000]
    repeats = 3 if args.quick else 7
    live = 20_000 if args.quick else 1_000_000
    workdir = Path(tempfile.mkdtemp(prefix="sbx-bench-"))
    server = None
    try:
        root = workdir / "toolchain"
        inputs = make_toolchain(root, max(sizes))
        server = Server(workdir)
        with Client(server.socket) as client:
            results = {
                "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                            "kernel": os.uname().release},
                "create_destroy": bench_sizes(client, workdir, root, inputs, sizes, repeats),
                "stall": bench_stall(client, server, root, inputs),
                "memory": bench_memory(client, root, inputs, live),
            }
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
