"""The BuildGrid test harness (tests/engine.py) itself: it starts a real engine that
answers, restarts it on the same port, and leaves nothing behind."""

from __future__ import annotations

import subprocess
import textwrap

import pytest

from tests.engine import (
    BuildGrid,
    EngineUnavailable,
    PostgreSQL,
    buildgrid_python,
    pid_alive,
    port_accepts,
)

# Runs in BuildGrid's own venv (Python 3.13), with its generated stubs.
PROBE = textwrap.dedent(
    """
    import sys, grpc
    from buildgrid._protos.build.bazel.remote.execution.v2 import (
        remote_execution_pb2 as re, remote_execution_pb2_grpc as reg)
    ch = grpc.insecure_channel(sys.argv[1])
    caps = reg.CapabilitiesStub(ch).GetCapabilities(re.GetCapabilitiesRequest(instance_name=""), timeout=10)
    assert caps.execution_capabilities.exec_enabled, caps
    digest = re.Digest(hash="a" * 64, size_bytes=3)
    fm = reg.ContentAddressableStorageStub(ch).FindMissingBlobs(
        re.FindMissingBlobsRequest(instance_name="", blob_digests=[digest]), timeout=10)
    assert list(fm.missing_blob_digests) == [digest], fm
    print("ok")
    """
)


def probe(python, address):
    r = subprocess.run([str(python), "-c", PROBE, address], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr


def test_engine_answers_restarts_and_leaves_nothing(tmp_path):
    try:
        python = buildgrid_python()
    except EngineUnavailable as e:
        pytest.skip(str(e))

    with PostgreSQL() as pg:
        pg_dir, pg_port, pg_pid = pg.dir, pg.port, pg.pid
        assert pg_dir.is_dir() and pid_alive(pg_pid) and port_accepts(pg_port)
        with BuildGrid(pg, tmp_path, keepalive_timeout=15) as bg:
            bg_dir, bg_port = bg.dir, bg.port
            assert bg.endpoint == f"grpc://127.0.0.1:{bg_port}"
            probe(python, bg.address)

            first = bg.pid
            bg.stop()
            assert not pid_alive(first) and not port_accepts(bg_port)
            bg.start()
            assert bg.port == bg_port and bg.pid != first
            probe(python, bg.address)
            pids = list(bg.pids)
            assert len(pids) == 2
            assert "Received signal 15" in bg.log_text()

    assert not [p for p in pids if pid_alive(p)]
    assert not pid_alive(pg_pid)
    assert not bg_dir.exists()
    assert not pg_dir.exists()
    assert not port_accepts(bg_port)
    assert not port_accepts(pg_port)
