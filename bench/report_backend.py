"""The backend scenario's part of docs/benchmarks.md (section 6, its target line) and
docs/plots/backend.png; called from ``bench.report``, whose helpers it uses."""

from __future__ import annotations

from pathlib import Path

from bench.report import STRATEGY_LABELS, _loads, _num, _range, _ratio, _table

HEADING = "## 6. Sandbox backend: `sandboxfs serve`"
TARGET_PREFIX = "- Backend"
ACTION_LABELS = {"native": "no sandbox (gcc in the exec root)", "hardlink": "hard-link forest (cp -al)",
                 "sandboxfs": "sandboxfs, control socket", "serve": "sandboxfs serve (backend)"}
PHASE_LABELS = {"setup": "setup", "run": "gcc", "collect": "collect", "teardown": "teardown"}


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _rounds(xs: list[float]) -> str:
    return ", ".join(_num(x) for x in xs) if xs else "–"


def _tree_rows(tree: dict) -> list[tuple[str, dict, list[float], str]]:
    """(label, summary in ms, per-round values, target) for the table and the plot."""
    s, per, t = tree["serve"], tree["per_round"], tree["targets"]
    first = [a + b for a, b in zip(per["first_push_create_ms"], per["first_destroy_ms"])]
    known = [a + b for a, b in zip(per["known_create_ms"], per["known_destroy_ms"])]
    rows = [
        ("serve, first: Push + Create", s["first_push_create_ms"], per["first_push_create_ms"],
         f"≤ {t['first_ms']:g} ms: {_met(t['first_met'])}"),
        ("serve, first: Destroy", s["first_destroy_ms"], per["first_destroy_ms"], ""),
        ("serve, first: Push + Create + Destroy", s["first_total_ms"], first,
         f"(≤ {t['first_ms']:g} ms: {_met(t['first_with_destroy_met'])})"),
        ("serve, known: Create (reused slot)", s["known_create_ms"], per["known_create_ms"],
         f"≤ {t['known_ms']:g} ms: {_met(t['known_met'])}"),
        ("serve, known: Destroy", s["known_destroy_ms"], per["known_destroy_ms"], ""),
        ("serve, known: Create + Destroy", s["known_total_ms"], known,
         f"(≤ {t['known_ms']:g} ms: {_met(t['known_with_destroy_met'])})"),
    ]
    for name, f in tree["forests"].items():
        label = "sandboxfs, control socket" if name == "sandboxfs" else STRATEGY_LABELS[name]
        rows.append((f"{label}: build + remove", f["total_ms"], f["per_round_total_ms"], ""))
    return rows


def section(data: dict, plots: Path) -> str:
    tree, act = data["tree"], data["actions"]
    rows = [[label, _range(summary), _rounds(per), target]
            for label, summary, per, target in _tree_rows(tree)]
    native = {r["strategy"]: r for r in act["rows"]}["native"]["action_ms"]["median"]
    action_rows = [[ACTION_LABELS[r["strategy"]], _range(r["action_ms"]),
                    "–" if r["strategy"] == "native" else _num(r["overhead_ms"]),
                    "–" if r["strategy"] == "native" else _range(r["paired_overhead_ms"]),
                    _ratio(r["action_ms"]["median"] / native) if native else "–",
                    *(_num(r["phases_ms"][p]["median"], 2) for p in PHASE_LABELS)]
                   for r in act["rows"]]
    aspect = tree["targets"]["aspect_ms"]
    plot(data, plots / "backend.png")
    return "\n\n".join([
        HEADING,
        "Bazel's sandbox-backend protocol (issue 16), played by `bench/backend_driver.py` on the "
        "server's stdin/stdout. The server (`--ttl 60`, kernel transport) is pinned to the last "
        "CPU, the driver and everything it runs (`cp`, `rm`, gcc) to CPU 0. "
        f"{data['warmup']} warm-up round(s) dropped, {data['repeats']} measured, the strategies "
        f"in rotated order. Run {data['started']} – {data['finished']}, load average "
        f"{_loads(data['loadavg_start'])} at start and {_loads(data['loadavg_end'])} at the end.",
        f"**Create + Destroy of a {tree['files']:,}-file input tree**: the files sit in "
        f"{tree['leaf_dirs']:,} leaf directories (depth 3–6; {tree['directories']:,} Directory "
        "blobs) under the exec root, where the server serves them from (no content is pushed); "
        f"the manifest also declares one output file (`{tree['output']}`). *First*: each round "
        "starts a fresh server (not timed), warms it with a 40-file tree under another exec root, "
        f"then sends a Push of every Directory blob of the tree ({tree['push_bytes']:,} bytes, "
        "serialized beforehand) and the Create, timed from the Push's first byte to the Create's "
        f"response; then its Destroy. *Known*: {tree['known_per_round']} Creates per round of the "
        "same tree under new sandbox ids, each after the previous one's Destroy, so each reuses "
        "the idle slot (checked: the same path every time); per round: that round's median. The "
        "forests hold the same files (and an `out/` directory), built and removed in the same "
        "rounds. The targets apply to the Create; with its Destroy in brackets.",
        _table(["what", "ms: median (min–max)", "per round, ms", "target"], rows),
        f"For scale, issue 16 quotes Aspect's backend on macOS FSKit at "
        f"{aspect['FSKit, fastest']:g}–{aspect['FSKit, slowest']:g} ms and a symlink forest at "
        f"{aspect['symlink forest']:g} ms (another machine and OS).",
        f"**Per action**: `{' '.join(act['argv'])}`, the source including all "
        f"{act['headers']} headers it declares ({act['sources']} distinct sources, each "
        "including the same headers, in turn), timed as setup + gcc + collecting the output + "
        "teardown, one action at a time; per round one action per source and strategy, the "
        "strategy order rotated per action; "
        f"{act['actions_per_strategy']} measured actions per strategy. *sandboxfs serve*: Create "
        "with a tree pushed before the rounds, gcc in the sandbox, Collect, Destroy; "
        f"{act['serve_slots_used']} slot served every action, so each Create swapped only the "
        "source's directory. Overhead = the strategy's median minus no sandbox's; paired = the "
        "difference per (round, source), median (min–max). Phases: medians.",
        f"Outputs byte-identical across strategies: **{'yes' if act['outputs_identical'] else 'NO'}**"
        + ("" if act["outputs_identical"] else f" ({'; '.join(act['mismatches'])})"),
        _table(["strategy", "action ms: median (min–max)", "overhead ms", "paired overhead ms",
                "vs no sandbox", *(f"{p} ms" for p in PHASE_LABELS.values())], action_rows),
        "![sandboxfs serve: Create and Destroy, and one gcc action](plots/backend.png)",
    ])


def targets(data: dict) -> list[str]:
    tree = data["tree"]
    s, t = tree["serve"], tree["targets"]
    return [f"{TARGET_PREFIX} (`sandboxfs serve`), a {tree['files']:,}-file tree: Create the first "
            f"time (Push of its Directory blobs + Create) **{_num(s['first_push_create_ms']['median'])} "
            f"ms** (target ≤ {t['first_ms']:g} ms: {'met' if t['first_met'] else 'not met'}), when "
            f"known (reused slot) **{_num(s['known_create_ms']['median'])} ms** (target ≤ "
            f"{t['known_ms']:g} ms: {'met' if t['known_met'] else 'not met'}); with the Destroy "
            f"{_num(s['first_total_ms']['median'])} and {_num(s['known_total_ms']['median'])} ms."]


def plot(data: dict, path: Path) -> None:
    import matplotlib.pyplot as plt
    tree, act = data["tree"], data["actions"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5), dpi=100)
    rows = [r for r in _tree_rows(tree) if "Create + Destroy" not in r[0]]
    labels = [r[0] for r in rows]
    med = [r[1]["median"] for r in rows]
    err = [[m - r[1]["min"] for m, r in zip(med, rows)], [r[1]["max"] - m for m, r in zip(med, rows)]]
    colors = ["tab:blue" if label.startswith("serve") else "tab:gray" for label in labels]
    bars = left.barh(labels, med, xerr=err, color=colors, capsize=3)
    left.bar_label(bars, labels=[_num(m) for m in med], padding=8, fontsize=8)
    t = tree["targets"]
    left.axvline(t["first_ms"], color="tab:red", linestyle="--", label=f"target first: {t['first_ms']:g} ms")
    left.axvline(t["known_ms"], color="tab:red", linestyle=":", label=f"target known: {t['known_ms']:g} ms")
    left.axvspan(t["aspect_ms"]["FSKit, fastest"], t["aspect_ms"]["FSKit, slowest"], color="tab:orange",
                 alpha=0.15, label="Aspect, macOS FSKit (published)")
    left.axvline(t["aspect_ms"]["symlink forest"], color="tab:orange", linestyle="-.",
                 label="Aspect's symlink forest (published)")
    left.set_xscale("log")
    left.invert_yaxis()
    left.tick_params(axis="y", labelsize=8)
    left.set_xlabel("ms (median, min–max; log scale)")
    left.set_title(f"Create / Destroy of {tree['files']:,} files")
    left.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    alabels = [ACTION_LABELS[r["strategy"]] for r in act["rows"]]
    lefts = [0.0] * len(act["rows"])
    for phase, name in PHASE_LABELS.items():
        vals = [r["phases_ms"][phase]["median"] or 0 for r in act["rows"]]
        right.barh(alabels, vals, left=lefts, label=name)
        lefts = [a + b for a, b in zip(lefts, vals)]
    for y, r in enumerate(act["rows"]):
        right.annotate(f"{_num(r['action_ms']['median'])} ms", (lefts[y], y), xytext=(4, 0),
                       textcoords="offset points", va="center", fontsize=8)
    right.margins(x=0.15)
    right.set_xlim(left=0)
    right.invert_yaxis()
    right.tick_params(axis="y", labelsize=8)
    right.set_xlabel("ms per action, phases' medians stacked")
    right.set_title(f"gcc -c with {act['headers']} headers, one action")
    right.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=4)
    for ax in (left, right):
        ax.grid(True, axis="x", alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
