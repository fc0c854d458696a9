"""The worker scenario's part of docs/benchmarks.md (section 7, its target line) and
docs/plots/worker.png; called from ``bench.report``, whose helpers it uses."""

from __future__ import annotations

from pathlib import Path

from bench.report import _loads, _num, _range, _ratio, _table

HEADING = "## 7. Remote worker: `sandboxfs worker`"
TARGET_PREFIX = "- Worker"
VARIANT_LABELS = {"no_prefetch": "lazy, --no-prefetch", "prefetch": "lazy, prefetch (default)"}


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _rounds(xs: list[float]) -> str:
    return ", ".join(_num(x, 0) for x in xs) if xs else "–"


def section(data: dict, plots: Path) -> str:
    if "skipped" in data:
        return f"{HEADING}\n\n**Skipped: nothing was measured.** {data['skipped']}"
    t, triv, eng = data["targets"], data["trivial"], data["engine_part_ms"]
    rows = []
    for r in data["rows"]:
        rows.append([f"{r['fraction']} % ({r['files_read']:,})", VARIANT_LABELS[r["variant"]],
                     _range(r["lazy_e2e_ms"]), _range(r["lazy_worker_ms"]),
                     _num(r["lazy_fetch_ms"]["median"]), _num(r["lazy_run_ms"]["median"]),
                     _range(r["eager_local_ms"]), _num(r["eager_with_engine_ms"]),
                     _ratio(r["ratio_e2e"]), _ratio(r["ratio_worker_vs_local"])])
    eager_rows = [[f"{r['fraction']} %", f"with the {VARIANT_LABELS[r['variant']]} worker up",
                   *(_num(r["eager_phases_ms"][p]["median"]) for p in ("tree", "files", "run", "delete")),
                   _rounds(r["per_round"]["eager_local_ms"])]
                  for r in data["rows"]]
    per_round = [[f"{r['fraction']} %", VARIANT_LABELS[r["variant"]],
                  _rounds(r["per_round"]["lazy_e2e_ms"]), _rounds(r["per_round"]["lazy_worker_ms"])]
                 for r in data["rows"]]
    triv_rows = [[label, _range(triv[key])] for key, label in (
        ("e2e", "end to end (client Execute -> ExecuteResponse)"),
        ("to_queued", "client send -> queued_timestamp (engine)"),
        ("queued_to_start", "queued -> worker_start (engine scheduling, until BuildGrid assigns the lease)"),
        ("assigned_to_reported", "worker_start -> worker_completed (BuildGrid's stamps: lease "
                                 "assigned -> report processed)"),
        ("worker", "of which the worker's own time (lease in hand -> result ready)"),
        ("run", "of which execution_start -> execution_completed (/bin/true)"),
        ("completed_to_client", "worker_completed -> client has the response"),
        ("engine_part", "end to end minus the worker's own time (engine round trips)"))]
    by = {(r["variant"], r["fraction"]): r for r in data["rows"]}
    verdicts = []
    for v in ("no_prefetch", "prefetch"):
        r5, r100 = by[(v, 5)]["ratio_e2e"], by[(v, 100)]["ratio_e2e"]
        verdicts.append(
            f"- {VARIANT_LABELS[v]}: at 5 % lazy/eager **{_ratio(r5)}** (target: lazy clearly "
            f"faster, < {t['ratio_5']:g}x: {_met(t[f'{v}_5_met'])}); at 100 % **{_ratio(r100)}** "
            f"(target ≤ {t['ratio_100']:g}x: {_met(t[f'{v}_100_met'])}).")
    verdicts.append(f"- Worker's own time for a trivial action **{_num(triv['worker']['median'])} ms** "
                    f"(target ≤ {t['overhead_ms']:g} ms over the engine's round trips: "
                    f"{_met(t['overhead_met'])}).")
    plot(data, plots / "worker.png")
    return "\n\n".join([
        HEADING,
        "`sandboxfs worker` (Remote Workers API bot) against a throwaway BuildGrid 0.9.1 + "
        "PostgreSQL on this machine (`tests/engine.py`). The worker runs under `taskset -c "
        f"{data['worker_cpu']}`, this benchmark process (client and eager runner, and what they "
        f"start) on CPU {data['client_cpu']}; **BuildGrid and PostgreSQL are not pinned** (they "
        f"share both CPUs with the others). {data['warmup']} warm-up round(s) dropped (for the "
        f"--no-prefetch worker the warm-up runs only the 5 % action), {data['repeats']} measured. "
        f"Run {data['started']} – {data['finished']}, load average {_loads(data['loadavg_start'])} "
        f"at start and {_loads(data['loadavg_end'])} at the end.",
        f"**Per action**: an input root of {data['files']:,} files in {data['dirs']} directories "
        f"({data['sizes'][0]}–{data['sizes'][1]} bytes each, {data['bytes'] / 2**20:.1f} MiB) "
        f"plus a list of paths, and `{' '.join(data['argv'][:2])} '{data['argv'][2]}'` (`list-50` "
        "and `list-100` for the others), which reads that share of the files (the same paths "
        "every round). Every round uploads new random content to the same paths (not timed: "
        f"{_range(data['upload_s'], 1000)} ms per upload), so the worker has never seen the "
        "blobs. The Command is the same in every round (no salt; do_not_cache), so the default "
        "worker prefetches the files that Command looked up in the previous round. *Lazy*: "
        "Execute through BuildGrid to the worker, end to end; the worker's part is its own time "
        "from lease in hand to result ready (a Duration it adds to the ExecutedActionMetadata's "
        "auxiliary_metadata: BuildGrid overwrites worker_start and worker_completed with the "
        "times it assigned the lease and processed the report). Fetch: input_fetch_start -> "
        "completed, i.e. Command + tree + sandbox; the prefetch then runs beside the command. "
        "Run: the command, during which the files not prefetched are fetched on their first "
        "open, and prefetched ones still on their way are waited for. *Eager*: in this "
        "process, for the same uploaded Action, what a worker without sandboxfs does: read the "
        "Action, Command and Directory tree (a level per batch), every file blob in "
        "BatchReadBlobs batches of ≤ 3 MiB on 4 threads, write them into a fresh directory, run "
        "the command with subprocess, delete the directory; no engine is in it, so *eager + "
        f"engine* adds the engine's part of a trivial action ({_num(eng)} ms, below: end to end "
        "minus worker part). Ratio = lazy end to end / (eager + engine); worker/local = lazy "
        "worker part / eager local.",
        _table(["read", "worker", "lazy end to end ms", "lazy worker part ms", "fetch ms",
                "run ms", "eager local ms", "eager + engine ms", "lazy / eager",
                "worker / local"], rows),
        *verdicts,
        "Eager phases (medians, ms) and its per-round totals:",
        _table(["read", "run alongside", "tree", "files", "run", "delete", "per round, ms"],
               eager_rows),
        "Lazy per round (end to end; worker part), ms:",
        _table(["read", "worker", "end to end", "worker part"], per_round),
        f"**Trivial action** (`/bin/true`, empty input root), {data['trivial_per_round']} measured "
        "on the --no-prefetch worker, ms: median (min–max). The worker's own time ends when "
        "the result is ready; destroying the sandbox and sending the report come after it and "
        "count as the engine's here.",
        _table(["part", "ms"], triv_rows),
        "![sandboxfs worker: lazy vs eager, and a trivial action](plots/worker.png)",
    ])


def targets(data: dict) -> list[str]:
    if "skipped" in data:
        return [f"{TARGET_PREFIX} (`sandboxfs worker`): **not measured** ({data['skipped']})."]
    t = data["targets"]
    by = {(r["variant"], r["fraction"]): r for r in data["rows"]}
    parts = []
    for v in ("no_prefetch", "prefetch"):
        parts.append(f"{VARIANT_LABELS[v]} {_ratio(by[(v, 5)]['ratio_e2e'])} eager at 5 % "
                     f"({'met' if t[f'{v}_5_met'] else 'not met'}), "
                     f"{_ratio(by[(v, 100)]['ratio_e2e'])} at 100 % (target ≤ {t['ratio_100']:g}x: "
                     f"{'met' if t[f'{v}_100_met'] else 'not met'})")
    return [f"{TARGET_PREFIX} (`sandboxfs worker`), {data['files']:,} new input files: "
            + "; ".join(parts) + f"; worker's own time for a trivial action "
            f"**{_num(data['trivial']['worker']['median'])} ms** (target ≤ {t['overhead_ms']:g} "
            f"ms: {'met' if t['overhead_met'] else 'not met'})."]


def plot(data: dict, path: Path) -> None:
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5), dpi=100,
                                      gridspec_kw={"width_ratios": [3, 2]})
    fractions = list(data["fractions"])
    by = {(r["variant"], r["fraction"]): r for r in data["rows"]}
    series = [("lazy, --no-prefetch", [by[("no_prefetch", f)]["lazy_e2e_ms"] for f in fractions], "tab:red"),
              ("lazy, prefetch", [by[("prefetch", f)]["lazy_e2e_ms"] for f in fractions], "tab:blue")]
    width = 0.27
    for i, (label, summaries, color) in enumerate(series):
        med = [s["median"] for s in summaries]
        err = [[m - s["min"] for m, s in zip(med, summaries)], [s["max"] - m for m, s in zip(med, summaries)]]
        xs = [k + (i - 1) * width for k in range(len(fractions))]
        bars = left.bar(xs, med, width, yerr=err, capsize=3, color=color, label=label)
        left.bar_label(bars, labels=[_num(m, 0) for m in med], fontsize=7, padding=2)
    eager = [by[("prefetch", f)]["eager_with_engine_ms"] for f in fractions]
    local = [by[("prefetch", f)]["eager_local_ms"]["median"] for f in fractions]
    xs = [k + width for k in range(len(fractions))]
    bars = left.bar(xs, eager, width, color="tab:gray", label="eager + engine part")
    left.bar(xs, local, width, color="dimgray", label="eager, local part")
    left.bar_label(bars, labels=[_num(m, 0) for m in eager], fontsize=7, padding=2)
    left.set_xticks(range(len(fractions)), [f"{f} % read" for f in fractions])
    left.set_yscale("log")
    left.set_ylabel("ms per action, end to end (median, min–max; log)")
    left.set_title(f"{data['files']:,} new input files: lazy vs eager")
    left.legend(fontsize=8)
    triv = data["trivial"]
    labels = ["engine: send -> queued", "engine: queued -> lease assigned",
              "worker's own time", "engine: lease delivery + report (assigned -> reported, "
              "less the worker's own time)", "report processed -> client"]
    own = triv["worker"]["median"] or 0
    vals = [triv["to_queued"]["median"] or 0, triv["queued_to_start"]["median"] or 0, own,
            max(0.0, (triv["assigned_to_reported"]["median"] or 0) - own),
            triv["completed_to_client"]["median"] or 0]
    at = 0.0
    for label, v in zip(labels, vals):
        right.barh(["/bin/true"], [v], left=[at], label=f"{label} ({_num(v)} ms)")
        at += v
    right.axvline(sum(vals[:2]) + data["targets"]["overhead_ms"], color="tab:red", linestyle="--",
                  label=f"target: worker's own time ≤ {data['targets']['overhead_ms']:g} ms")
    right.set_xlabel("ms (medians stacked)")
    right.set_title(f"trivial action: end to end {_num(triv['e2e']['median'])} ms")
    right.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1)
    for ax in (left, right):
        ax.grid(True, alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
