"""Results JSON -> docs/benchmarks.md (tables) and docs/plots/*.png (matplotlib).

``render(results, docs_dir)`` rewrites benchmarks.md from the results; any text
below the line ``KEEP_MARKER`` in the existing file is hand-written analysis and
is carried over unchanged.  A run of some scenarios only (``--only bazel``)
replaces only their sections and target lines: the other scenarios' sections
and the machine section are carried over word for word (the latter gains a line
naming the separate run), so their numbers stay those of the run that made them.
``python -m bench.report RESULTS.json [DOCS_DIR]`` re-renders a saved run.
The I/O scenario's section is rendered by ``bench.report_io``, the backend's by
``bench.report_backend``, the worker's by ``bench.report_worker``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

KEEP_MARKER = "<!-- hand-written below this line; kept when the report is regenerated -->"

STRATEGY_LABELS = {
    "in_place": "no sandbox", "symlink_py": "symlink forest (Python)",
    "symlink_cp": "symlink forest (cp -rs)", "hardlink": "hard-link forest (cp -al)",
    "copy": "full copy (cp -r)", "sandboxfs": "sandboxfs", "sandboxfs_reuse": "sandboxfs, reused",
    "sandboxfs_prepared": "sandboxfs, prepared inputs",
    "sandboxfs_own_inodes": "sandboxfs, --no-shared-inodes",
}


def _num(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "–"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10 or digits == 0:
        return f"{x:.{min(digits, 1)}f}"
    return f"{x:.{digits + 1}f}" if abs(x) < 1 else f"{x:.{digits}f}"


def _ratio(x: float | None) -> str:
    return "–" if x is None else (f"{x:.2f}x" if x < 10 else f"{x:.1f}x")


def _range(s: dict, scale: float = 1.0) -> str:
    if not s or s.get("median") is None:
        return "–"
    return f"{_num(s['median'] * scale)} ({_num(s['min'] * scale)}–{_num(s['max'] * scale)})"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _setup_section(data: dict, plots: Path) -> str:
    rows = [[f"{r['n']:,}", STRATEGY_LABELS[r["strategy"]], _range(r["seconds"], 1000),
             _num(r["us_per_input"]["median"]), _ratio(r["speedup_vs_symlink_py"]["median"])]
            for r in data["rows"]]
    parts = data["sandboxfs_parts"]
    split = [[f"{int(n):,}", _samples(parts["create"][n]), _samples(parts["destroy"][n]),
              _samples(parts.get("create_new_order", {}).get(n, []))]
             for n in parts["create"] if parts["create"][n]]
    _plot_setup(data, plots / "setup.png")
    return "\n\n".join([
        "## 1. Setup + teardown of one sandbox",
        "A sandbox of N declared inputs drawn from the synthetic toolchain (20 files per leaf "
        "directory, depth 3–6), built and removed by each strategy in turn. Speed-up is the "
        "Python symlink forest's time divided by the strategy's, computed round by round, median "
        "shown (higher is faster).",
        _table(["N", "strategy", "ms: median (min–max)", "µs per input", "speed-up vs Python forest"],
               rows),
        "sandboxfs split into its two control round trips; the last column times "
        "create_sandbox for the same inputs in an order the server has not seen before (its "
        "cache of recent group splits cannot help: what the first action with a new "
        "toolchain pays):",
        _table(["N", "create_sandbox ms", "destroy_sandbox ms", "create_sandbox ms, new order"],
               split),
        "![setup + teardown time vs N](plots/setup.png)",
    ])


def _samples(xs: list[float]) -> str:
    """Seconds as ms: median (min–max)."""
    if not xs:
        return "–"
    return _range({"median": _med(xs), "min": min(xs), "max": max(xs)}, 1000)


def _med(xs: list[float]) -> float:
    s = sorted(xs)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def _plot_setup(data: dict, path: Path) -> None:
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for name in dict.fromkeys(r["strategy"] for r in data["rows"]):
        pts = [(r["n"], r["seconds"]["median"] * 1000) for r in data["rows"] if r["strategy"] == name]
        ax.plot(*zip(*pts), marker="o", label=STRATEGY_LABELS[name],
                linewidth=2.5 if name == "sandboxfs" else 1.5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("declared inputs N")
    ax.set_ylabel("setup + teardown, ms (median)")
    ax.set_title("Building and removing one sandbox")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _actions_section(data: dict, plots: Path) -> str:
    rows = [[STRATEGY_LABELS[r["strategy"]], _range(r["wall_seconds"], 1000),
             _range(r["overhead_per_action_ms"]), _ratio(r["ratio_to_in_place"]["median"]),
             _num((r["action_seconds"]["gcc"]["median"] or 0) * 1000),
             _num((r["action_seconds"]["python"]["median"] or 0) * 1000)]
            for r in data["rows"]]
    _plot_actions(data, plots / "actions.png")
    return "\n\n".join([
        "## 2. Actions",
        f"{data['actions']} actions per round, {data['parallel']} at a time, each in its own sandbox "
        f"of {data['declared_inputs']:,} declared toolchain inputs: gcc actions include "
        f"{data['headers_per_gcc_action']} headers; Python actions also declare "
        f"{data['python_files_declared']:,} .py files and import {data['modules_per_python_action']} "
        "modules. *sandboxfs, reused* keeps one sandbox per worker and maps/unmaps only the "
        "difference between consecutive actions. Overhead = (strategy's round wall time − no "
        "sandbox's, same round) / actions. Action time = setup + run + collecting outputs + teardown.",
        f"Outputs byte-identical across strategies: **{'yes' if data['outputs_identical'] else 'NO'}**"
        + ("" if data["outputs_identical"] else f" ({'; '.join(data['mismatches'])})"),
        _table(["strategy", "round wall ms", "overhead ms/action", "wall vs no sandbox",
                "gcc action ms", "Python action ms"], rows),
        "![per-action overhead](plots/actions.png)",
    ])


def _plot_actions(data: dict, path: Path) -> None:
    import matplotlib.pyplot as plt
    rows = [r for r in data["rows"] if r["strategy"] != "in_place"]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    labels = [STRATEGY_LABELS[r["strategy"]] for r in rows]
    med = [r["overhead_per_action_ms"]["median"] for r in rows]
    lo = [m - r["overhead_per_action_ms"]["min"] for m, r in zip(med, rows)]
    hi = [r["overhead_per_action_ms"]["max"] - m for m, r in zip(med, rows)]
    colors = ["tab:blue" if "sandboxfs" in r["strategy"] else "tab:gray" for r in rows]
    ax.barh(labels, med, xerr=[lo, hi], color=colors, capsize=3)
    ax.invert_yaxis()
    ax.set_xlabel("wall-time overhead per action vs no sandbox, ms (median, min–max)")
    ax.set_title(f"{data['actions']} actions, {data['parallel']} in parallel, "
                 f"{data['declared_inputs']:,} declared inputs")
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _io_section(data: dict, plots: Path) -> str:
    from bench import report_io  # it imports this module's helpers
    return report_io.section(data, plots)


def _scale_section(data: dict) -> str:
    mem = [[f"{m['live_mappings']:,}", str(m["sandboxes"]), f"{m['rss_growth_bytes'] / 2**20:,.1f}",
            _num(m["bytes_per_mapping"]), _num(m["create_all_seconds"], 2)] for m in data["memory"]]
    cyc = [[name, f"{c['per_second']:.0f}", _range(c["seconds"], 1000)]
           for name, c in (("idle", data["cycles"]["idle"]),
                           ("while 2 gcc compile in a loop", data["cycles"]["loaded"]))]
    return "\n\n".join([
        "## 4. Scale",
        "Server RSS growth per live mapping (sandboxes of up to 10,000 toolchain inputs):",
        _table(["live mappings", "sandboxes", "RSS growth MiB", "bytes per mapping",
                "time to create them all, s"], mem),
        f"create + destroy cycles of a {data['cycle_inputs']:,}-input sandbox:",
        _table(["load", "cycles/s", "ms per cycle: median (min–max)"], cyc),
    ] + ([_stall_text(data["stall"])] if "stall" in data else []))


def _stall_text(stall: dict) -> str:
    lst = stall["listings"]
    return (f"Responsiveness: while a sandbox of {stall['mappings']:,} mappings was created "
            f"({stall['create_seconds'] * 1000:,.0f} ms), {lst['n']:,} listings of another sandbox "
            "(from another process) "
            f"took {lst['median'] * 1e6:,.0f} µs median and {lst['max'] * 1000:,.1f} ms at worst "
            "(the server's single event loop stalls for the longest uninterrupted step).")


BAZEL_LABELS = {"local": "no sandbox (local)", "processwrapper": "processwrapper-sandbox",
                "linux_sandbox": "linux-sandbox", "sandboxfs": "linux-sandbox + sandboxfs"}
BAZEL_PHASES = {"mountSandboxfs": "mount sandboxfs", "sandbox.createFileSystem": "create sandbox",
                "subprocess.run": "run action", "sandbox.copyOutputs": "copy outputs",
                "sandbox.delete": "delete sandbox"}


def _bazel_section(data: dict, plots: Path) -> str:
    head = "## 5. Bazel 2.1: clean builds"
    if "skipped" in data:
        return f"{head}\n\n**Skipped: nothing was measured.** {data['skipped']}"
    rows = {r["strategy"]: r for r in data["rows"]}
    server = rows["sandboxfs"]["server"]
    walls = [[BAZEL_LABELS[n], _range(r["wall_seconds"]), _ratio(r["ratio_to_local"]["median"]),
              _ratio(r["ratio_to_linux_sandbox"]["median"]),
              _num(r["bazel_server_cpu_seconds"]["median"]),
              _num(server["server_cpu_seconds"]["median"]) if n == "sandboxfs" else "–"]
             for n, r in rows.items()]
    phases = [[BAZEL_LABELS[n], *(_num(r["phases"][p]["median"], 2) if r["phase_counts"].get(p)
                                  else "–" for p in BAZEL_PHASES)] for n, r in rows.items()]
    _plot_bazel(data, plots / "bazel.png")
    return "\n\n".join(part for part in [
        head,
        f"{data['actions']} genrules: {data['compiles']} gcc compiles, each declaring all "
        f"{data['headers']} headers of a header package and including {data['includes']} of them, "
        f"and {data['shell_actions']} small shell actions. Each build is `bazel build --jobs="
        f"{data['jobs']}` after an untimed `bazel clean`, on one warm server; one build per strategy "
        f"per round, in rotated order, {data['warmup']} warm-up round(s) dropped, {data['repeats']} "
        "measured. The sandboxes get `--sandbox_base` on the work tree, outside the output base. "
        f"Bazel and its actions run on CPUs {data['cpus'][0]}–{data['cpus'][-1]}; the sandboxfs "
        f"server ({data['transport']} transport, started by Bazel for each build) is pinned to CPU "
        f"{data['cpus'][-1]}. Run {data['started']} – {data['finished']}, load average "
        f"{_loads(data['loadavg_start'])} at start and {_loads(data['loadavg_end'])} at the end. "
        "Ratios are computed round by round, median shown.",
        f"Outputs byte-identical across strategies: **{'yes' if data['outputs_identical'] else 'NO'}**"
        + ("" if data["outputs_identical"] else f" ({'; '.join(data['mismatches'])})"),
        _table(["strategy", "build s: median (min–max)", "vs local", "vs linux-sandbox",
                "Bazel server CPU s", "sandboxfs server CPU s"], walls),
        "Where the time goes, from Bazel's own profile (`--profile`, on in every build): each "
        "span summed over the build's actions (seconds of action time, two at a time), median:",
        _table(["strategy", *BAZEL_PHASES.values()], phases),
        f"The sandboxfs server, per build (from its JSON stream, timed at the pipes): "
        f"{server['creates']} CreateSandbox ({server['mappings_per_create']['median']:.0f} mappings "
        f"each) and {server['destroys']} DestroySandbox; a create took "
        f"{_num(server['create_ms_median']['median'])} ms median (worst "
        f"{_num(server['create_ms_max'])}), a destroy {_num(server['destroy_ms_median']['median'])} "
        f"ms; {_num(server['create_total_seconds']['median'], 2)} s and "
        f"{_num(server['destroy_total_seconds']['median'], 2)} s in all. From its start to its "
        f"first answer: {_num(server['startup_seconds']['median'], 2)} s.",
        _bazel_profile_text(data.get("profiled_build", {})),
        "![Bazel clean builds](plots/bazel.png)",
    ] if part)


def _loads(xs: list[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in xs)


def _bazel_profile_text(build: dict) -> str:
    prof = build.get("server_profile")
    if not prof:
        return ""
    busy = prof["main_thread_seconds"] - prof["idle_seconds"]
    ops = sorted(prof["fuse"].items(), key=lambda kv: -kv[1]["calls"])
    parts = ", ".join(f"{name} {_num(v['seconds'], 2)} s" for name, v in prof["parts"].items())
    top = ", ".join(f"`{t['function']}` {_num(t['seconds'], 2)} s ({t['calls']:,} calls)"
                    for t in prof["top_own_time"][:5])
    return "\n\n".join([
        f"One more sandboxfs build with the server's `--cpu_profile` (cProfile slows the server, "
        f"so it is not in the medians: {build['wall']:.1f} s): its event loop was busy "
        f"{busy:.1f} s and waited {prof['idle_seconds']:.1f} s. FUSE requests it served, by "
        "handler (seconds inside the handler, profiled):",
        _table(["request", "count", "per action", "s"],
               [[op, f"{v['calls']:,}", _num(v["calls"] / build["processes"]["linux-sandbox"]),
                 _num(v["seconds"], 2)] for op, v in ops if v["calls"]]),
        f"Reconfiguration on the loop: {parts}. Most own time: {top}."])


def _plot_bazel(data: dict, path: Path) -> None:
    import matplotlib.pyplot as plt
    rows = data["rows"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), dpi=100)
    labels = [BAZEL_LABELS[r["strategy"]] for r in rows]
    med = [r["wall_seconds"]["median"] for r in rows]
    err = [[m - r["wall_seconds"]["min"] for m, r in zip(med, rows)],
           [r["wall_seconds"]["max"] - m for m, r in zip(med, rows)]]
    colors = ["tab:blue" if r["strategy"] == "sandboxfs" else "tab:gray" for r in rows]
    bars = left.barh(labels, med, xerr=err, color=colors, capsize=3)
    left.bar_label(bars, labels=[f"{m:.1f}" for m in med], padding=8, fontsize=8)
    by = {r["strategy"]: r["wall_seconds"]["median"] for r in rows}
    for x, what, style in ((2 * by["local"], "2x local", "--"),
                           (0.6 * by["linux_sandbox"], "0.6x linux-sandbox", ":")):
        left.axvline(x, color="tab:red", linestyle=style, label=f"target: {what}")
    left.invert_yaxis()
    left.set_xlabel("clean build, s (median, min–max)")
    left.set_title(f"{data['actions']} actions, --jobs={data['jobs']}")
    left.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    lefts = [0.0] * len(rows)
    for phase, name in BAZEL_PHASES.items():
        vals = [r["phases"][phase]["median"] or 0 for r in rows]
        right.barh(labels, vals, left=lefts, label=name)
        lefts = [a + b for a, b in zip(lefts, vals)]
    right.invert_yaxis()
    right.set_yticklabels([])
    right.set_xlabel("Bazel's profile: s per build, spans summed over actions (median)")
    right.set_title("Sandbox phases (local has none)")
    right.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3)
    for ax in (left, right):
        ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _setup_targets(data: dict) -> list[str]:
    out = []
    for n, target in ((10_000, 10), (100_000, 30)):
        row = [r for r in data["rows"] if r["n"] == n and r["strategy"] == "sandboxfs"]
        if row:
            got = row[0]["speedup_vs_symlink_py"]["median"]
            out.append(f"- Setup + teardown at N = {n:,}: sandboxfs is **{got:.1f}x** faster than "
                       f"the Python symlink forest (target ≥ {target}x: "
                       f"{'met' if got >= target else 'not met'}).")
    return out


def _actions_targets(data: dict) -> list[str]:
    rows = {r["strategy"]: r for r in data["rows"]}
    s, f = rows["sandboxfs"]["overhead_per_action_ms"]["median"], \
        rows["symlink_py"]["overhead_per_action_ms"]["median"]
    reuse = rows["sandboxfs_reuse"]["overhead_per_action_ms"]["median"]
    return [f"- Action overhead at {data['declared_inputs']:,} declared inputs: sandboxfs "
            f"{s:.1f} ms/action (reused: {reuse:.1f}) vs Python symlink forest {f:.1f} "
            f"(target: less: {'met' if s < f else 'not met'})."]


def _io_targets(data: dict) -> list[str]:
    from bench import report_io
    return report_io.targets(data)


def _bazel_targets(data: dict) -> list[str]:
    if "skipped" in data:
        return [f"- Bazel 2.1 clean build: **not measured** (the scenario was skipped: "
                f"{data['skipped']})."]
    row = {r["strategy"]: r for r in data["rows"]}["sandboxfs"]
    local, linux = row["ratio_to_local"]["median"], row["ratio_to_linux_sandbox"]["median"]
    return [f"- Bazel 2.1 clean build of {data['actions']} actions (`--jobs={data['jobs']}`): "
            f"linux-sandbox + sandboxfs {row['wall_seconds']['median']:.1f} s is **{local:.2f}x** "
            f"local (target ≤ 2x: {'met' if local <= 2 else 'not met'}) and **{linux:.2f}x** "
            f"linux-sandbox (target ≤ 0.6x: {'met' if linux <= 0.6 else 'not met'})."]


def _backend_section(data: dict, plots: Path) -> str:
    from bench import report_backend  # it imports this module's helpers
    return report_backend.section(data, plots)


def _backend_targets(data: dict) -> list[str]:
    from bench import report_backend
    return report_backend.targets(data)


def _worker_section(data: dict, plots: Path) -> str:
    from bench import report_worker
    return report_worker.section(data, plots)


def _worker_targets(data: dict) -> list[str]:
    from bench import report_worker
    return report_worker.targets(data)


# Each scenario's lines in the Targets section, and how its lines begin (to carry them over).
TARGET_LINES = {"setup": (_setup_targets, "- Setup + teardown"),
                "actions": (_actions_targets, "- Action overhead"),
                "io": (_io_targets, "- I/O at or better"), "bazel": (_bazel_targets, "- Bazel"),
                "backend": (_backend_targets, "- Backend"),
                "worker": (_worker_targets, "- Worker")}


def _targets_section(results: dict, carried: str = "") -> str:
    """Targets of the scenarios in ``results``; the other scenarios' lines from ``carried``."""
    out = ["## Targets", ""]
    sc = results["scenarios"]
    for name, (lines, prefix) in TARGET_LINES.items():
        if name in sc:
            out += lines(sc[name])
        else:
            out += [line for line in carried.splitlines() if line.startswith(prefix)]
    return "\n".join(out)


def _machine_section(results: dict) -> str:
    m = results["machine"]
    return "\n".join([
        "## Machine and run", "",
        f"- {m['cpu']}, {m['cpus']} CPUs, {m['memory_bytes'] / 2**30:.0f} GiB; Linux {m['kernel']}; "
        f"work tree on {m['work_fs']}; load average at start {', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}",
        f"- Python {m['python']}, sandboxfs {m['sandboxfs']}, {m['bindfs']}, {m['gcc']}",
        f"- mode `{results['mode']}`, {results['config']['warmup']} warm-up round(s) dropped, "
        f"{results['config']['repeats']} measured rounds (actions: up to 3), strategies interleaved "
        f"in rotated order; run {results['started']} – {results.get('finished', '?')}",
        "- every sample is in the JSON file written to `bench/results/`",
    ])


HEADINGS = {"targets": "## Targets", "setup": "## 1. Setup", "actions": "## 2. Actions",
            "io": "## 3. I/O", "scale": "## 4. Scale", "bazel": "## 5. Bazel",
            "backend": "## 6. Sandbox backend", "worker": "## 7. Remote worker",
            "machine": "## Machine and run"}
SEPARATE_RUN = re.compile(r"a separate run \(`--only ([\w,]+)`\)")


def _generated_sections(text: str) -> dict[str, str]:
    """The sections of an existing report's generated part, by scenario (or targets/machine)."""
    found = {}
    for chunk in re.split(r"\n\n(?=## )", text.strip()):
        for key, heading in HEADINGS.items():
            if chunk.startswith(heading):
                found[key] = chunk.rstrip()
    return found


def _separate_run(results: dict, machine: str) -> str:
    """The carried machine section, plus a line for this run (replacing one for the same
    scenarios from an earlier partial run)."""
    names = list(results["scenarios"])
    lines = [line for line in machine.splitlines()
             if not ((m := SEPARATE_RUN.search(line)) and set(m.group(1).split(",")) <= set(names))]
    load = ", ".join(f"{x:.2f}" for x in results["machine"]["loadavg_at_start"])
    lines.append(f"- {', '.join(names)}: from a separate run (`--only {','.join(names)}`), mode "
                 f"`{results['mode']}`, {results['started']} – {results.get('finished', '?')}, "
                 f"load average at start {load}; the other sections are from the run above")
    return "\n".join(lines)


def render(results: dict, docs: Path) -> Path:
    plots = docs / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    target = docs / "benchmarks.md"
    kept, old = "", {}
    if target.exists():
        text = target.read_text()
        generated, marker, kept = text.partition(KEEP_MARKER)
        kept = kept if marker else ""
        old = _generated_sections(generated)
    sc = results["scenarios"]
    renderers = {"setup": lambda d: _setup_section(d, plots),
                 "actions": lambda d: _actions_section(d, plots),
                 "io": lambda d: _io_section(d, plots), "scale": _scale_section,
                 "bazel": lambda d: _bazel_section(d, plots),
                 "backend": lambda d: _backend_section(d, plots),
                 "worker": lambda d: _worker_section(d, plots)}
    carried = [name for name in renderers if name not in sc and name in old]
    sections = [
        "# sandboxfs benchmarks",
        "Generated by `make bench` (`python -m bench`); do not edit above the marker at the end. "
        "`make bench-quick` runs a smaller version. What each scenario does is described in "
        "`bench/scenarios/*.py`.",
        _targets_section(results, old.get("targets", "")),
    ]
    for name, section in renderers.items():
        if name in sc:
            sections.append(section(sc[name]))
        elif name in carried:
            sections.append(old[name])
    sections.append(_separate_run(results, old["machine"]) if carried and "machine" in old
                    else _machine_section(results))
    target.write_text("\n\n".join(sections) + "\n\n" + KEEP_MARKER + (kept or "\n"))
    return target


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: python -m bench.report RESULTS.json [DOCS_DIR]", file=sys.stderr)
        return 2
    results = json.loads(Path(argv[0]).read_text())
    print(render(results, Path(argv[1]) if len(argv) > 1 else Path(__file__).parent.parent / "docs"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
