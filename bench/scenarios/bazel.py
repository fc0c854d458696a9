"""Scenario 5: a real Bazel 2.1 build, clean, in four ways: no sandbox, Bazel's two sandboxes,
and linux-sandbox with our sandboxfs.

Why: the other scenarios time sandboxes the harness builds itself; this one is
what a user of ``--experimental_use_sandboxfs`` waits for.  The workspace is
generated: C compiles (each declares every header of a shared header package
and includes a fixed share of them) and small shell actions, sized per mode.

Each round builds the workspace once per strategy, in rotated order, each time
after ``bazel clean`` on the same warm server (the clean is not timed; the
build is the wall time of ``bazel build --jobs=2``).  Bazel's own sandboxes
and sandboxfs get ``--sandbox_base`` outside the output base (linux-sandbox
with sandboxfs fails with EINVAL otherwise) on the work tree's filesystem.
Every build is checked: the outputs' digests must equal the first build's,
Bazel must report every process under the strategy asked for, and a sandboxfs
build must have sent one CreateSandbox per action to our server.

Where the time goes, per build: Bazel's JSON profile (``--profile``, on for
every strategy) sums its spans (``sandbox.createFileSystem``,
``subprocess.run``, ``sandbox.copyOutputs``, ``sandbox.delete``,
``mountSandboxfs``); the sandboxfs server's JSON stream is logged with times
(``bench.bazel_tool.relay``), which gives how long it took per request; CPU
time of the Bazel server and of the sandboxfs server comes from /proc.

CPUs (``taskset``): the harness pins itself to CPU 0, and Bazel (client, server
and actions) gets every CPU back, since two jobs need both vCPUs.  The sandboxfs
server is pinned to ``SERVER_CPU`` (the last one), as the harness pins its other
servers; the actions then move to the other CPU while it is busy (a probe of 2
rounds: 13.7 s pinned against 14.7 s on both CPUs).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pstats
import re
import threading
import time
from pathlib import Path
from typing import Self

from bench import bazel_tool
from bench.measure import Progress, Timer, paired_ratio, rounds, summary
from bench.mounts import SERVER_CPU, cpu_seconds
from sandboxfs.mount import default_transport

STRATEGIES = ("local", "processwrapper", "linux_sandbox", "sandboxfs")
SPAWN = {"local": "local", "processwrapper": "processwrapper-sandbox",
         "linux_sandbox": "linux-sandbox", "sandboxfs": "linux-sandbox"}
JOBS = 2
PHASES = ("mountSandboxfs", "sandbox.createFileSystem", "subprocess.run", "sandbox.copyOutputs",
          "sandbox.delete")
CPUS = sorted(range(os.cpu_count() or 1))


def steps(config) -> int:
    warmup, repeats = config.bazel_rounds
    return 2 + (warmup + repeats) * len(STRATEGIES)


def write_workspace(root: Path, compiles: int, headers: int, includes: int,
                    shell: int) -> list[str]:
    """The generated workspace; returns its outputs (paths below bazel-bin)."""
    (root / "hdr").mkdir(parents=True)
    (root / "cc").mkdir()
    (root / "sh").mkdir()
    (root / "WORKSPACE").write_text("")
    (root / "hdr" / "BUILD").write_text(
        'filegroup(name = "headers", srcs = glob(["*.h"]), visibility = ["//visibility:public"])\n')
    for k in range(headers):
        (root / "hdr" / f"h{k:03d}.h").write_text(
            f"#ifndef H{k}_H\n#define H{k}_H\n"
            f"struct h{k}_s {{ int a[{k % 5 + 1}]; const char *name; double w; }};\n"
            f"static inline int h{k}_f(int x) {{ return x * {k + 1} + {k % 7}; }}\n"
            f"static inline int h{k}_g(const struct h{k}_s *s) {{ return s->a[0] + (int)s->w; }}\n"
            f"enum h{k}_e {{ H{k}_A = {k}, H{k}_B, H{k}_C }};\n"
            f"#define H{k}_MAX(a, b) ((a) > (b) ? (a) : (b))\n#endif\n")
    rules, outputs = [], []
    for i in range(compiles):
        chosen = sorted({(i * 7 + 3 * j) % headers for j in range(includes)})
        body = " + ".join(f"h{k}_f(x)" for k in chosen[:8])
        (root / "cc" / f"c{i}.c").write_text(
            "".join(f'#include "h{k:03d}.h"\n' for k in chosen)
            + f"int c{i}(int x) {{ return {body}; }}\n")
        rules.append(f'genrule(name = "c{i}", srcs = ["c{i}.c", "//hdr:headers"], outs = ["c{i}.o"],\n'
                     f'        cmd = "gcc -O1 -c -Ihdr -o $@ $(location c{i}.c)")\n')
        outputs.append(f"cc/c{i}.o")
    (root / "cc" / "BUILD").write_text("".join(rules))
    rules = []
    for i in range(shell):
        (root / "sh" / f"s{i}.txt").write_text("".join(f"word{(i * 31 + j * 17) % 23}\n"
                                                       for j in range(40)))
        rules.append(f'genrule(name = "s{i}", srcs = ["s{i}.txt"], outs = ["s{i}.out"],\n'
                     f'        cmd = "sort $< | uniq -c | tr a-z A-Z > $@ && wc -l < $< >> $@")\n')
        outputs.append(f"sh/s{i}.out")
    (root / "sh" / "BUILD").write_text("".join(rules))
    return outputs


class ServerCpu:
    """CPU seconds of each sandboxfs server the wrapper starts, polled from /proc while it runs
    (a server ends with its Bazel command; up to one poll interval at its end is missed)."""

    def __init__(self, stream_dir: Path, interval: float = 0.05) -> None:
        self.stream_dir, self.interval = stream_dir, interval
        self.seconds: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        servers = self.stream_dir / "servers"
        while not self._stop.is_set():
            pids = [int(p) for p in servers.read_text().split()] if servers.exists() else []
            for pid in pids:
                with contextlib.suppress(OSError, ValueError, IndexError):
                    self.seconds[pid] = cpu_seconds(pid)
            self._stop.wait(self.interval)


def _phases(profile: Path) -> dict[str, dict[str, float]]:
    """Bazel's JSON trace profile: total seconds and count of each span of PHASES."""
    events = json.loads(profile.read_text())
    events = events["traceEvents"] if isinstance(events, dict) else events
    out = {p: {"seconds": 0.0, "count": 0} for p in PHASES}
    for e in events:
        if e.get("name") in out and e.get("dur") is not None:
            out[e["name"]]["seconds"] += e["dur"] / 1e6
            out[e["name"]]["count"] += 1
    return out


def _digests(bin_dir: Path, outputs: list[str]) -> dict[str, str]:
    return {o: hashlib.sha256((bin_dir / o).read_bytes()).hexdigest() for o in outputs}


class Bench:
    """One workspace, one warm Bazel server, the four strategies' flags."""

    def __init__(self, env, config, binary: Path) -> None:
        self.base = env.workdir / "bazel"
        ws = self.base / "ws"
        self.outputs = write_workspace(ws, config.bazel_compiles, config.bazel_headers,
                                       config.bazel_includes, config.bazel_shell)
        self.streams = self.base / "streams"
        self.profiles = self.base / "profiles"
        self.profiles.mkdir(parents=True)
        sandbox_base = self.base / "sandbox-base"
        sandbox_base.mkdir()
        self.transport = default_transport()
        wrapper = bazel_tool.write_sandboxfs_wrapper(self.base / "sandboxfs-wrapper", self.streams,
                                                     self.transport, cpus=[SERVER_CPU])
        profiled = bazel_tool.write_sandboxfs_wrapper(self.base / "sandboxfs-profiled", self.streams,
                                                      self.transport, cpus=[SERVER_CPU],
                                                      cpu_profile=True)
        self.bazel = bazel_tool.Bazel(binary, ws, self.base / "root", cpus=CPUS)
        sandboxed = [f"--sandbox_base={sandbox_base}"]
        self.flags = {
            "local": ["--spawn_strategy=local"],
            "processwrapper": ["--spawn_strategy=processwrapper-sandbox", *sandboxed],
            "linux_sandbox": ["--spawn_strategy=linux-sandbox", *sandboxed],
            "sandboxfs": ["--spawn_strategy=linux-sandbox", *sandboxed,
                          "--experimental_use_sandboxfs", f"--experimental_sandboxfs_path={wrapper}"],
            "sandboxfs_profiled": ["--spawn_strategy=linux-sandbox", *sandboxed,
                                   "--experimental_use_sandboxfs",
                                   f"--experimental_sandboxfs_path={profiled}"],
        }
        self.bin_dir: Path | None = None

    def build(self, strategy: str, tag: str) -> dict:
        """One clean build; what it measured, after checking it ran as asked."""
        self.bazel.clean()
        bazel_tool.clear_streams(self.streams)
        profile = self.profiles / f"{tag}-{strategy}.json"
        server = self.bazel.server_pid()
        before = cpu_seconds(server) if server else 0.0
        with ServerCpu(self.streams) as sandboxfs_cpu, Timer() as wall:
            result = self.bazel.build(f"--jobs={JOBS}", f"--profile={profile}",
                                      "--experimental_generate_json_trace_profile",
                                      *self.flags[strategy])
        sample = {"wall": wall.elapsed,
                  "bazel_server_cpu": cpu_seconds(server) - before if server else None,
                  "phases": _phases(profile), "processes": _processes(result.stderr)}
        profile.unlink()
        expected = len(self.outputs)
        spawn = SPAWN[strategy.removesuffix("_profiled")]
        if sample["processes"] != {spawn: expected}:
            raise RuntimeError(f"bazel {strategy}: expected {expected} {spawn} processes, "
                               f"Bazel reported {sample['processes']}")
        servers = bazel_tool.ServerStreams.all(self.streams)
        if strategy.startswith("sandboxfs"):
            if len(servers) != 1 or len(servers[0].created) != expected + 1 or servers[0].errors:
                raise RuntimeError(f"bazel sandboxfs: the server did not serve every action: "
                                   f"{[(len(s.created), s.errors[:3]) for s in servers]}")
            s = servers[0]
            sample["sandboxfs"] = {"creates": len(s.created), "destroys": len(s.destroyed),
                                   "mappings": summary(s.mappings),
                                   "startup_seconds": s.seconds("create", first=True)[0],
                                   "create_seconds": sum(s.seconds("create")),
                                   "destroy_seconds": sum(s.seconds("destroy")),
                                   "create_ms": summary([t * 1000 for t in s.seconds("create")]),
                                   "destroy_ms": summary([t * 1000 for t in s.seconds("destroy")]),
                                   "server_cpu": sandboxfs_cpu.seconds.get(s.pid)}
            if strategy == "sandboxfs_profiled":
                sample["server_profile"] = server_profile(self.streams / f"profile.{s.pid}")
        elif servers:
            raise RuntimeError(f"bazel {strategy} started a sandboxfs")
        if self.bin_dir is None:
            self.bin_dir = self.bazel.info("bazel-bin")
        sample["digests"] = _digests(self.bin_dir, self.outputs)
        return sample


# Where the server's main thread (the event loop: every FUSE request, the JSON stream and
# sandboxes of up to 512 mappings) spends its time, from its cProfile (--cpu_profile).
HANDLER_FILES = ("sandboxfs/fuse/kernel/handlers.py", "sandboxfs/fuse/pyfuse3_transport.py")
PROFILE_PARTS = {("sandboxfs/control/reconfig.py", "create_sandbox"): "create_sandbox",
                 ("sandboxfs/control/reconfig.py", "destroy_sandbox"): "destroy_sandbox",
                 ("sandboxfs/compat/translate.py", "translate"): "translate JSON requests",
                 ("sandboxfs/compat/jsondecode.py", "feed"): "decode the JSON stream",
                 ("sandboxfs/fs/operations.py", "invalidate"): "kernel cache invalidations"}


IDLE = "<method 'poll' of 'select.epoll' objects>"  # the event loop waiting for work


def server_profile(path: Path) -> dict:
    """FUSE requests by handler (calls, cumulative s), the reconfiguration parts, the busiest
    functions by own time, and the main thread's total, from one server's pstats file."""
    stats = pstats.Stats(str(path)).stats
    fuse, parts, own = {}, {}, []
    for (filename, _, func), (_, calls, tottime, cumtime, _) in stats.items():
        short = re.sub(r".*/(site-packages|sandboxfs)/", "", filename)
        if filename.endswith(HANDLER_FILES) and func.isidentifier() and func[0].islower():
            fuse[func] = {"calls": calls, "seconds": cumtime}
        part = PROFILE_PARTS.get((f"sandboxfs/{short}", func))
        if part:
            parts[part] = {"calls": calls, "seconds": cumtime}
        own.append((tottime, f"{short}:{func}" if short != "~" else func, calls))
    own.sort(reverse=True)
    idle = sum(t for t, f, _ in own if f == IDLE)
    return {"main_thread_seconds": sum(t for t, _, _ in own), "idle_seconds": idle,
            "fuse": fuse, "parts": parts,
            "top_own_time": [{"function": f, "seconds": t, "calls": c}
                             for t, f, c in own if f != IDLE][:12]}


def _processes(stderr: str) -> dict[str, int]:
    """``INFO: 201 processes: 200 linux-sandbox, 1 local.`` -> {"linux-sandbox": 200, ...}
    (the workspace status action is not a process; each genrule is one)."""
    found = re.findall(r"INFO: \d+ process(?:es)?: (.*?)\.?$", stderr, re.MULTILINE)
    if not found:
        return {}
    return {kind: int(n) for n, kind in re.findall(r"(\d+) ([\w-]+)", found[-1])}


def run(env, config, progress: Progress) -> dict:
    try:
        binary = bazel_tool.bazel_binary()
    except (bazel_tool.BazelUnavailable, RuntimeError) as exc:
        progress.step(f"SKIPPED: {exc}", weight=steps(config))
        return {"skipped": str(exc).splitlines()[0]}
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    load_start = os.getloadavg()
    bench = Bench(env, config, binary)
    samples: dict[str, list[dict]] = {s: [] for s in STRATEGIES}
    reference: dict[str, str] = {}
    mismatches: list[str] = []

    def compare(digests: dict[str, str], label: str) -> None:
        """Outputs must equal the first build's, whatever its strategy."""
        reference.update({o: d for o, d in digests.items() if o not in reference})
        mismatches.extend(f"{label}: {o}" for o, d in digests.items() if reference[o] != d)
    warmup, repeats = config.bazel_rounds
    with bazel_tool.session(bench.bazel, bench.base):  # server shut down, leftovers stopped
        bench.bazel.start()  # not timed
        progress.step(f"Bazel {bazel_tool.BAZEL_VERSION} server up; {len(bench.outputs)} actions")
        for r, warm, order in rounds(list(STRATEGIES), warmup, repeats):
            for name in order:
                sample = bench.build(name, f"r{r}")
                compare(sample.pop("digests"), f"round {r}: {name}")
                if not warm:
                    samples[name].append(sample)
                progress.step(f"round {r + 1}{' (warm-up)' if warm else ''}: {name} "
                              f"{sample['wall']:.1f}s")
        profiled = bench.build("sandboxfs_profiled", "profile")
        compare(profiled.pop("digests"), "profiled build")
        progress.step(f"profiled sandboxfs build (not in the medians) {profiled['wall']:.1f}s")
    walls = {s: [x["wall"] for x in samples[s]] for s in STRATEGIES}
    rows = []
    for name in STRATEGIES:
        got = samples[name]
        row = {"strategy": name, "wall_seconds": summary(walls[name]),
               "ratio_to_local": paired_ratio(walls[name], walls["local"]),
               "ratio_to_linux_sandbox": paired_ratio(walls[name], walls["linux_sandbox"]),
               "bazel_server_cpu_seconds": summary([x["bazel_server_cpu"] for x in got
                                                     if x["bazel_server_cpu"] is not None]),
               "phases": {p: summary([x["phases"][p]["seconds"] for x in got]) for p in PHASES},
               "phase_counts": {p: got[-1]["phases"][p]["count"] for p in PHASES} if got else {}}
        if name == "sandboxfs" and got:
            row["server"] = _server_row([x["sandboxfs"] for x in got])
        rows.append(row)
    return {"bazel": bazel_tool.BAZEL_VERSION, "transport": bench.transport, "jobs": JOBS,
            "cpus": CPUS, "compiles": config.bazel_compiles, "headers": config.bazel_headers,
            "includes": config.bazel_includes, "shell_actions": config.bazel_shell,
            "actions": len(bench.outputs), "warmup": warmup, "repeats": repeats,
            "started": started, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
            "outputs_identical": not mismatches, "mismatches": mismatches[:20],
            "wall": walls, "rows": rows, "samples": samples, "profiled_build": profiled}


def _server_row(per_build: list[dict]) -> dict:
    """The sandboxfs server's side: per-build totals and per-request medians, over the builds."""
    last = per_build[-1]
    return {"creates": last["creates"], "destroys": last["destroys"],
            "mappings_per_create": last["mappings"],
            "startup_seconds": summary([b["startup_seconds"] for b in per_build]),
            "create_total_seconds": summary([b["create_seconds"] for b in per_build]),
            "destroy_total_seconds": summary([b["destroy_seconds"] for b in per_build]),
            "create_ms_median": summary([b["create_ms"]["median"] for b in per_build]),
            "destroy_ms_median": summary([b["destroy_ms"]["median"] for b in per_build]),
            "create_ms_max": max(b["create_ms"]["max"] for b in per_build),
            "server_cpu_seconds": summary([b["server_cpu"] for b in per_build
                                           if b["server_cpu"] is not None])}
