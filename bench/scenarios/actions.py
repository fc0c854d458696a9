"""Scenario 2: real actions, each in its own sandbox, two at a time.

Actions alternate between gcc compiling a C file that includes M headers of a
toolchain of N declared inputs, and a Python interpreter importing modules from
a package tree (all of it declared too).  Every strategy runs the same K actions
per round (strategies in rotated order); we record the round's wall time and
each action's time (setup + run + collect outputs + teardown).  Outputs are
hashed and compared with running in place: they must be byte-identical.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from bench import tree
from bench.measure import Progress, Timer, paired_ratio, rounds, summary
from bench.strategies import Spec

STRATEGIES = ("in_place", "symlink_py", "symlink_cp", "hardlink", "sandboxfs", "sandboxfs_reuse",
              "sandboxfs_own_inodes")
PARALLEL = 2


def _repeats(config) -> int:
    return min(config.repeats, 3)


def steps(config) -> int:
    return config.warmup + _repeats(config)


class Action:
    def __init__(self, index: int, kind: str, spec: Spec, argv: list[str], output: str) -> None:
        self.index, self.kind, self.spec, self.argv, self.output = index, kind, spec, argv, output


def _prepare(env, config) -> tuple[list[Action], Path]:
    base = env.workdir / "actions"
    src = base / "src"
    src.mkdir(parents=True)
    n = config.action_inputs
    toolchain = tree.Toolchain(env.toolchain.root, env.toolchain.inputs[:n])
    py_root = base / "py"
    modules = tree.make_python_tree(py_root, *config.python_tree)
    py_extras = tuple((f"py/{os.path.relpath(p, py_root)}", p) for p in tree.python_files(py_root))
    leafs, rels = tuple(toolchain.leaf_dirs(n)), tuple(toolchain.relative(n))
    actions = []
    for k in range(config.action_count):
        out = base / "out" / "PLACEHOLDER" / str(k)
        if k % 2 == 0:
            (src / f"a{k}.c").write_bytes(tree.c_source(toolchain, k, config.action_headers))
            extras = ((f"src/a{k}.c", str(src / f"a{k}.c")),)
            argv = ["gcc", "-O1", "-c", f"src/a{k}.c", "-I", "tc", "-o", f"out/a{k}.o"]
            actions.append(Action(k, "gcc", Spec(toolchain.root, leafs, rels, extras,
                                                 ("out", str(out))), argv, f"a{k}.o"))
        else:
            chosen = [modules[(k * 13 + i * 7) % len(modules)] for i in range(config.python_modules)]
            script = ("import sys\nsys.path.insert(0, 'py')\nimport importlib\n"
                      f"mods = {chosen!r}\n"
                      "total = sum(importlib.import_module(m).f(1) for m in mods)\n"
                      f"open('out/p{k}.txt', 'w').write(str(total) + '\\n')\n")
            (src / f"p{k}.py").write_text(script)
            extras = py_extras + ((f"src/p{k}.py", str(src / f"p{k}.py")),)
            argv = [sys.executable, "-S", "-B", f"src/p{k}.py"]
            actions.append(Action(k, "python", Spec(toolchain.root, leafs, rels, extras,
                                                    ("out", str(out))), argv, f"p{k}.txt"))
    return actions, base


def _run_round(strategy, actions: list[Action], base: Path, tag: str) -> tuple[float, list[float], dict]:
    """Run all actions with PARALLEL workers; returns wall time, per-action times, digests."""
    todo = list(actions)
    lock = threading.Lock()
    times: list[float] = [0.0] * len(actions)
    digests: dict[str, str] = {}
    errors: list[BaseException] = []

    def worker(slot: int) -> None:
        while True:
            with lock:
                if not todo or errors:
                    return
                action = todo.pop(0)
            try:
                out_dir = base / "out" / strategy.name / str(action.index)
                shutil.rmtree(out_dir, ignore_errors=True)
                out_dir.mkdir(parents=True)
                spec = action.spec
                spec = Spec(spec.tree_root, spec.tree_dirs, spec.tree_files, spec.extra_files,
                            (spec.output[0], str(out_dir)))
                ident = f"{tag}-{action.index}"
                with Timer() as t:
                    sandbox = strategy.setup(ident, spec, slot)
                    subprocess.run(action.argv, cwd=sandbox, check=True,
                                   stdin=subprocess.DEVNULL, capture_output=True)
                    strategy.collect(ident, spec, sandbox)
                    strategy.teardown(ident, spec, slot)
                times[actions.index(action)] = t.elapsed
                digests[action.output] = hashlib.sha256(
                    (out_dir / action.output).read_bytes()).hexdigest()
            except BaseException as e:  # reported by the caller, after both workers end
                with lock:
                    errors.append(e)
                return

    threads = [threading.Thread(target=worker, args=(slot,)) for slot in range(PARALLEL)]
    with Timer() as wall:
        for t in threads:
            t.start()
        try:
            for t in threads:
                t.join()
        except BaseException:  # Ctrl-C: let the workers finish their action and stop
            with lock:
                todo.clear()
            for t in threads:
                t.join()
            raise
    if errors:
        e = errors[0]
        if isinstance(e, subprocess.CalledProcessError):
            raise RuntimeError(f"{strategy.name}: {e.cmd} failed: {e.stderr.decode(errors='replace')}")
        raise e
    return wall.elapsed, times, digests


def run(env, config, progress: Progress) -> dict:
    actions, base = _prepare(env, config)
    strategies = [env.strategy(name) for name in STRATEGIES]
    wall: dict[str, list[float]] = {s: [] for s in STRATEGIES}
    per_action: dict[str, dict[str, list[float]]] = {s: {"gcc": [], "python": []} for s in STRATEGIES}
    reference: dict[str, str] | None = None
    mismatches: list[str] = []
    for r, warm, order in rounds(strategies, config.warmup, _repeats(config)):
        line = []
        for s in order:
            took, times, digests = _run_round(s, actions, base, f"r{r}")
            if s.name == "in_place" and reference is None:
                reference = digests
            line.append(f"{s.name} {took:.2f}s")
            if not warm:
                wall[s.name].append(took)
                for a, t in zip(actions, times):
                    per_action[s.name][a.kind].append(t)
            for output, digest in digests.items():
                if reference is not None and reference.get(output, digest) != digest:
                    mismatches.append(f"round {r}: {s.name} {output}")
        progress.step(f"round {r + 1}{' (warm-up)' if warm else ''}: " + ", ".join(line))
    # Strategies that ran before in_place in the warm-up round are checked in later rounds.
    rows = []
    base_wall = wall["in_place"]
    for name in STRATEGIES:
        overhead = [(w - b) / len(actions) for w, b in zip(wall[name], base_wall)]
        rows.append({"strategy": name, "wall_seconds": summary(wall[name]),
                     "overhead_per_action_ms": summary([o * 1000 for o in overhead]),
                     "ratio_to_in_place": paired_ratio(wall[name], base_wall),
                     "action_seconds": {k: summary(v) for k, v in per_action[name].items()}})
    return {"actions": len(actions), "parallel": PARALLEL, "declared_inputs": config.action_inputs,
            "headers_per_gcc_action": config.action_headers,
            "python_files_declared": sum(1 for _ in (base / "py").rglob("*.py")),
            "modules_per_python_action": config.python_modules,
            "outputs_identical": not mismatches, "mismatches": mismatches[:20],
            "wall": wall, "rows": rows}
