"""The benchmark harness works end to end (tiny sizes, real mounts, a real Bazel; no timing
asserts), and Ctrl-C leaves no mounts, processes or temp trees behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.bazel_tool import BINARY_ENV, BazelUnavailable, bazel_binary
from bench.cli import EXIT_SKIPPED
from bench.measure import paired_ratio, rounds

ROOT = Path(__file__).resolve().parent.parent

needs_fuse = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse") or shutil.which("bindfs") is None,
    reason="the benchmark mounts sandboxfs and bindfs: needs root, /dev/fuse and bindfs")


def test_rounds_rotate_and_flag_warmup():
    got = list(rounds(["a", "b", "c"], warmup=1, repeats=3))
    assert [warm for _, warm, _ in got] == [True, False, False, False]
    assert [order[0] for _, _, order in got] == ["a", "b", "c", "a"]


def test_paired_ratio_pairs_rounds():
    assert paired_ratio([2.0, 9.0, 4.0], [1.0, 3.0, 1.0])["median"] == 3.0


def _bench_argv(tmp_path: Path, *args: str) -> list[str]:
    """``python -m bench --tiny`` with its output and work tree under tmp_path."""
    (tmp_path / "work").mkdir()
    return [sys.executable, "-m", "bench", "--tiny", "--out", str(tmp_path / "out"),
            "--workdir", str(tmp_path / "work"), *args]


def _fuse_mounts_under(path: Path) -> list[str]:
    with open("/proc/mounts") as f:
        return [line for line in f if str(path) in line]


def _processes_under(path: Path) -> list[str]:
    """Command lines of live processes with an argument below ``path``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(str(path) + "/" in a for a in args):
            found.append(" ".join(args))
    return found


def _interrupt(tmp_path: Path, args: list[str], at_line, then) -> int:
    """Run a tiny bench with ``args``; at the first progress line ``at_line`` accepts, call
    ``then`` (which waits or checks), send SIGINT, and return the exit status."""
    proc = subprocess.Popen(_bench_argv(tmp_path, *args, "--no-report"), cwd=ROOT,
                            stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if at_line(line):
                break
        then()
        proc.send_signal(signal.SIGINT)
        proc.stderr.read()
        return proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _bazel_expected() -> bool:
    """Whether the bench will find (or install) Bazel, so the bazel scenario must not skip."""
    try:
        bazel_binary(install=False)
        return True
    except BazelUnavailable:
        return shutil.which("npm") is not None and not os.environ.get(BINARY_ENV)


@pytest.mark.fuse
@needs_fuse
def test_tiny_run_produces_every_scenario_and_report(tmp_path):
    import matplotlib  # noqa: F401  required, not skipped: `make test` installs the bench extra
    work = tmp_path / "work"
    with_bazel = _bazel_expected()
    proc = subprocess.run(_bench_argv(tmp_path, "--docs", str(tmp_path / "docs")),
                          cwd=ROOT, capture_output=True, text=True, timeout=480, check=False)
    assert proc.returncode == (0 if with_bazel else EXIT_SKIPPED), proc.stderr[-3000:]
    assert "ETA" in proc.stderr
    [result_file] = (tmp_path / "out").glob("bench-tiny-*.json")
    results = json.loads(result_file.read_text())
    assert results["machine"]["cpus"]
    sc = results["scenarios"]
    assert set(sc) == {"setup", "actions", "io", "scale", "bazel", "backend", "worker"}
    assert {r["strategy"] for r in sc["setup"]["rows"]} == {
        "symlink_py", "symlink_cp", "hardlink", "copy", "sandboxfs", "sandboxfs_prepared"}
    assert all(r["seconds"]["n"] == 2 for r in sc["setup"]["rows"])
    assert {r["strategy"] for r in sc["actions"]["rows"]} == {
        "in_place", "symlink_py", "symlink_cp", "hardlink", "sandboxfs", "sandboxfs_reuse",
        "sandboxfs_own_inodes"}
    assert sc["actions"]["outputs_identical"], sc["actions"]["mismatches"]
    _check_io(sc["io"], results["config"])
    assert sc["scale"]["memory"] and sc["scale"]["cycles"]["loaded"]["per_second"] > 0
    backend = sc["backend"]
    assert backend["tree"]["serve"]["first_push_create_ms"]["n"] == 2
    assert backend["tree"]["serve"]["known_create_ms"]["n"] == 2 * backend["tree"]["known_per_round"]
    assert set(backend["tree"]["forests"]) == {"symlink_py", "symlink_cp", "hardlink", "sandboxfs"}
    assert [r["strategy"] for r in backend["actions"]["rows"]] == [
        "native", "hardlink", "sandboxfs", "serve"]
    assert backend["actions"]["outputs_identical"], backend["actions"]["mismatches"]
    assert backend["actions"]["serve_slots_used"] == 1
    worker = sc["worker"]
    assert "skipped" not in worker, worker
    assert [(r["variant"], r["fraction"]) for r in worker["rows"]] == [
        (v, f) for v in ("no_prefetch", "prefetch") for f in (5, 50, 100)]
    assert all(r["lazy_e2e_ms"]["n"] == 2 and r["eager_local_ms"]["n"] == 2 for r in worker["rows"])
    assert worker["trivial"]["worker"]["n"] == 2 * 3
    text = (tmp_path / "docs" / "benchmarks.md").read_text()
    assert "| sandboxfs_no_open_files |" in text and "server CPU µs per LOOKUP" in text
    for heading in ("## Targets", "## 1. Setup", "## 2. Actions", "## 3. I/O", "## 4. Scale",
                    "## 5. Bazel", "## 6. Sandbox backend", "- Backend (`sandboxfs serve`)",
                    "## 7. Remote worker", "- Worker (`sandboxfs worker`)"):
        assert heading in text
    plots = ["setup.png", "actions.png", "io.png", "backend.png", "worker.png"]
    bazel = sc["bazel"]
    if with_bazel:
        assert "skipped" not in bazel, bazel
        assert [r["strategy"] for r in bazel["rows"]] == [
            "local", "processwrapper", "linux_sandbox", "sandboxfs"]
        assert all(r["wall_seconds"]["n"] == 1 for r in bazel["rows"])
        assert bazel["outputs_identical"], bazel["mismatches"]
        server = {r["strategy"]: r for r in bazel["rows"]}["sandboxfs"]["server"]
        assert server["creates"] == bazel["actions"] + 1 and server["destroys"] == bazel["actions"]
        fuse = bazel["profiled_build"]["server_profile"]["fuse"]
        assert fuse["lookup"]["calls"] > 0 and fuse["open"]["calls"] > 0
        plots.append("bazel.png")
    else:
        assert bazel["skipped"] and "**Skipped: nothing was measured.**" in text
        assert "Bazel 2.1 clean build: **not measured**" in text
        assert "SKIPPED" in proc.stderr
    for plot in plots:
        assert (tmp_path / "docs" / "plots" / plot).stat().st_size > 1000
    assert not _fuse_mounts_under(work)
    assert _processes_under(work) == []
    assert list(work.iterdir()) == []


IO_LAYERS = ["native", "sandboxfs", "sandboxfs_files", "sandboxfs_no_open",
             "sandboxfs_no_open_files", "sandboxfs_pyfuse3", "sandboxfs_pyfuse3_files", "bindfs"]
OWN_COUNTER = {"sandboxfs", "sandboxfs_files", "sandboxfs_no_open", "sandboxfs_no_open_files"}


def _check_io(io: dict, config: dict) -> None:
    """The I/O scenario's layers, its per-file sandboxes and its server CPU figures."""
    assert io["layers"] == IO_LAYERS
    for row in io["rows"]:
        assert list(row["layers"]) == IO_LAYERS
        assert all(v["n"] == 2 for v in row["layers"].values())
        assert row["sandboxfs_files_vs_bindfs"]["n"] == 2
    # one mapping per file: the big file, the small ones, gcc's 300 headers and main.c, the
    # listed entries, and the read-write directory; every round, on each of the three mounts
    per_file = config["io_small_files"] + config["io_dir_entries"] + 303
    assert io["per_file_mappings"] == {l: [per_file] * 3 for l in IO_LAYERS if l.endswith("_files")}
    assert set(io["server_cpu_us_per_request"]) == {"sandboxfs", "sandboxfs_no_open",
                                                    "sandboxfs_pyfuse3"}
    assert all(us > 0 for us in io["server_cpu_us_per_request"].values())
    stat = io["stat_first_server_cpu"]
    assert list(stat) == [l for l in IO_LAYERS if l != "native"]
    for layer, cpu in stat.items():
        lookups = cpu["per_round"]["lookups"]
        assert len(lookups) == 2, layer
        # each stat of a new name is one LOOKUP, and the new directory one more
        assert all(config["io_small_files"] <= n <= config["io_small_files"] + 2
                   for n in lookups), (layer, lookups)
        assert cpu["lookups"] == sum(lookups) and cpu["requests"] >= cpu["lookups"]
        assert 0 < cpu["proc_us_per_lookup"] < 10_000, (layer, cpu)
        if layer in OWN_COUNTER:
            # the serving thread's time is part of the process's, over a wider window
            assert 0 < cpu["own_us_per_lookup"] <= cpu["proc_us_per_lookup"] * 1.05, (layer, cpu)
            assert cpu["own_us_per_lookup_rounds"]["n"] == 2
        else:  # pyfuse3 and bindfs keep no CPU counter of their own
            assert cpu["own_us_per_lookup"] is None, (layer, cpu)


@pytest.mark.fuse
@needs_fuse
def test_interrupt_cleans_up(tmp_path):
    work = tmp_path / "work"

    def bindfs_is_up() -> None:  # the I/O scenario has started: bindfs is mounted
        assert _fuse_mounts_under(work), "expected live mounts mid-run"

    status = _interrupt(tmp_path, ["--only", "io,actions"], lambda line: line.startswith("[io"),
                        bindfs_is_up)
    assert status == 130
    deadline = time.monotonic() + 5
    while _fuse_mounts_under(work) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _fuse_mounts_under(work)
    assert list(work.iterdir()) == []
    assert not (tmp_path / "out").exists()


@pytest.mark.fuse
@needs_fuse
def test_interrupt_during_a_sandboxfs_bazel_build_cleans_up(tmp_path):
    if not _bazel_expected():
        pytest.skip("no Bazel here, and no npm to install it")
    work = tmp_path / "work"

    def sandboxfs_is_mounted() -> None:  # Bazel has started the sandboxfs of its build
        deadline = time.monotonic() + 60
        while not any("fuse" in m for m in _fuse_mounts_under(work)):
            assert time.monotonic() < deadline, "no sandboxfs mount came up"
            time.sleep(0.02)

    # Tiny round 1 runs sandboxfs last: after linux_sandbox's line, its build is next.
    status = _interrupt(tmp_path, ["--only", "bazel"],
                        lambda line: line.startswith("[bazel") and "linux_sandbox" in line,
                        sandboxfs_is_mounted)
    assert status == 130
    assert not _fuse_mounts_under(work)
    assert _processes_under(work) == []  # Bazel's server, sandboxfs and the relays included
    assert list(work.iterdir()) == []
