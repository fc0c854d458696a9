"""`sandboxfs serve`, Bazel's sandbox-backend protocol, against a real mount and real processes.

A driver (bench/backend_driver.py) plays Bazel's part over the server's
stdin/stdout: negotiate, push trees, create, run real commands (gcc, sort)
in the sandboxes, collect, destroy, several threads pipelining at once.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from bench.backend_driver import BackendClient, BackendError, InputTree, manifest
from bench.scenarios.bazel import write_workspace
from sandboxfs.backend.proto import sandbox_pb2 as pb
from sandboxfs.backend.proto.remote_execution_pb2 import Digest, Directory, FileNode
from sandboxfs.backend.wire import encode_varint

from .harness import is_mounted


class Served:
    """A running ``sandboxfs serve`` with its workspace, exec root and state directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.workspace = root / "ws"
        self.exec_root = root / "execroot"
        self.state = root / "state"
        self.workspace.mkdir()
        self.exec_root.mkdir()
        self.log = root / "serve.log"
        self.client = BackendClient(self.workspace, self.state, stderr=self.log,
                                    extra_args=["--log-level", "info"], timeout=60)
        self.closed: int | None = None

    @property
    def mount_point(self) -> Path:
        return self.state / "mnt"

    def stage(self, path: str, data: bytes, mode: int = 0o644) -> Path:
        host = self.exec_root / path
        host.parent.mkdir(parents=True, exist_ok=True)
        host.write_bytes(data)
        host.chmod(mode)
        return host

    def create(self, sandbox_id: str, tree: InputTree, outputs=None, writable=None) -> str:
        """Create, pushing first the content that is not on disk (as Bazel pushes the inputs
        it has not staged), then whatever the server says it misses."""
        in_memory = [d for d, source in tree.file_sources.items() if isinstance(source, bytes)]
        if in_memory:
            self.client.send_push(tree.push_for(in_memory))
        result = self.client.create_pushing(
            sandbox_id, tree, manifest(tree, str(self.exec_root), outputs or {}, writable))
        assert result.WhichOneof("outcome") == "ok", result
        return result.ok.path

    def close(self) -> int:
        if self.closed is None:
            self.closed = self.client.close(timeout=30)
        return self.closed

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def served(workdir):
    server = Served(workdir)
    try:
        result = server.client.negotiate()
        assert result.WhichOneof("outcome") == "ok", result
        yield server
    finally:
        server.close()
        if is_mounted(server.mount_point):  # never leave a mount behind, even when failing
            subprocess.run(["fusermount3", "-u", "-z", str(server.mount_point)], check=False)
            pytest.fail(f"serve left {server.mount_point} mounted:\n{server.log_text()}")


def _run(argv, cwd, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60, **kwargs)


def test_a_gcc_action_runs_in_a_sandbox_and_its_output_is_collected(served):
    headers = {f"include/h{i}.h": f"#define H{i} {i}\nint f{i}(void);\n".encode()
               for i in range(300)}
    source = ("".join(f'#include "h{i}.h"\n' for i in range(300))
              + "int main(void) { return H7 + H299; }\n").encode()
    for path, data in headers.items():
        served.stage(path, data)
    served.stage("pkg/main.c", source)
    served.stage("pkg/secret.c", b"undeclared")
    tree = InputTree({**{p: str(served.exec_root / p) for p in headers},
                      "pkg/main.c": str(served.exec_root / "pkg/main.c")})
    path = served.create("gcc-1", tree, {"/pkg/main.o": "file"})
    assert Path(path).parent == served.mount_point
    compiled = _run(["gcc", "-c", "-Iinclude", "pkg/main.c", "-o", "pkg/main.o"], cwd=path)
    assert compiled.returncode == 0, compiled.stderr
    # Only declared inputs are there; inputs refuse writes.
    assert not os.path.exists(os.path.join(path, "pkg", "secret.c"))
    refused = _run(["sh", "-c", "echo x > include/new.h"], cwd=path)
    assert refused.returncode != 0 and "Read-only file system" in refused.stderr
    assert served.client.collect("gcc-1", str(served.exec_root)).WhichOneof("outcome") == "ok"
    local = _run(["gcc", "-c", "-Iinclude", "pkg/main.c", "-o", str(served.root / "local.o")],
                 cwd=served.exec_root)
    assert local.returncode == 0, local.stderr
    assert (served.exec_root / "pkg/main.o").read_bytes() == (served.root / "local.o").read_bytes()
    assert served.client.destroy("gcc-1").WhichOneof("outcome") == "ok"
    assert served.close() == 0
    assert not is_mounted(served.mount_point)


def test_pushed_content_executable_bits_and_symlinks_show_as_the_tree_says(served):
    tree = InputTree({"bin/tool": (b"#!/bin/sh\necho tool ran\n", True),
                      "data/pushed.txt": b"pushed, not staged\n"},
                     symlinks={"bin/alias": "tool"})
    path = served.create("s", tree, {"/out/result.txt": "file"})
    ran = _run(["sh", "-c", "bin/alias > out/result.txt && cat data/pushed.txt"], cwd=path)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "pushed, not staged\n"
    assert os.readlink(os.path.join(path, "bin/alias")) == "tool"
    assert os.stat(os.path.join(path, "data/pushed.txt")).st_mode & 0o777 == 0o444
    served.client.collect("s", str(served.exec_root))
    assert (served.exec_root / "out/result.txt").read_text() == "tool ran\n"


def test_a_reused_slot_shows_the_new_tree_and_nothing_stale(served):
    served.stage("src/a.c", b"first version\n")
    served.stage("src/keep.h", b"unchanged\n")
    first = InputTree({"src/a.c": b"first version\n", "src/keep.h": b"unchanged\n"})
    path = served.create("one", first, {"/out/x": "file"})
    assert Path(path, "src/a.c").read_text() == "first version\n"
    Path(path, "out/x").write_text("output of one")
    assert not Path(path, "src/b.c").exists()  # the kernel now caches a miss
    served.client.destroy("one")
    served.stage("src/a.c", b"the second, longer version\n")
    served.stage("src/b.c", b"new\n")
    second = InputTree({"src/a.c": b"the second, longer version\n", "src/keep.h": b"unchanged\n",
                        "src/b.c": b"new\n"})
    again = served.create("two", second, {"/out/x": "file"})
    assert again == path  # the same slot, reused
    assert Path(again, "src/a.c").read_text() == "the second, longer version\n"
    assert Path(again, "src/b.c").read_text() == "new\n"
    assert Path(again, "src/keep.h").read_text() == "unchanged\n"
    assert not Path(again, "out/x").exists()  # never another action's outputs


def test_the_genrule_workload_as_trees_from_threads_matches_a_local_build(served):
    # The Bazel benchmark's 200 genrules (bench/scenarios/bazel.py, full mode), each an
    # action with its own input tree: 150 gcc compiles declaring all 300 headers, 50 shell.
    outputs = write_workspace(served.exec_root, compiles=150, headers=300, includes=100, shell=50)
    hdr = {f"hdr/{name}": str(served.exec_root / "hdr" / name)
           for name in os.listdir(served.exec_root / "hdr") if name.endswith(".h")}

    def action(output: str) -> tuple[str, bytes]:
        package, name = output.split("/")
        stem = name.rsplit(".", 1)[0]
        if package == "cc":
            inputs = {**hdr, f"cc/{stem}.c": str(served.exec_root / f"cc/{stem}.c")}
            command = ["gcc", "-O1", "-c", "-Ihdr", "-o", output, f"cc/{stem}.c"]
        else:
            inputs = {f"sh/{stem}.txt": str(served.exec_root / f"sh/{stem}.txt")}
            command = ["sh", "-c", f"sort sh/{stem}.txt | uniq -c | tr a-z A-Z > {output} "
                                   f"&& wc -l < sh/{stem}.txt >> {output}"]
        tree = InputTree(inputs)
        sandbox = f"action-{stem}"
        path = served.create(sandbox, tree, {f"/{output}": "file"})
        ran = _run(command, cwd=path)
        assert ran.returncode == 0, ran.stderr
        assert served.client.collect(sandbox, str(served.root / "collected")).WhichOneof(
            "outcome") == "ok"
        assert served.client.destroy(sandbox).WhichOneof("outcome") == "ok"
        local = _run(command, cwd=served.exec_root)
        assert local.returncode == 0, local.stderr
        return output, (served.exec_root / output).read_bytes()

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        expected = dict(pool.map(action, outputs))
    for output, data in expected.items():
        assert (served.root / "collected" / output).read_bytes() == data, output
    assert "refused" not in served.log_text()


def _error(result) -> str:
    assert result.WhichOneof("outcome") == "error", result
    return result.error.message


def test_bad_requests_get_specific_errors_and_the_server_keeps_serving(served):
    good = InputTree({"a/f": b"f"})
    assert "no such sandbox" in _error(served.client.destroy("nobody"))
    assert "no such sandbox" in _error(served.client.collect("nobody", str(served.exec_root)))
    # A Directory with unsorted names is refused at Push; the Create that needs it says why.
    digest = Digest(hash=hashlib.sha256(b"f").hexdigest(), size_bytes=1)
    blob = Directory(files=[FileNode(name="z", digest=digest),
                            FileNode(name="a", digest=digest)]).SerializeToString()
    bad = hashlib.sha256(blob).hexdigest()
    served.client.push(blobs={bad: blob})
    request = manifest(good, str(served.exec_root), {})
    request.input_root_digest.CopyFrom(Digest(hash=bad, size_bytes=len(blob)))
    message = _error(served.client.create("bad-tree", request))
    assert bad in message and "sorted" in message
    # Bytes that do not match their digest, for a blob and for content.
    served.client.push(blobs={good.root_digest.hash: b"not this"},
                       content={good.files["a/f"].hash: pb.Content(inline=b"g")})
    result = served.client.create("wrong-bytes", manifest(good, str(served.exec_root), {}))
    assert "refused when pushed" in _error(result)
    # An output outside the tree's paths.
    request = manifest(good, str(served.exec_root), {})
    request.outputs["/a/../../etc/x"].type = "file"
    assert "'..'" in _error(served.client.create_pushing("escape", good, request))
    # ...and the same server still creates a good sandbox.
    other = InputTree({"b/g": b"g"})
    path = served.create("fine", other, {"/b/out": "file"})
    assert Path(path, "b/g").read_bytes() == b"g"
    assert "Push" in served.log_text()


@pytest.mark.parametrize("tail, reason", [
    (encode_varint(1 << 40), "over the limit"),
    (encode_varint(100) + b"cut", "ended inside a message"),
])
def test_a_broken_stream_unmounts_and_exits_2(served, tail, reason):
    path = served.create("s", InputTree({"f": b"f"}))
    assert Path(path, "f").read_bytes() == b"f"
    served.client.send_raw(tail)
    assert served.close() == 2
    assert not is_mounted(served.mount_point)
    assert reason in served.log_text()


def test_pipelined_requests_are_answered_by_rid_even_out_of_order(served):
    trees = [InputTree({f"p{i}/f{j}": f"{i}-{j}".encode() for j in range(20)}) for i in range(8)]
    for tree in trees:
        served.client.push(**{"blobs": tree.blobs})
    futures = [served.client.submit(pb.Request(
        sandbox_id=f"s{i}", create=pb.Create(manifest=manifest(tree, str(served.exec_root), {}))))
        for i, tree in enumerate(trees)]
    futures += [served.client.submit(pb.Request(sandbox_id=f"s{i}", destroy=pb.Destroy()))
                for i in range(8)]
    results = [future.result(timeout=60) for future in futures]
    assert all(r.create.WhichOneof("outcome") == "ok" for r in results[:8])
    assert all(r.destroy.WhichOneof("outcome") == "ok" for r in results[8:])
    assert "not an absolute path" in _error(
        served.client.create("late", manifest(trees[0], "relative", {})))
    assert served.close() == 0
    with pytest.raises(BackendError, match="exited with status 0"):
        served.client.create("later", manifest(trees[0], str(served.exec_root), {}))


def test_a_killed_server_leaves_a_state_directory_the_next_one_takes_over(workdir):
    first = Served(workdir)
    try:
        first.client.negotiate()
        path = first.create("s", InputTree({"f": b"f"}), {"/o/x": "file"})
        Path(path, "o/x").write_text("half-written output")
        os.kill(first.client.pid, 9)
        assert first.close() == -9
        assert is_mounted(first.mount_point)  # dead: ENOTCONN until someone clears it
        second = BackendClient(first.workspace, first.state, stderr=workdir / "second.log")
        try:
            assert second.negotiate().WhichOneof("outcome") == "ok"
            tree = InputTree({"f": b"g"})
            second.send_push(tree.push_all())
            result = second.create("s", manifest(tree, str(first.exec_root), {}))
            assert Path(result.ok.path, "f").read_bytes() == b"g"
            assert not (first.state / "scratch" / "1" / "o" / "x").exists()  # emptied
            with pytest.raises(BackendError):  # two servers never share a state directory
                third = BackendClient(first.workspace, first.state, stderr=workdir / "third.log")
                try:
                    third.negotiate()
                finally:
                    assert third.close() != 0
                    assert "another sandboxfs serve is using it" in (workdir / "third.log").read_text()
        finally:
            assert second.close() == 0
        assert not is_mounted(first.mount_point)
    finally:
        if is_mounted(first.mount_point):
            subprocess.run(["fusermount3", "-u", "-z", str(first.mount_point)], check=False)


def test_the_end_of_input_gives_the_store_and_scratch_disk_back(served):
    path = served.create("s", InputTree({"f": b"pushed content"}), {"/o/x": "file"})
    Path(path, "o/x").write_text("output")
    assert any(p.is_file() for p in (served.state / "store" / "cas").rglob("*"))
    assert served.close() == 0
    assert not (served.state / "store").exists() and not (served.state / "scratch").exists()
    assert not is_mounted(served.mount_point)


def test_big_inline_content_and_locations_are_taken_in_at_push_time(served):
    big = os.urandom(3 << 20)  # hashed off the loop
    staged = served.root / "pushed-from-here.bin"
    staged.write_bytes(b"at push time")
    tree = InputTree({"big.bin": big, "loc.bin": str(staged)})
    served.client.send_push(tree.push_all())
    # A Push is applied before the next request is read: once this is answered, it is done.
    assert served.client.negotiate().WhichOneof("outcome") == "ok"
    staged.write_bytes(b"changed after the push")  # the server must have copied it already
    path = served.create("s", tree)
    assert Path(path, "big.bin").read_bytes() == big
    assert Path(path, "loc.bin").read_bytes() == b"at push time"


def test_a_shutdown_signal_unmounts_and_exits_1(served):
    served.create("s", InputTree({"f": b"f"}))
    os.kill(served.client.pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while is_mounted(served.mount_point) and time.monotonic() < deadline:
        time.sleep(0.02)  # the signal first: closing stdin now would end it as end of input
    assert not is_mounted(served.mount_point)
    assert served.close() == 1


def test_negotiate_options_are_applied_or_refused_by_name(served):
    for bad in ("max_idle_slots=-1", "store_budget=lots", "bogus=1"):
        assert bad in _error(served.client.negotiate([bad])), bad
    result = served.client.negotiate(["store_budget=1M", "max_idle_slots=0"])
    assert result.WhichOneof("outcome") == "ok"
    tree = InputTree({"f": b"f"})
    first = served.create("a", tree)
    served.client.destroy("a")
    assert not Path(first).exists()  # no idle slot kept: it left the mount
    assert served.create("b", tree) != first
