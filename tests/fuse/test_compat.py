"""The sandboxfs 0.2 front end end to end: the real binary, a real mount, JSON on pipes and FIFOs.

Each test starts ``python -m sandboxfs [0.2 flags] MOUNT_POINT`` itself (the
``sandboxfs_mount`` fixture runs the ``mount`` subcommand) through the
``sandboxfs02`` fixture: a ``harness.Mount`` with pipes, whose teardown ends
every child by PID (stdin closed, SIGTERM, ``fusermount3 -u -z``, SIGKILL)
and checks that nothing is left mounted.

Covered: command-line mappings; create/destroy through a pipe; multi-line
objects, whitespace and the short aliases; prefixes; each recoverable error
string; a CreateSandbox for a live id; the fatal unparsable request; end of
input; a FIFO as input (the mount comes up before any writer) and as output;
an output file; ``--reconfig_threads`` ordering; an output closed by the
client; SIGTERM/SIGINT/SIGHUP, also a few milliseconds after start;
``--cpu_profile``; and a bad mount point.
"""

from __future__ import annotations

import json
import os
import pstats
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import pytest

from .harness import START_TIMEOUT, STOP_TIMEOUT, Mount, is_mounted, stop_all

RESPONSE_TIMEOUT = 15.0


class Sandboxfs02(Mount):
    """One ``sandboxfs`` child on the 0.2 command line, with pipes; stopped as any Mount."""

    def __init__(self, mount_point: Path, args: Sequence[str], log_path: Path,
                 stdin: Any = subprocess.PIPE, stdout: Any = subprocess.PIPE,
                 pump: bool = True) -> None:
        super().__init__(mount_point, args, log_path)
        self.command = [sys.executable, "-m", "sandboxfs", *self.args, str(self.mount_point)]
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command, stdin=stdin, stdout=stdout, stderr=log)
        self._lines: queue.Queue[bytes] = queue.Queue()
        # A thread reads responses so that tests can wait with a timeout.  Without
        # it (pump=False) the test may close stdout: closing a file another
        # thread reads from would block.
        if self.proc.stdout is not None and pump:
            threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()

    def _pump(self, stream) -> None:
        for line in iter(stream.readline, b""):
            self._lines.put(line)
        self._lines.put(b"")  # EOF

    def wait_mounted(self) -> "Sandboxfs02":
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"sandboxfs exited with {self.proc.returncode}:\n{self.log()}")
            if is_mounted(self.mount_point):
                return self
            time.sleep(0.02)
        raise AssertionError(f"sandboxfs did not mount within {START_TIMEOUT}s:\n{self.log()}")

    def send(self, data: str | bytes | dict) -> None:
        if isinstance(data, dict):
            data = json.dumps(data) + "\n"
        if isinstance(data, str):
            data = data.encode()
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def response(self, timeout: float = RESPONSE_TIMEOUT) -> dict | None:
        """The next response, or None at the end of the output."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no response within {timeout}s:\n{self.log()}") from None
        return json.loads(line) if line else None

    def request(self, data: str | bytes | dict) -> dict:
        self.send(data)
        return self.response()

    def wait_for_log(self, text: str, timeout: float = RESPONSE_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not logged within {timeout}s:\n{self.log()}")
            time.sleep(0.02)

    def stop(self) -> int | None:
        """Close stdin, then end the child and its mount as Mount.stop does (by PID)."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        return super().stop()


@pytest.fixture
def sandboxfs02(workdir: Path) -> Callable[..., Sandboxfs02]:
    """Start 0.2 children: ``sandboxfs02(["--reconfig_threads=1"])``; all stopped at teardown."""
    children: list[Sandboxfs02] = []

    def start(args: Sequence[str] = (), mounted: bool = True, **kwargs) -> Sandboxfs02:
        point = workdir / f"mnt{len(children)}"
        point.mkdir(exist_ok=True)
        child = Sandboxfs02(point, args, workdir / f"sandboxfs{len(children)}.log", **kwargs)
        children.append(child)
        return child.wait_mounted() if mounted else child

    yield start
    stop_all(children)


@pytest.fixture
def tree(workdir: Path) -> Path:
    """Host files: ``root/dir/a.txt``, ``root/file``, ``root/subdir/``, ``root/rw/``."""
    root = workdir / "root"
    (root / "dir").mkdir(parents=True)
    (root / "dir" / "a.txt").write_text("from dir\n")
    (root / "file").write_text("plain\n")
    (root / "subdir").mkdir()
    (root / "rw").mkdir()
    return root


def create(sandbox_id: str, *mappings: dict, prefixes: dict | None = None) -> dict:
    body: dict = {"id": sandbox_id, "mappings": list(mappings)}
    if prefixes is not None:
        body["prefixes"] = prefixes
    return {"CreateSandbox": body}


def mapping(path: str, underlying: str | Path, writable: bool = False, **extra) -> dict:
    return {"path": path, "underlying_path": str(underlying), "writable": writable, **extra}


def ok(sandbox_id: str) -> dict:
    return {"id": sandbox_id, "error": None}


# -- mappings and requests ----------------------------------------------------------------


def test_mappings_on_the_command_line(sandboxfs02, tree, workdir):
    child = sandboxfs02([f"--mapping=ro:/:{tree}", "--mapping", f"rw:/out:{tree / 'rw'}",
                         "--ttl=0s", "--node_cache", "--xattrs", "--allow=self"],
                        stdin=subprocess.DEVNULL)
    mnt = child.mount_point
    assert sorted(os.listdir(mnt)) == ["dir", "file", "out", "rw", "subdir"]
    assert (mnt / "dir" / "a.txt").read_text() == "from dir\n"
    (mnt / "out" / "new.txt").write_text("written\n")
    assert (tree / "rw" / "new.txt").read_text() == "written\n"
    with pytest.raises(PermissionError):
        (mnt / "dir" / "evil").write_text("x")
    child.wait_for_log("Reached end of reconfiguration input")
    assert (mnt / "file").read_text() == "plain\n"  # still serving
    assert "--node_cache: accepted" in child.log()


def test_create_and_destroy_through_a_pipe(sandboxfs02, tree):
    child = sandboxfs02()
    mnt = child.mount_point
    assert child.request(create("sb", mapping("/ro", tree / "dir"),
                                mapping("/work/rw", tree / "rw", True))) == ok("sb")
    assert (mnt / "sb" / "ro" / "a.txt").read_text() == "from dir\n"
    (mnt / "sb" / "work" / "rw" / "out.txt").write_text("out\n")
    assert (tree / "rw" / "out.txt").read_text() == "out\n"
    assert child.request({"DestroySandbox": "sb"}) == ok("sb")
    assert not (mnt / "sb").exists()
    assert os.listdir(mnt) == []


def test_multiline_objects_whitespace_and_aliases(sandboxfs02, tree):
    child = sandboxfs02()
    mnt = child.mount_point
    child.send('\n  {"C":\n    {"i": "s1",\n     "m": [\n')
    time.sleep(0.2)  # one object over several writes
    child.send(f'  {{"p": "/d", "u": "{tree / "dir"}"}},\n  {{"p": "/w", "u": "{tree / "rw"}", "w": true}}'
               ']}}\t\n\n{"D": "nope"}{"C": {"i": "s2"}}')
    # Two reconfiguration threads (the CPU count): answers may come in any order.
    answers = {r["id"]: r for r in (child.response() for _ in range(3))}
    assert answers["s1"] == ok("s1") and answers["s2"] == ok("s2")
    assert answers["nope"]["error"]
    assert sorted(os.listdir(mnt)) == ["s1", "s2"]
    assert os.listdir(mnt / "s1" / "d") == ["a.txt"]
    (mnt / "s1" / "w" / "x").write_text("x")
    assert os.listdir(mnt / "s2") == []
    assert child.request('{"D":"s1"}') == ok("s1")
    assert child.request({"DestroySandbox": "s2"}) == ok("s2")
    assert os.listdir(mnt) == []


def test_prefixes_across_requests(sandboxfs02, tree):
    child = sandboxfs02()
    mnt = child.mount_point
    first = create("sb1", {"path": "a", "path_prefix": 1, "underlying_path": "dir",
                           "underlying_path_prefix": 2, "writable": True},
                   prefixes={"1": "/foo/bar", "2": str(tree)})
    second = {"C": {"i": "sb2", "m": [{"p": "", "x": 3, "u": "rw", "y": 2, "w": True}],
                    "q": {"3": "/"}}}
    assert child.request(first) == ok("sb1")
    assert child.request(second) == ok("sb2")
    assert (mnt / "sb1" / "foo" / "bar" / "a" / "a.txt").read_text() == "from dir\n"
    (mnt / "sb2" / "test").mkdir()
    assert (tree / "rw" / "test").is_dir()


@pytest.mark.parametrize("requests, error", [
    ([create("sb", mapping("foo/../.", "/tmp"))], 'path "foo/../." is not absolute'),
    ([create("", mapping("/a", "/tmp"))], "Identifier cannot be empty"),
    ([{"DestroySandbox": ""}], "Identifier cannot be empty"),
    ([create("sb", mapping("foo", "/tmp", path_prefix=5))], "Prefix 5 does not exist"),
    ([create("sb", mapping("/foo", "ROOT/subdir")), create("sb", mapping("/foo", "ROOT/file"))],
     "Already mapped"),
    ([create("sb", mapping("/foo", "ROOT/subdir"), mapping("/foo", "ROOT/file"))], "Already mapped"),
    ([create("sb", mapping("/", "ROOT/subdir"), mapping("/", "ROOT/subdir"))],
     "Root can be mapped at most once"),
    ([create("sb", mapping("/too-late", "ROOT/file"), mapping("/", "ROOT/subdir"))],
     "Root can be mapped at most once"),
    ([create("sb", mapping("/x", "ROOT/missing"))], "does not exist"),
], ids=["relative", "empty-id", "empty-destroy-id", "unknown-prefix", "map-twice",
        "duplicate-in-request", "root-twice", "root-late", "missing-underlying"])
def test_recoverable_errors_keep_the_id_and_the_stream(sandboxfs02, tree, requests, error):
    child = sandboxfs02([f"--mapping=rw:/:{tree}"])
    mnt = child.mount_point
    requests = json.loads(json.dumps(requests).replace("ROOT", str(tree)))
    for prerequisite in requests[:-1]:
        assert child.request(prerequisite)["error"] is None
    last = requests[-1]
    sandbox_id = last.get("CreateSandbox", {}).get("id", last.get("DestroySandbox"))
    response = child.request(last)
    assert response["id"] == sandbox_id
    assert response["error"] is not None and error in response["error"], response
    assert (mnt / "file").read_text() == "plain\n"
    assert child.request(create("after", mapping("/d", tree / "dir"))) == ok("after")
    assert os.listdir(mnt / "after" / "d") == ["a.txt"]


def test_create_for_a_live_id_adds_its_mappings(sandboxfs02, tree):
    child = sandboxfs02()
    mnt = child.mount_point
    assert child.request(create("sb", mapping("/a", tree / "dir"))) == ok("sb")
    assert child.request(create("sb", mapping("/b", tree / "subdir"))) == ok("sb")
    assert sorted(os.listdir(mnt / "sb")) == ["a", "b"]


def test_outputs_next_to_inputs_stay_writable(sandboxfs02, workdir, tree):
    """Bazel's layout: the sandbox root maps a scratch dir rw, inputs are nested read-only."""
    scratch = workdir / "scratch"
    (scratch / "bazel-out" / "bin" / "pkg").mkdir(parents=True)
    child = sandboxfs02()
    mnt = child.mount_point
    assert child.request(create(
        "7", mapping("/", scratch, True),
        mapping("/bazel-out/bin/pkg/in.txt", tree / "file"),
        mapping("/pkg/src.txt", tree / "dir" / "a.txt"),
    )) == ok("7")
    out = mnt / "7" / "bazel-out" / "bin" / "pkg"
    assert (out / "in.txt").read_text() == "plain\n"
    (out / "out.txt").write_text("result\n")
    assert (scratch / "bazel-out" / "bin" / "pkg" / "out.txt").read_text() == "result\n"
    with pytest.raises(PermissionError):
        (out / "in.txt").write_text("x")
    with pytest.raises(PermissionError):  # no host directory behind /pkg: a scaffold
        (mnt / "7" / "pkg" / "new").write_text("x")


# -- the end of the stream ----------------------------------------------------------------


def test_unparsable_request_is_fatal_but_the_filesystem_serves(sandboxfs02, tree):
    child = sandboxfs02(["--reconfig_threads=1"])
    mnt = child.mount_point
    child.send(create("good", mapping("/d", tree / "dir")))
    child.send('{"CreateSandbox": {"id": "x", "mappings": [}\n')
    assert child.response() == ok("good")
    fatal = child.response()
    assert fatal["id"] is None and fatal["error"], fatal
    child.wait_for_log("Reconfigurations stopped")
    child.send(create("ignored", mapping("/d", tree / "dir")))
    with pytest.raises(AssertionError, match="no response"):
        child.response(timeout=1.0)  # input is no longer read
    assert os.listdir(mnt) == ["good"]
    assert (mnt / "good" / "d" / "a.txt").read_text() == "from dir\n"
    assert child.proc.poll() is None


def test_end_of_input_freezes_the_configuration(sandboxfs02, tree):
    child = sandboxfs02()
    mnt = child.mount_point
    assert child.request(create("sb", mapping("/rw", tree / "rw", True))) == ok("sb")
    child.proc.stdin.close()
    child.wait_for_log("Reached end of reconfiguration input")
    (mnt / "sb" / "rw" / "still-alive").mkdir()
    assert (tree / "rw" / "still-alive").is_dir()
    assert child.proc.poll() is None


def test_an_output_closed_by_the_client_does_not_stop_the_filesystem(sandboxfs02, tree):
    child = sandboxfs02(pump=False)
    mnt = child.mount_point
    child.send(create("sb", mapping("/d", tree / "dir")))
    ready, _, _ = select.select([child.proc.stdout], [], [], RESPONSE_TIMEOUT)
    assert ready and json.loads(child.proc.stdout.readline()) == ok("sb")
    child.proc.stdout.close()  # as Bazel does when it is done
    child.send(create("sb2", mapping("/d", tree / "dir")))
    child.wait_for_log("Failed to write to reconfiguration output")
    assert sorted(os.listdir(mnt)) == ["sb", "sb2"]
    assert child.proc.poll() is None


# -- FIFOs and files ----------------------------------------------------------------------


def test_input_fifo_mounts_before_any_writer(sandboxfs02, workdir, tree):
    fifo = workdir / "input"
    os.mkfifo(fifo)
    child = sandboxfs02([f"--input={fifo}"])  # returns once mounted: no writer yet
    mnt = child.mount_point
    time.sleep(0.3)
    assert "Reached end" not in child.log()
    with open(fifo, "w") as writer:
        writer.write(json.dumps(create("sb", mapping("/d", tree / "dir"))))
        writer.flush()
        assert child.response() == ok("sb")
        writer.write('{"D": "sb"}')
    assert child.response() == ok("sb")
    child.wait_for_log("Reached end of reconfiguration input")  # the last writer closed it
    assert os.listdir(mnt) == []


def test_output_fifo_and_input_fifo(sandboxfs02, workdir, tree):
    fifo_in, fifo_out = workdir / "in", workdir / "out"
    os.mkfifo(fifo_in)
    os.mkfifo(fifo_out)
    child = sandboxfs02([f"--input={fifo_in}", "--output", str(fifo_out)], stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL)
    with open(fifo_in, "w") as writer, open(fifo_out) as reader:
        writer.write(json.dumps(create("sb", mapping("/d", tree / "dir"))))
        writer.flush()
        assert json.loads(reader.readline()) == ok("sb")
    assert os.listdir(child.mount_point / "sb" / "d") == ["a.txt"]


def test_output_file(sandboxfs02, workdir, tree):
    out = workdir / "responses"
    out.write_text("")
    child = sandboxfs02([f"--output={out}"], stdout=subprocess.DEVNULL)
    child.send(create("a", mapping("/d", tree / "dir")))
    child.send('{"D": "a"}{"D": "a"}')
    deadline = time.monotonic() + RESPONSE_TIMEOUT
    while out.read_text().count("\n") < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[:2] == [ok("a"), ok("a")]
    assert lines[2]["id"] == "a" and lines[2]["error"]


# -- concurrency ---------------------------------------------------------------------------


def _many_creates(count: int, underlying: Path) -> str:
    return "".join(json.dumps(create(f"sandbox-{i}", mapping("/", underlying))) for i in range(count))


def test_one_reconfig_thread_answers_in_order(sandboxfs02, tree):
    child = sandboxfs02(["--reconfig_threads", "1"])
    child.send(_many_creates(300, tree / "dir"))
    ids = [child.response()["id"] for _ in range(300)]
    assert ids == [f"sandbox-{i}" for i in range(300)]


def test_many_reconfig_threads_answer_everything(sandboxfs02, tree):
    child = sandboxfs02(["--reconfig_threads=8"])
    child.send(_many_creates(300, tree / "dir"))
    responses = [child.response() for _ in range(300)]
    assert sorted(r["id"] for r in responses) == sorted(f"sandbox-{i}" for i in range(300))
    assert all(r["error"] is None for r in responses)
    assert len(os.listdir(child.mount_point)) == 300


def test_requests_for_one_id_apply_in_the_order_sent(sandboxfs02, tree):
    """Many threads, yet each destroy waits for its create (and a re-create for the destroy)."""
    child = sandboxfs02(["--reconfig_threads=8"])
    rounds = 10
    lines = []
    for i in range(rounds):  # the first create is large: it is built in a worker thread
        large = (mapping(f"/d/{n}", tree / "file") for n in range(600))
        lines += [create(f"s{i}", *large), {"DestroySandbox": f"s{i}"},
                  create(f"s{i}", mapping("/e", tree / "dir"))]
    child.send("".join(json.dumps(line) for line in lines))
    answers = [child.response() for _ in range(3 * rounds)]
    assert all(a["error"] is None for a in answers), [a for a in answers if a["error"]]
    assert sorted(os.listdir(child.mount_point)) == sorted(f"s{i}" for i in range(rounds))
    assert os.listdir(child.mount_point / "s7") == ["e"]


def test_a_large_request_does_not_hold_up_a_small_one(sandboxfs02, tree):
    """With two reconfiguration threads, a CreateSandbox of 50,000 mappings is
    overtaken by a small one sent after it; each is applied whole."""
    child = sandboxfs02(["--reconfig_threads=2"])
    count = 50_000
    big = create("big", *(mapping(f"/d{i % 100}/f{i}", tree / "file") for i in range(count)))
    child.send(json.dumps(big) + json.dumps(create("small", mapping("/d", tree / "dir"))))
    assert child.response(timeout=60) == ok("small")
    assert child.response(timeout=60) == ok("big")
    assert (child.mount_point / "small" / "d" / "a.txt").read_text() == "from dir\n"
    assert len(os.listdir(child.mount_point / "big")) == 100
    assert (child.mount_point / "big" / "d7" / f"f{count - 93}").read_text() == "plain\n"


# -- life cycle -----------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT],
                         ids=lambda s: signal.Signals(s).name)
def test_signal_unmounts_and_exits_non_zero(sandboxfs02, tree, signum):
    child = sandboxfs02()
    assert child.request(create("sb", mapping("/d", tree / "dir"))) == ok("sb")
    child.proc.send_signal(signum)
    assert child.proc.wait(timeout=STOP_TIMEOUT) == 1
    assert not is_mounted(child.mount_point)
    assert f"Caught signal {int(signum)}" in child.log()


@pytest.mark.parametrize("delay", [0.0, 0.002, 0.005, 0.02, 0.05, 0.1, 0.2, 0.4])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP],
                         ids=lambda s: signal.Signals(s).name)
def test_signal_right_after_start_leaves_nothing_mounted(sandboxfs02, signum, delay):
    child = sandboxfs02(mounted=False)
    time.sleep(delay)
    child.proc.send_signal(signum)
    status = child.proc.wait(timeout=STOP_TIMEOUT)
    assert status != 0, child.log()
    assert not is_mounted(child.mount_point)
    log = child.log()
    if "Traceback" in log:  # SIGINT while Python still imports: before anything is mounted
        assert signum == signal.SIGINT and "KeyboardInterrupt" in log and "mounted at" not in log


def test_external_unmount_ends_the_child_with_status_0(sandboxfs02):
    child = sandboxfs02()
    subprocess.run(["fusermount3", "-u", str(child.mount_point)], check=True)
    assert child.proc.wait(timeout=STOP_TIMEOUT) == 0
    assert not is_mounted(child.mount_point)


def test_bad_mount_point_exits_1(workdir):
    result = subprocess.run(
        [sys.executable, "-m", "sandboxfs", "--allow=self", str(workdir / "missing")],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1
    assert f"Failed to mount {workdir / 'missing'}" in result.stderr
    assert "Traceback" not in result.stderr


def test_cpu_profile_is_written_as_pstats(sandboxfs02, workdir, tree):
    profile = workdir / "cpu.prof"
    child = sandboxfs02([f"--cpu_profile={profile}"])
    assert child.request(create("sb", mapping("/d", tree / "dir"))) == ok("sb")
    assert child.stop() == 1
    stats = pstats.Stats(str(profile))
    assert stats.total_calls > 0
