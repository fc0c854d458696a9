"""``sandboxfs worker --confine`` against a real BuildGrid: each action in a root of its own.

A worker of its own (so that no unconfined worker takes the lease) runs an
action that looks around: its inputs and the system's tools are there, its
output comes back, and what lies outside -- a file of this test's, the
worker's own store, /etc's secrets, the host's processes and network -- is
not.
"""

from __future__ import annotations

import os
import time

import pytest

from bench.remote_client import RemoteClient
from tests.engine import BuildGrid, EngineUnavailable, PostgreSQL

from .worker_harness import WorkerProcess

pytestmark = pytest.mark.fuse

OK, DEADLINE_EXCEEDED = 0, 4
SCRIPT = b"""#!/bin/sh
for path in $(cat probes.txt); do
  if [ -e "$path" ]; then echo "visible $path"; else echo "hidden $path"; fi
done
echo "processes $(ls /proc | grep -c '^[0-9]')"
echo "interfaces $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ' ')"
echo "cwd $(pwd)"
cat lib/data.txt
mkdir -p out && echo written > out/result.txt
"""


@pytest.fixture(scope="module")
def confined(tmp_path_factory):
    try:
        with PostgreSQL() as pg, BuildGrid(pg, tmp_path_factory.mktemp("engine"),
                                           keepalive_timeout=8, expiry_interval=1) as grid:
            state = tmp_path_factory.mktemp("w") / "state"
            with WorkerProcess(grid.endpoint, state, name="confined",
                               extra=("--confine",)) as worker:
                client = RemoteClient(grid.endpoint)
                try:
                    yield worker, client
                finally:
                    client.close()
    except EngineUnavailable as exc:
        pytest.fail(f"BuildGrid could not be started: {exc}")


def test_a_confined_action_sees_its_inputs_and_the_system_and_nothing_else(confined, tmp_path):
    worker, client = confined
    secret = tmp_path / "secret.txt"
    secret.write_text("not for actions\n")
    probes = [str(secret), str(worker.state_dir / "store"), "/usr/bin/env", "/bin/sh",
              "/etc/passwd"]
    hidden_etc = "/etc/shadow" if os.path.exists("/etc/shadow") else None
    if hidden_etc:
        probes.append(hidden_etc)
    inputs = {"tool/run.sh": (SCRIPT, True), "lib/data.txt": b"the input\n",
              "probes.txt": "\n".join(probes).encode() + b"\n"}
    action = client.action(["./tool/run.sh"], inputs, output_files=("out/result.txt",),
                           salt=os.urandom(8))
    response = client.execute(action)
    assert response.status.code == OK, response.status.message
    stderr = client.read(response.result.stderr_digest).decode()
    assert response.result.exit_code == 0, stderr
    lines = client.read(response.result.stdout_digest).decode().splitlines()
    seen = {line.split(" ", 1)[1]: line.split(" ", 1)[0] for line in lines[:len(probes)]}
    assert seen[str(secret)] == "hidden", "a host file outside the sandbox was visible"
    assert seen[str(worker.state_dir / "store")] == "hidden", "the worker's store was visible"
    for tool in ("/usr/bin/env", "/bin/sh", "/etc/passwd"):
        assert seen[tool] == "visible", f"{tool} is missing from the confined root"
    if hidden_etc:
        assert seen[hidden_etc] == "hidden"
    rest = dict(line.split(" ", 1) for line in lines[len(probes):len(probes) + 3])
    # PID 1, the script, its subshell, ls and grep: the host has hundreds
    assert int(rest["processes"]) <= 8, "the host's processes are visible"
    assert rest["interfaces"].split() == ["lo"], rest["interfaces"]
    assert rest["cwd"].startswith(str(worker.state_dir / "mnt")), rest["cwd"]
    assert lines[len(probes) + 3] == "the input"
    (out,) = response.result.output_files
    assert out.path == "out/result.txt"
    assert client.read(out.digest) == b"written\n"


def test_a_confined_action_past_its_timeout_is_killed_with_its_namespace(confined):
    _worker, client = confined
    started = time.monotonic()
    action = client.action(["/bin/sh", "-c", "sleep 60 & sleep 60"], {}, timeout=2,
                           salt=os.urandom(8))
    response = client.execute(action)
    assert response.status.code == DEADLINE_EXCEEDED, response.status
    assert time.monotonic() - started < 30, "the confined action outlived its timeout"
    assert not _sleepers(), "a process of the killed namespace is still running"


def _sleepers() -> list[int]:
    """PIDs of ``sleep 60`` processes still alive (zombies count as gone)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if cmdline == b"sleep\x0060\x00" and state != "Z":
            found.append(int(pid))
    return found
