"""`python -m bench [--quick|--tiny] [--out DIR] [--docs DIR] [--only S,...]`.

Owns the run: sizes per mode, the shared environment (work tree, toolchain, one
sandboxfs mount; the last two made when a scenario first uses them), cleanup on
any exit (Ctrl-C included), the JSON file, and the call to ``report``.
Scenarios do the measuring.  A scenario that cannot run here (no Bazel)
returns ``{"skipped": reason}``: the report says so, and the exit status is
``EXIT_SKIPPED`` so the run does not pass for a complete one.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import attrs

from bench import mounts, report, tree
from bench.measure import Progress
from bench.scenarios import actions, backend, bazel, io, scale, setup, worker
from bench.strategies import (FOREST_STRATEGIES, InPlace, Sandboxfs, SandboxfsOwnInodes,
                              SandboxfsPrepared, SandboxfsReuse, Strategy)

log = logging.getLogger(__name__)

SCENARIOS = {"setup": setup, "actions": actions, "io": io, "scale": scale, "bazel": bazel,
             "backend": backend, "worker": worker}
EXIT_SKIPPED = 3
ROOT = Path(__file__).resolve().parent.parent


@attrs.frozen
class Config:
    mode: str
    warmup: int
    repeats: int
    setup_sizes: list[int]
    action_count: int        # K actions per strategy
    action_inputs: int       # N declared toolchain inputs per action
    action_headers: int      # M headers each gcc action includes
    python_modules: int      # modules each Python action imports (of python_tree)
    python_tree: tuple[int, int]  # packages, modules per package
    io_file_mb: int
    io_small_files: int
    io_dir_entries: int
    scale_live: list[int]
    scale_cycle_inputs: int
    scale_cycles: int
    bazel_compiles: int      # gcc genrules, each declaring every header
    bazel_headers: int       # headers in the shared header package
    bazel_includes: int      # headers each compile includes
    bazel_shell: int         # small shell genrules
    bazel_rounds: tuple[int, int]  # warm-up rounds, measured rounds (4 clean builds each)
    backend_files: int       # files of the tree sandboxfs serve creates and destroys
    backend_known: int       # Creates of that tree, once known, per round
    backend_sources: int     # distinct gcc sources of the backend's action part
    backend_headers: int     # headers each of them declares and includes
    worker_files: int = 10_000  # files of the worker scenario's input root
    worker_trivial: int = 10    # trivial actions per round (worker scenario)

    @property
    def toolchain_size(self) -> int:
        return max(self.setup_sizes + [self.action_inputs, self.scale_cycle_inputs])


MODES = {
    "tiny": Config("tiny", 1, 2, [20, 100], 4, 200, 10, 10, (2, 10), 4, 50, 200, [1000], 100, 20,
                   3, 12, 6, 2, (0, 1), 200, 3, 3, 20, worker_files=200, worker_trivial=3),
    "quick": Config("quick", 1, 3, [100, 1000, 10_000], 6, 2000, 100, 50, (10, 50), 64, 500, 2000,
                    [10_000, 100_000], 1000, 50, 40, 300, 100, 15, (1, 3), 2000, 5, 10, 100,
                    worker_files=2000, worker_trivial=5),
    "full": Config("full", 1, 5, [100, 1000, 10_000, 100_000], 12, 10_000, 300, 200, (40, 100),
                   256, 2000, 10_000, [10_000, 100_000, 1_000_000], 1000, 200, 150, 300, 100, 50,
                   (1, 7), 16_000, 10, 20, 300, worker_files=10_000, worker_trivial=10),
}


class Env:
    """What scenarios share: the work tree, the toolchain, one sandboxfs mount."""

    def __init__(self, stack: contextlib.ExitStack, workdir: Path, config: Config) -> None:
        self.stack = stack
        self.workdir = workdir
        self.config = config
        self._strategies: dict[str, Strategy] = {}

    @functools.cached_property
    def toolchain(self) -> tree.Toolchain:
        started = time.monotonic()
        made = tree.make_toolchain(self.workdir / "toolchain", self.config.toolchain_size)
        log.info("toolchain of %d files built in %.1fs", self.config.toolchain_size,
                 time.monotonic() - started)
        return made

    @functools.cached_property
    def mount(self) -> mounts.FuseChild:
        return self.start(mounts.sandboxfs(self.workdir))

    def start(self, child: mounts.FuseChild) -> mounts.FuseChild:
        child.start()
        self.stack.callback(child.stop)
        return child

    def strategy(self, name: str) -> Strategy:
        if name not in self._strategies:
            if name == "sandboxfs":
                s: Strategy = Sandboxfs(self.workdir, self.mount.mount_point, self.mount.socket)
            elif name == "sandboxfs_prepared":
                s = SandboxfsPrepared(self.workdir, self.mount.mount_point, self.mount.socket)
            elif name == "sandboxfs_reuse":
                s = SandboxfsReuse(self.workdir, self.mount.mount_point, self.mount.socket)
            elif name == "sandboxfs_own_inodes":
                # The same, on a second mount that gives each sandbox's read-only files
                # inodes of their own: what sharing them across sandboxes buys.
                own = self.start(mounts.sandboxfs(self.workdir, name="sandboxfs-own-inodes",
                                                  extra=("--no-shared-inodes",)))
                s = SandboxfsOwnInodes(self.workdir, own.mount_point, own.socket)
            else:
                s = {c.name: c for c in (InPlace, *FOREST_STRATEGIES)}[name](self.workdir)
            self.stack.callback(s.close)
            self._strategies[name] = s
        return self._strategies[name]


def _version(command: list[str]) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).splitlines()[0].strip()
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def machine() -> dict:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError, ValueError):
        mem = int(open("/proc/meminfo").readline().split()[1]) * 1024
    from sandboxfs import __version__
    return {"cpu": cpu, "cpus": os.cpu_count(), "memory_bytes": mem,
            "kernel": platform.release(), "python": platform.python_version(),
            "sandboxfs": __version__, "bindfs": _version(["bindfs", "--version"]),
            "gcc": _version(["gcc", "--version"]), "loadavg_at_start": os.getloadavg(),
            }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench",
                                     description="sandboxfs against the other ways to build a sandbox")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="mode", const="quick",
                      help="smaller sizes (under a minute or two)")
    size.add_argument("--tiny", action="store_const", dest="mode", const="tiny",
                      help="tiny sizes: proves the harness works, numbers mean nothing")
    parser.add_argument("--only", help="comma-separated scenarios (default: all): "
                        + ", ".join(SCENARIOS))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results",
                        help="where the JSON goes (default: bench/results)")
    parser.add_argument("--docs", type=Path, default=None,
                        help="render benchmarks.md and plots/ here (default: docs/ for the "
                        "full mode, none otherwise)")
    parser.add_argument("--workdir", type=Path, default=Path("/dev/shm"),
                        help="where the toolchain, forests and copies live (default /dev/shm: "
                        "tmpfs is the fastest place for a forest, so the comparison favours "
                        "the forests; a shared disk also made them 10x noisier)")
    parser.add_argument("--no-report", action="store_true", help="write only the JSON")
    parser.add_argument("--verbose", "-v", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    config = MODES[args.mode or "full"]
    names = args.only.split(",") if args.only else list(SCENARIOS)
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    docs = args.docs if args.docs else (ROOT / "docs" if config.mode == "full" else None)

    mounts.interrupts_as_keyboard()
    mounts.pin_client()
    results = {"mode": config.mode, "config": attrs.asdict(config),
               "machine": {**machine(), "work_fs": _version(["stat", "-f", "-c", "%T",
                                                             str(args.workdir)])},
               "started": datetime.datetime.now().isoformat(timespec="seconds"),
               "scenarios": {}}
    workdir = Path(tempfile.mkdtemp(prefix="sbx-bench-", dir=args.workdir))
    try:
        with contextlib.ExitStack() as stack:
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
            env = Env(stack, workdir, config)
            for name in names:
                module = SCENARIOS[name]
                started = time.monotonic()
                results["scenarios"][name] = module.run(
                    env, config, Progress(name, module.steps(config)))
                results["scenarios"][name]["seconds"] = round(time.monotonic() - started, 1)
    except KeyboardInterrupt:
        print("interrupted: mounts stopped, work tree removed", file=sys.stderr)
        return 130
    results["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench-{config.mode}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=1))
    log.info("results: %s", path)
    if docs is not None and not args.no_report:
        report.render(results, docs)
        log.info("report: %s", docs / "benchmarks.md")
    skipped = {n: r["skipped"] for n, r in results["scenarios"].items() if "skipped" in r}
    for name, why in skipped.items():
        log.warning("scenario %s was SKIPPED, nothing measured: %s", name, why)
    return EXIT_SKIPPED if skipped else 0
