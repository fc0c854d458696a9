"""The benchmark harness works end to end (tiny sizes, real mounts; no timing asserts),
and Ctrl-C leaves no mounts, processes or temp trees behind."""

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


@pytest.mark.fuse
@needs_fuse
def test_tiny_run_produces_every_scenario_and_report(tmp_path):
    import matplotlib  # noqa: F401  required, not skipped: `make test` installs the bench extra
    work = tmp_path / "work"
    proc = subprocess.run(_bench_argv(tmp_path, "--docs", str(tmp_path / "docs")),
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ETA" in proc.stderr
    [result_file] = (tmp_path / "out").glob("bench-tiny-*.json")
    results = json.loads(result_file.read_text())
    assert results["machine"]["cpus"]
    sc = results["scenarios"]
    assert set(sc) == {"setup", "actions", "io", "scale"}
    assert {r["strategy"] for r in sc["setup"]["rows"]} == {
        "symlink_py", "symlink_cp", "hardlink", "copy", "sandboxfs", "sandboxfs_prepared"}
    assert all(r["seconds"]["n"] == 2 for r in sc["setup"]["rows"])
    assert {r["strategy"] for r in sc["actions"]["rows"]} == {
        "in_place", "symlink_py", "symlink_cp", "hardlink", "sandboxfs", "sandboxfs_reuse"}
    assert sc["actions"]["outputs_identical"], sc["actions"]["mismatches"]
    assert set(sc["io"]["server_cpu_us_per_request"]) == {"sandboxfs", "sandboxfs_pyfuse3"}
    assert all(us > 0 for us in sc["io"]["server_cpu_us_per_request"].values())
    for row in sc["io"]["rows"]:
        assert set(row["layers"]) == {"native", "sandboxfs", "sandboxfs_pyfuse3", "bindfs"}
        assert all(v["n"] == 2 for v in row["layers"].values())
    assert sc["scale"]["memory"] and sc["scale"]["cycles"]["loaded"]["per_second"] > 0
    text = (tmp_path / "docs" / "benchmarks.md").read_text()
    for heading in ("## Targets", "## 1. Setup", "## 2. Actions", "## 3. I/O", "## 4. Scale"):
        assert heading in text
    for plot in ("setup.png", "actions.png", "io.png"):
        assert (tmp_path / "docs" / "plots" / plot).stat().st_size > 1000
    assert not _fuse_mounts_under(work)
    assert list(work.iterdir()) == []


@pytest.mark.fuse
@needs_fuse
def test_interrupt_cleans_up(tmp_path):
    work = tmp_path / "work"
    proc = subprocess.Popen(_bench_argv(tmp_path, "--only", "io,actions", "--no-report"),
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:  # interrupt in the middle of the I/O scenario: bindfs is up
            if line.startswith("[io"):
                break
        assert _fuse_mounts_under(work), "expected live mounts mid-run"
        proc.send_signal(signal.SIGINT)
        proc.stderr.read()
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 5
    while _fuse_mounts_under(work) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _fuse_mounts_under(work)
    assert list(work.iterdir()) == []
    assert not (tmp_path / "out").exists()
