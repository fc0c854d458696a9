"""The I/O scenario's part of docs/benchmarks.md (section 3, its target line) and
docs/plots/io.png; called from ``bench.report``, whose helpers it uses."""

from __future__ import annotations

from pathlib import Path

from bench.report import _num, _range, _ratio, _table

HEADING = "## 3. I/O: native vs sandboxfs vs bindfs"
TARGET_PREFIX = "- I/O at or better"
METRIC_LABELS = {
    "seq_read_first": "sequential read, first", "seq_read_repeat": "sequential re-read",
    "stat_first": "stat existing, first", "stat_repeat": "stat existing, repeated",
    "stat_missing_first": "stat missing, first", "stat_missing_repeat": "stat missing, repeated",
    "small_read_first": "open+read+close small file, first",
    "small_read_repeat": "open+read+close small file, repeated",
    "readdir_10k": "readdir of 10,000 entries", "seq_write": "sequential write (rw mapping)",
    "gcc_first": "gcc -c with 300 headers, first", "gcc_repeat": "gcc -c with 300 headers, repeated",
}
COLORS = {"native": "tab:gray", "sandboxfs": "tab:blue", "sandboxfs_no_open": "tab:green",
          "sandboxfs_pyfuse3": "tab:cyan", "bindfs": "tab:orange"}
# the plot's tick labels: the sandboxfs layers by transport
SHORT = {"sandboxfs": "kernel", "sandboxfs_files": "kernel, files", "sandboxfs_no_open": "no-open",
         "sandboxfs_no_open_files": "no-open, files", "sandboxfs_pyfuse3": "pyfuse3",
         "sandboxfs_pyfuse3_files": "pyfuse3, files"}
AT_OR_BETTER = 0.95  # 5% noise allowed


def _color(layer: str) -> str:
    return COLORS[layer.removesuffix("_files")]


def _verdict(ratio: float | None) -> str:
    return "–" if ratio is None else ("at or better" if ratio >= AT_OR_BETTER else "worse")


def _ratio_of(row: dict, key: str) -> float | None:
    return (row.get(key) or {}).get("median")


def section(data: dict, plots: Path) -> str:
    per_file = "sandboxfs_files" in data["layers"]
    rows = []
    for r in data["rows"]:
        ratio = _ratio_of(r, "sandboxfs_vs_bindfs")
        files = [_ratio(_ratio_of(r, "sandboxfs_files_vs_bindfs"))] if per_file else []
        rows.append([METRIC_LABELS[r["metric"]] + f" ({r['unit']}, {r['better']} is better)",
                     *(_range(r["layers"][l]) for l in data["layers"]),
                     _ratio(ratio), _verdict(ratio), *files])
    _plot(data, plots / "io.png")
    header = ["operation", *data["layers"], "sandboxfs vs bindfs", "verdict",
              *(["sandboxfs_files vs bindfs"] if per_file else [])]
    return "\n\n".join(part for part in [
        HEADING,
        "The same host directory seen natively, through sandboxfs (a read-only mapping, and a "
        "read-write one for the writes; `--ttl 60`) on our kernel transport (*sandboxfs*) and on "
        "pyfuse3 (*sandboxfs_pyfuse3*), on our kernel transport with `--no-open` "
        "(*sandboxfs_no_open*, where present), and through bindfs "
        f"(`-o {data['bindfs_options']}`). " + (_per_file_text(data) if per_file else "") +
        "Servers run on the last CPU, the measuring process on CPU 0. "
        "Fresh files each round: "
        "*first* = never looked at through that layer (host page cache warm), *repeated* = "
        "immediately again. Ratio = sandboxfs (kernel transport) vs bindfs per round, oriented "
        "so that > 1 means sandboxfs is better; *at or better* allows 5% noise.",
        _table(header, rows),
        _cpu_text(data),
        "![I/O per layer](plots/io.png)",
    ] if part)


def _per_file_text(data: dict) -> str:
    counts = [n for ns in data.get("per_file_mappings", {}).values() for n in ns]
    many = f" ({min(counts):,} mappings each)" if counts else ""
    return ("Each *_files* layer is the same mount with, every round, a sandbox that maps each "
            "input as its own read-only mapping at the same path (the big file, each small file, "
            "each gcc header and main.c, each entry of the listed directory)" + many +
            ", as a build tool maps declared inputs; writes still go to a read-write directory "
            "mapping; creating and destroying those sandboxes is not timed. Their big and small "
            "files are twins of the other layers' (a mount may answer one kernel inode per host "
            "file across its sandboxes, which would warm one layer with the other's reads), and "
            "the directory they list is new each round (the others list the same one every "
            "round). ")


def _cpu_text(data: dict) -> str:
    stat = data.get("stat_first_server_cpu")
    whole = data.get("server_cpu_us_per_request", {})
    less = (", less creating and destroying the per-file sandboxes"
            if "server_cpu_control_ms" in data else "")
    whole_line = ("Server CPU per FUSE request over the whole scenario (the server's CPU time "
                  f"from /proc{less}, over every request it counted; the big reads and writes "
                  "dominate it): " + ", ".join(
                      f"{name} {us:.1f} µs" for name, us in whole.items()) + ".") if whole else ""
    if not stat:
        return whole_line
    rows = [[layer, _range(v["own_us_per_lookup_rounds"]), _range(v["proc_us_per_lookup_rounds"]),
             f"{v['lookups']:,} in {len(v['per_round']['lookups'])} rounds"]
            for layer, v in stat.items()]
    return "\n\n".join([
        "Server CPU per request, in each layer's own *stat existing, first* phase (every stat "
        "of a new name is one LOOKUP), per round (median, min–max over the measured rounds):",
        _table(["layer", "server CPU µs per LOOKUP, own counter", "by /proc",
                "LOOKUPs counted"], rows),
        "*Own counter*: the serving thread's CPU from a request read to its reply written "
        "(`fuse_ops.server_cpu_us`; only our kernel transport keeps it: pyfuse3's counts "
        "requests, not their time, and bindfs counts nothing). *By /proc*: the CPU time of all "
        "the server's threads over the phase (their schedstat), so also the reads of the "
        "requests, the sleeps and wake-ups between them and whatever else the server did "
        "meanwhile; for bindfs over the stats plus one for their new directory (the LOOKUPs "
        "the sandboxfs counters show).",
        whole_line,
    ])


def targets(data: dict) -> list[str]:
    def tally(key: str) -> tuple[int, list[str]]:
        ratios = [(r, _ratio_of(r, key)) for r in data["rows"]]
        ok = [r for r, x in ratios if x is not None and x >= AT_OR_BETTER]
        return len(ok), [METRIC_LABELS[r["metric"]] for r, _ in ratios if r not in ok]

    good, bad = tally("sandboxfs_vs_bindfs")
    line = (f"- I/O at or better than bindfs: {good} of {len(data['rows'])} rows"
            + (f"; worse: {'; '.join(bad)}" if bad else ""))
    if "sandboxfs_files" in data["layers"]:
        good_files, _ = tally("sandboxfs_files_vs_bindfs")
        line += f" (one mapping per file: {good_files} of {len(data['rows'])})"
    return [line + "."]


def _plot(data: dict, path: Path) -> None:
    import matplotlib.pyplot as plt
    rows, layers = data["rows"], data["layers"]
    cols = 4
    fig, axes = plt.subplots((len(rows) + cols - 1) // cols, cols, figsize=(14, 11), dpi=100)
    for ax, r in zip(axes.flat, rows):
        vals = [r["layers"][l]["median"] or 0 for l in layers]
        bars = ax.bar(range(len(layers)), vals, color=[_color(l) for l in layers],
                      hatch=[("//" if l.endswith("_files") else "") for l in layers])
        ax.bar_label(bars, labels=[_num(v) for v in vals], fontsize=6)
        ax.margins(y=0.12)
        ax.set_title(METRIC_LABELS[r["metric"]].replace(", ", ",\n", 1), fontsize=9)
        ax.set_ylabel(f"{r['unit']} ({r['better']} is better)", fontsize=8)
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels([SHORT.get(l, l) for l in layers], rotation=60, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(rows):]:
        ax.set_visible(False)
    fig.suptitle("I/O through each layer (median; kernel, no-open, pyfuse3: sandboxfs; "
                 "hatched: one mapping per file)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
