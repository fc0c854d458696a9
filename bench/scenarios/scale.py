"""Scenario 4: scale of the sandboxfs server.

* RSS per live mapping with 10k / 100k / 1M mappings alive (sandboxes of up to
  10,000 toolchain inputs each), read from the server's ``stats``;
* create+destroy cycles per second for sandboxes of ``scale_cycle_inputs`` inputs,
  idle and while two gcc processes compile in a loop (latency under load);
* stall: the worst latency of a directory listing in one sandbox (readdir is
  never cached by the kernel, so each one is a FUSE request), from another
  process, while another sandbox of the largest size is created.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

from bench import tree
from bench.measure import Progress, Timer, summary

SANDBOX_INPUTS = 10_000


def steps(config) -> int:
    return len(config.scale_live) + 3


def _mappings(env, n: int) -> list[tuple[str, str]]:
    root = str(env.toolchain.root)
    return [(f"/tc/{rel}", f"{root}/{rel}") for rel in env.toolchain.relative(n)]


def _memory(env, client, live: int) -> dict:
    per_sandbox = min(SANDBOX_INPUTS, len(env.toolchain.inputs))
    mappings = _mappings(env, per_sandbox)
    count = max(1, live // per_sandbox)
    before = client.stats()["rss_bytes"]
    with Timer() as t:
        for i in range(count):
            client.create_sandbox(f"mem{i}", mappings)
    grown = client.stats()["rss_bytes"] - before
    for i in range(count):
        client.destroy_sandbox(f"mem{i}")
    total = count * per_sandbox
    return {"live_mappings": total, "sandboxes": count, "rss_growth_bytes": grown,
            "bytes_per_mapping": grown / total, "create_all_seconds": t.elapsed}


def _cycles(client, mappings, cycles: int) -> list[float]:
    latencies = []
    for i in range(cycles):
        with Timer() as t:
            client.create_sandbox(f"cycle{i}", mappings)
            client.destroy_sandbox(f"cycle{i}")
        latencies.append(t.elapsed)
    return latencies


# Lists a directory until a file appears, then prints the latencies (s) as JSON.  A child
# process: in a thread of ours it would also wait for our own client's work (it holds the
# GIL while it encodes the big request) and measure that instead of the server.
LISTING_LOOP = """
import json, os, sys, time
probe, stop = sys.argv[1], sys.argv[2]
latencies = []
while not os.path.exists(stop):
    start = time.perf_counter()
    os.listdir(probe)
    latencies.append(time.perf_counter() - start)
print(json.dumps(latencies))
"""


def _stall(env, client) -> dict:
    """Listing latency in a small sandbox, from another process, while a big one is created."""
    client.create_sandbox("probe", [("/f", env.toolchain.inputs[0])])
    probe = env.mount.mount_point / "probe"
    stop = env.workdir / "stall.stop"
    mappings = _mappings(env, len(env.toolchain.inputs))
    lister = subprocess.Popen([sys.executable, "-c", LISTING_LOOP, str(probe), str(stop)],
                              stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)  # started and listing
        with Timer() as created:
            client.create_sandbox("big", mappings)
        time.sleep(0.2)
    finally:
        stop.touch()
        out, _ = lister.communicate(timeout=60)
        stop.unlink()
    latencies = json.loads(out)
    client.destroy_sandbox("big")
    client.destroy_sandbox("probe")
    return {"mappings": len(mappings), "create_seconds": created.elapsed,
            "listings": summary(latencies)}


def _compile_loop(source: str, stop: threading.Event, cwd: str) -> None:
    while not stop.is_set():
        subprocess.run(["gcc", "-O2", "-c", source, "-I", ".", "-o", os.devnull], cwd=cwd,
                       check=True, capture_output=True)


def run(env, config, progress: Progress) -> dict:
    client = env.strategy("sandboxfs").client(98)
    memory = []
    for live in config.scale_live:
        memory.append(_memory(env, client, live))
        m = memory[-1]
        progress.step(f"{m['live_mappings']} live mappings: {m['bytes_per_mapping']:.0f} B of RSS "
                      f"each (created in {m['create_all_seconds']:.1f}s)")
    mappings = _mappings(env, config.scale_cycle_inputs)
    _cycles(client, mappings, 3)  # warm-up
    idle = _cycles(client, mappings, config.scale_cycles)
    progress.step(f"idle: {len(idle) / sum(idle):.0f} create+destroy cycles/s of "
                  f"{len(mappings)} inputs")
    source = env.workdir / "scale-load.c"
    source.write_bytes(tree.c_source(env.toolchain, 0, min(300, len(env.toolchain.inputs))))
    stop = threading.Event()
    workers = [threading.Thread(target=_compile_loop,
                                args=(source.name, stop, str(env.toolchain.root)))
               for _ in range(2)]
    # the C file includes paths relative to the toolchain root: compile from there
    os.replace(source, env.toolchain.root / source.name)
    for w in workers:
        w.start()
    try:
        loaded = _cycles(client, mappings, config.scale_cycles)
    finally:
        stop.set()
        for w in workers:
            w.join()
        os.unlink(env.toolchain.root / source.name)
    progress.step(f"under 2 gcc: {len(loaded) / sum(loaded):.0f} cycles/s")
    stall = _stall(env, client)
    progress.step(f"stall: creating {stall['mappings']} mappings took "
                  f"{stall['create_seconds'] * 1000:.0f} ms; worst listing meanwhile "
                  f"{stall['listings']['max'] * 1000:.1f} ms")
    return {"memory": memory, "stall": stall, "cycle_inputs": len(mappings),
            "cycles": {"idle": {"seconds": summary(idle), "per_second": len(idle) / sum(idle),
                                "samples": idle},
                       "loaded": {"seconds": summary(loaded), "per_second": len(loaded) / sum(loaded),
                                  "samples": loaded}}}
