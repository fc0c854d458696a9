"""``sandboxfs worker`` against a real BuildGrid (with its PostgreSQL), started here.

A REAPI client (``bench.remote_client``) uploads actions and executes them
as a build tool would; the worker, a real subprocess with a real mount,
takes the leases.  What is checked: the action ran in a FUSE sandbox of
its input root, read only what it opened (the rest never came to the
worker; misses in order read a few files after them ahead), a
second run of its Command got those files prefetched, its outputs and logs
came back as REAPI describes them; an undeclared input is absent; a missing or corrupted CAS blob fails the
action with a status naming it and nothing wrong is served; the timeout
kills the action; actions running side by side never see each other's
outputs; the worker rides out an engine restart; a killed worker leaves
its lease to the engine, which gives it to the worker once restarted, with
nothing left mounted; several workers share the engine's work.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from bench.remote_client import RemoteClient
from sandboxfs.backend.proto import remote_execution_pb2 as re
from tests.engine import BuildGrid, EngineUnavailable, PostgreSQL

from .worker_harness import WorkerProcess, mounted

pytestmark = pytest.mark.fuse

KEEPALIVE = 8  # seconds a silent bot session lives: the killed-worker test waits this long
OK, DEADLINE_EXCEEDED, FAILED_PRECONDITION, DATA_LOSS = 0, 4, 9, 15


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    try:
        with PostgreSQL() as pg, BuildGrid(pg, tmp_path_factory.mktemp("engine"),
                                           keepalive_timeout=KEEPALIVE,
                                           expiry_interval=1) as grid:
            yield grid
    except EngineUnavailable as exc:
        pytest.fail(f"BuildGrid could not be started: {exc}")


@pytest.fixture(scope="module")
def worker(engine, tmp_path_factory):
    with WorkerProcess(engine.endpoint, tmp_path_factory.mktemp("w") / "state",
                       name="main", concurrency=2) as process:
        yield process


@pytest.fixture
def client(engine):
    remote = RemoteClient(engine.endpoint)
    yield remote
    remote.close()


def _salt() -> bytes:
    return os.urandom(8)


def _stdout(client: RemoteClient, response: re.ExecuteResponse) -> bytes:
    return client.read(response.result.stdout_digest)


def _store_files(worker: WorkerProcess) -> set[str]:
    cas = worker.state_dir / "store" / "cas"
    return {name for sub in os.listdir(cas) for name in os.listdir(cas / sub)}


def test_an_action_runs_in_a_fuse_sandbox_and_fetches_only_what_it_reads(worker, client):
    inputs = {f"lib/file{i:03}.txt": f"content {i} {_salt().hex()}\n".encode()
              for i in range(200)}
    inputs["tool/run.sh"] = (b"#!/bin/sh\ncat lib/file007.txt\nstat -f -c %T .\n", True)
    action = client.action(["./tool/run.sh"], inputs, salt=_salt())
    response = client.execute(action)
    assert response.status.code == OK, response.status.message
    assert response.result.exit_code == 0, client.read(response.result.stderr_digest)
    lines = _stdout(client, response).decode().splitlines()
    assert lines[0] == inputs["lib/file007.txt"].decode().strip()
    assert lines[1] == "fuseblk" or lines[1].startswith("fuse"), lines
    held = _store_files(worker)
    wanted = {hashlib.sha256(data).hexdigest() for data in
              (inputs["lib/file007.txt"], inputs["tool/run.sh"][0])}
    others = {hashlib.sha256(data).hexdigest() for path, data in inputs.items()
              if path.startswith("lib/") and path != "lib/file007.txt"}
    assert wanted <= held
    assert not others & held, "files the action never opened were fetched"
    assert response.result.execution_metadata.worker == "main"


def test_a_command_run_again_gets_what_it_read_last_time_prefetched(worker, client):
    """The second run of one Command, on new content: the files the first run read come
    into the store by themselves while the command waits (it looks at the store, not
    through the mount), with the right bytes; the files it never read stay remote."""
    script = (b"#!/bin/sh\n"
              b"for blob in $(cat expect.txt); do\n"  # store paths of what should arrive
              b"  n=0; while [ ! -e \"$blob\" ] && [ $n -lt 200 ]; do sleep 0.05; n=$((n+1)); done\n"
              b"  [ -e \"$blob\" ] && echo arrived || echo missing\n"
              b"done\n"
              b"cat lib/file007.txt lib/file011.txt\n")
    salt = _salt()  # the same Command both times: the history is kept per Command digest

    def inputs(expect: bytes) -> dict:
        files = {f"lib/file{i:03}.txt": f"content {i} {_salt().hex()}\n".encode()
                 for i in range(100)}
        files["tool/run.sh"] = (script, True)
        files["expect.txt"] = expect
        return files

    first = inputs(b"")
    response = client.execute(client.action(["./tool/run.sh"], first, salt=salt))
    assert response.status.code == OK and response.result.exit_code == 0, response
    second = inputs(b"")
    cas = worker.state_dir / "store" / "cas"
    read = [hashlib.sha256(second[f"lib/file{i:03}.txt"]).hexdigest() for i in (7, 11)]
    second["expect.txt"] = "".join(f"{cas / h[:2] / h}\n" for h in read).encode()
    response = client.execute(client.action(["./tool/run.sh"], second, salt=salt))
    assert response.status.code == OK, response.status.message
    assert response.result.exit_code == 0, client.read(response.result.stderr_digest)
    out = _stdout(client, response)
    assert out == b"arrived\narrived\n" + second["lib/file007.txt"] + second["lib/file011.txt"]
    unread = {hashlib.sha256(data).hexdigest() for path, data in second.items()
              if path.startswith("lib/") and path not in ("lib/file007.txt", "lib/file011.txt")}
    assert not unread & _store_files(worker), "files the first run never read were prefetched"


def test_misses_in_order_read_ahead_the_files_after_them_and_a_jump_does_not(worker, client):
    """First run of a Command (nothing to prefetch): the first file opened in a directory
    comes alone, the next one in order brings the three missing files after it, and a file
    opened out of order comes alone again."""
    files = {f"lib/f{i:02}.txt": f"file {i} {_salt().hex()}\n".encode() for i in range(30)}
    cas = worker.state_dir / "store" / "cas"
    hashes = {path: hashlib.sha256(data).hexdigest() for path, data in files.items()}
    blob = {path: cas / h[:2] / h for path, h in hashes.items()}
    script = (b"#!/bin/sh\ncat lib/f00.txt lib/f01.txt lib/f10.txt > /dev/null\n"
              b"for p in $(cat probes.txt); do [ -e \"$p\" ] && echo held || echo remote; done\n")
    inputs = {**files, "tool/run.sh": (script, True),
              "probes.txt": "".join(f"{blob[f'lib/f{i:02}.txt']}\n"
                                    for i in (2, 3, 4, 5, 11)).encode()}
    response = client.execute(client.action(["./tool/run.sh"], inputs, salt=_salt()))
    assert response.status.code == OK and response.result.exit_code == 0, response
    assert _stdout(client, response).split() == [b"held", b"held", b"held", b"remote",
                                                  b"remote"]


def test_outputs_come_back_as_files_trees_and_symlinks(client):
    script = (b"#!/bin/sh\nset -e\nmkdir -p out/tree/sub\necho one > out/a.txt\n"
              b"printf 'x' > out/tree/sub/x\nprintf '#!/bin/sh\\n' > out/tree/run\n"
              b"chmod +x out/tree/run\nln -s a.txt out/link\necho to-stderr >&2\n")
    action = client.action(["./make.sh"], {"make.sh": (script, True)},
                           output_files=("out/a.txt", "out/link", "out/absent"),
                           output_directories=("out/tree",), salt=_salt())
    response = client.execute(action)
    assert response.status.code == OK, response.status.message
    result = response.result
    assert result.exit_code == 0, client.read(result.stderr_digest)
    assert client.read(result.stderr_digest) == b"to-stderr\n"
    files = {f.path: f for f in result.output_files}
    assert set(files) == {"out/a.txt"}
    assert client.read(files["out/a.txt"].digest) == b"one\n"
    assert [(s.path, s.target) for s in result.output_symlinks] == [("out/link", "a.txt")]
    (tree_out,) = result.output_directories
    assert tree_out.path == "out/tree"
    tree = re.Tree.FromString(client.read(tree_out.tree_digest))
    assert [(f.name, f.is_executable) for f in tree.root.files] == [("run", True)]
    assert [d.name for d in tree.root.directories] == ["sub"]
    (sub,) = tree.children
    assert [(f.name, client.read(f.digest)) for f in sub.files] == [("x", b"x")]


def test_an_undeclared_input_is_absent(client, tmp_path):
    secret = tmp_path / "undeclared.txt"
    secret.write_text("host file")
    action = client.action(["/bin/sh", "-c", "cat declared.txt && cat undeclared.txt"],
                           {"declared.txt": b"yes\n"}, salt=_salt())
    response = client.execute(action)
    assert response.status.code == OK
    assert response.result.exit_code != 0
    assert _stdout(client, response) == b"yes\n"
    assert b"undeclared.txt" in client.read(response.result.stderr_digest)


def test_a_blob_missing_from_the_cas_fails_the_action_and_names_it(client):
    gone = b"never uploaded " + _salt()
    action = client.action(["/bin/cat", "in/gone.txt"], {"in/gone.txt": gone, "in/ok": b"ok"},
                           salt=_salt(), upload=False)
    blobs = dict(client.last_blobs)
    gone_hash = hashlib.sha256(gone).hexdigest()
    del blobs[gone_hash]
    client.engine.upload(blobs)
    response = client.execute(action)
    assert response.status.code == FAILED_PRECONDITION, response.status
    assert gone_hash in response.status.message


def test_wrong_bytes_from_the_cas_are_never_served(engine, client):
    good = b"the right bytes " + _salt()
    good_hash = hashlib.sha256(good).hexdigest()
    action = client.action(["/bin/cat", "in/file"], {"in/file": good}, salt=_salt())
    # BuildGrid's disk storage keeps blob H as objects/H[:2]/H[2:].
    paths = [Path(root) / name for root, _dirs, names in os.walk(engine.cas)
             for name in names if Path(root).name + name == good_hash]
    assert paths, f"blob {good_hash} not found under {engine.cas}"
    for path in paths:
        path.write_bytes(b"tampered" + good[8:])
    response = client.execute(action)
    assert response.status.code == DATA_LOSS, response.status
    assert good_hash in response.status.message
    assert not response.result.stdout_digest.size_bytes or b"tampered" not in _stdout(
        client, response)


def test_the_timeout_kills_the_action(client):
    action = client.action(["/bin/sh", "-c", "echo started; sleep 60; echo late"], {"x": b""},
                           timeout=1.5, salt=_salt())
    started = time.monotonic()
    response = client.execute(action)
    assert time.monotonic() - started < 30
    assert response.status.code == DEADLINE_EXCEEDED, response.status
    assert _stdout(client, response) == b"started\n"


def test_actions_side_by_side_never_see_each_others_outputs(client):
    script = "mkdir -p out && echo {name} > out/{name} && sleep 1.5 && ls out"
    responses = {}

    def run(name: str) -> None:
        action = client.action(["/bin/sh", "-c", script.format(name=name)], {"in": b"x"},
                               output_files=(f"out/{name}", "out/seen"), salt=_salt())
        responses[name] = client.execute(action)

    threads = [threading.Thread(target=run, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for name, response in responses.items():
        assert response.status.code == OK, response.status
        assert _stdout(client, response) == f"{name}\n".encode()
        (output,) = response.result.output_files
        assert (output.path, client.read(output.digest)) == (f"out/{name}", f"{name}\n".encode())
    assert set(responses) == {"a", "b"}


def test_the_worker_rides_out_an_engine_restart(engine, worker, client):
    # An action in flight while the engine goes away: the worker keeps running it and
    # keeps retrying its updates; once the engine is back it takes new work.
    busy = client.action(["/bin/sh", "-c", "sleep 3; echo done"], {"x": b""}, salt=_salt())
    thread = threading.Thread(target=lambda: _ignore_errors(client.execute, busy, 60))
    thread.start()
    time.sleep(1)
    engine.stop()
    time.sleep(2)
    engine.start()
    thread.join(90)
    fresh = RemoteClient(engine.endpoint)
    try:
        action = fresh.action(["/bin/echo", "after restart"], {"x": b""}, salt=_salt())
        response = fresh.execute(action, timeout=120)
        assert response.status.code == OK, response.status
        assert fresh.read(response.result.stdout_digest) == b"after restart\n"
    finally:
        fresh.close()
    assert worker.proc.poll() is None, worker.log_text()


def _ignore_errors(call, *args) -> None:
    try:
        call(*args)
    except Exception:  # the engine's restart breaks the client's stream: expected
        pass


def test_a_cancelled_operation_kills_its_action(worker, client, tmp_path):
    marker = tmp_path / "cancelled"
    marker.mkdir()
    action = client.action(["/bin/sh", "-c", f"touch {marker}/started; sleep 30; "
                            f"touch {marker}/finished"], {"x": b""}, salt=_salt())
    names = []
    thread = threading.Thread(target=lambda: _ignore_errors(
        client.execute, action, 120, names.append))
    thread.start()
    deadline = time.monotonic() + 60
    while not (marker / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert names and (marker / "started").exists(), worker.log_text()
    client.cancel(names[0])
    deadline = time.monotonic() + 30
    while "cancelled by the engine" not in worker.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "cancelled by the engine" in worker.log_text()
    thread.join(60)
    time.sleep(0.5)
    assert not (marker / "finished").exists()
    # The killed action's sandbox is gone and the worker takes the next action.
    response = client.execute(client.action(["/bin/echo", "next"], {"x": b""}, salt=_salt()))
    assert response.status.code == OK and _stdout(client, response) == b"next\n"


def test_a_killed_worker_leaves_nothing_mounted_and_its_lease_runs_again(tmp_path):
    # An engine of its own: no other worker may take the lease.
    with PostgreSQL() as pg, BuildGrid(pg, tmp_path / "engine", keepalive_timeout=KEEPALIVE,
                                       expiry_interval=1) as engine:
        _kill_mid_action(engine, tmp_path)


def _kill_mid_action(engine: BuildGrid, tmp_path: Path) -> None:
    state = tmp_path / "killed"
    client = RemoteClient(engine.endpoint)
    marker = tmp_path / "runs"
    marker.mkdir()
    try:
        with WorkerProcess(engine.endpoint, state, name="killed") as doomed:
            action = client.action(
                ["/bin/sh", "-c", f"touch {marker}/$$; sleep 3; echo finished"], {"x": b""},
                salt=_salt())
            responses = []
            thread = threading.Thread(target=lambda: responses.append(
                client.execute(action, timeout=180)))
            thread.start()
            deadline = time.monotonic() + 60
            while not os.listdir(marker) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert os.listdir(marker), f"the action never started:\n{doomed.log_text()}"
            doomed.kill()
            assert mounted(doomed.mount_point), "a killed worker leaves its dead mount"
            with WorkerProcess(engine.endpoint, state, name="killed") as restarted:
                assert mounted(restarted.mount_point)
                thread.join(180)
                assert responses, "the action never finished"
                (response,) = responses
                assert response.status.code == OK, response.status
                assert _stdout(client, response) == b"finished\n"
            assert not mounted(state / "mnt")
            assert len(os.listdir(marker)) == 2, "the lease should have run exactly twice"
    finally:
        client.close()


def test_several_workers_share_the_engine(engine, worker, tmp_path, client):
    extra = [WorkerProcess(engine.endpoint, tmp_path / f"w{i}", name=f"extra{i}")
             for i in range(2)]
    try:
        for process in extra:
            process.start()
        responses = []
        lock = threading.Lock()

        def run(i: int) -> None:
            action = client.action(["/bin/sh", "-c", "sleep 1; echo $0", str(i)], {"x": b""},
                                   salt=_salt())
            response = client.execute(action, timeout=180)
            with lock:
                responses.append(response)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(180)
        assert len(responses) == 8
        assert all(r.status.code == OK and r.result.exit_code == 0 for r in responses)
        workers = {r.result.execution_metadata.worker for r in responses}
        assert len(workers) >= 2, workers
    finally:
        for process in extra:
            process.close()
        for process in extra:
            assert not mounted(process.mount_point)
