"""Scenario 1: setup + teardown of a sandbox of N declared inputs, per strategy.

Every round builds and removes one sandbox with each strategy, in rotated order;
ratios to the Python symlink forest are computed round by round.  sandboxfs
gets a freshly built mapping list per action (equal content, new objects, as a
build tool sends: its groups then go by digest), and ``sandboxfs_prepared``
the same inputs prepared once.  Their create and destroy round trips are also
kept apart, and create is also timed for the same inputs in an order the
server has not seen (new content, so the whole group is sent and split: what
the first action with a new toolchain pays).
"""

from __future__ import annotations

import attrs

from bench.measure import Progress, Timer, paired_ratio, rounds, summary
from bench.strategies import Spec

BASELINE = "symlink_py"


def steps(config) -> int:
    return sum(_weight(n) for n in config.setup_sizes) * (config.warmup + config.repeats)


def _weight(n: int) -> float:
    return max(n, 500)  # time grows with N; small sizes still cost a little


def run(env, config, progress: Progress) -> dict:
    strategies = [env.strategy(name) for name in
                  ("symlink_py", "symlink_cp", "hardlink", "copy", "sandboxfs",
                   "sandboxfs_prepared")]
    samples: dict[str, dict[str, list[float]]] = {s.name: {} for s in strategies}
    parts: dict[str, dict[str, list[float]]] = {
        "create": {}, "destroy": {}, "create_prepared": {}, "destroy_prepared": {},
        "create_new_order": {}}
    for n in config.setup_sizes:
        spec = Spec(env.toolchain.root, tuple(env.toolchain.leaf_dirs(n)),
                    tuple(env.toolchain.relative(n)))
        for s in strategies:
            samples[s.name][str(n)] = []
        for part in ("create", "destroy", "create_prepared", "destroy_prepared"):
            parts[part][str(n)] = []
        for r, warm, order in rounds(strategies, config.warmup, config.repeats):
            took = {}
            for s in order:
                ident = f"s{n}r{r}"
                s.ready(spec)
                with Timer() as setup:
                    s.setup(ident, spec)
                with Timer() as teardown:
                    s.teardown(ident, spec)
                took[s.name] = setup.elapsed + teardown.elapsed
                if not warm and s.name.startswith("sandboxfs"):
                    key = "" if s.name == "sandboxfs" else "_prepared"
                    parts["create" + key][str(n)].append(setup.elapsed)
                    parts["destroy" + key][str(n)].append(teardown.elapsed)
            if not warm:
                for name, t in took.items():
                    samples[name][str(n)].append(t)
            progress.step(f"N={n} round {r + 1}{' (warm-up)' if warm else ''}: " + ", ".join(
                f"{name} {t * 1000:.1f} ms" for name, t in took.items()), _weight(n))
        parts["create_new_order"][str(n)] = _creates_in_new_orders(env, spec, config.repeats, n)
    rows = []
    for n in config.setup_sizes:
        base = samples[BASELINE][str(n)]
        for s in strategies:
            mine = samples[s.name][str(n)]
            rows.append({"n": n, "strategy": s.name, "seconds": summary(mine),
                         "us_per_input": summary([t * 1e6 / n for t in mine]),
                         # > 1 means faster than the Python symlink forest
                         "speedup_vs_symlink_py": paired_ratio(base, mine)})
    return {"sizes": config.setup_sizes, "samples": samples, "sandboxfs_parts": parts,
            "rows": rows}


def _creates_in_new_orders(env, spec: Spec, count: int, n: int) -> list[float]:
    """create_sandbox times for ``spec``'s inputs rotated by 1, 2, ... places: the same
    files, in orders never sent before."""
    sandboxfs = env.strategy("sandboxfs")
    took = []
    for r in range(min(count, n - 1)):
        shift = r + 1
        rotated = attrs.evolve(spec, tree_files=spec.tree_files[shift:] + spec.tree_files[:shift])
        sandboxfs.mapping_list(rotated)  # made before timing, as for every strategy
        ident = f"s{n}new{r}"
        with Timer() as create:
            sandboxfs.setup(ident, rotated)
        sandboxfs.teardown(ident, rotated)
        took.append(create.elapsed)
    return took
