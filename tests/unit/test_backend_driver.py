"""Unit tests of bench.backend_driver, the client that plays Bazel's part of the backend protocol.

The InputTree half is pure: its digests are SHA-256 of the deterministic bytes,
its names are sorted by UTF-8 bytes, sandboxfs's own DirectoryStore accepts
and resolves every blob back into the same files, a host directory gives the
same tree as the equivalent dict, and Pushes pick inline or location as
documented.  The BackendClient half runs against a fake server (a small Python
script, not sandboxfs) that answers out of order, asks for missing content,
lies about rids, dies or ignores EOF: it tests the client's framing and futures.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest

from bench.backend_driver import BackendClient, BackendError, HashCache, InputTree, manifest
from sandboxfs.backend.merkle import DirectoryStore, FileLeaf, MerkleDir, SymlinkLeaf, walk
from sandboxfs.backend.proto import sandbox_pb2 as sb
from sandboxfs.backend.proto.remote_execution_pb2 import Directory

ROOT = Path(__file__).resolve().parents[2]

FILES = {
    "pkg/b.h": b"int b;\n",
    "pkg/a.h": b"int a;\n",
    "pkg/Z.h": b"int z;\n",
    "pkg/\u00e9t\u00e9.h": b"summer\n",
    "pkg/~tilde": b"",
    "pkg/sub/deep/x.c": b"#include \"pkg/a.h\"\n",
    "tool": (b"#!/bin/sh\necho hi\n", True),
    "same-as-a.h": b"int a;\n",
}
LINKS = {"pkg/link": "a.h", "dangling": "../nowhere"}
EMPTY = ["out", "pkg/sub/empty"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def resolved(tree: InputTree) -> dict[bytes, object]:
    """What sandboxfs's own Merkle index makes of the tree: path -> leaf or 'dir'."""
    store = DirectoryStore()
    for digest, blob in tree.blobs.items():
        store.add(digest, blob)
    resolution = store.resolve(tree.root_digest.hash, tree.root_digest.size_bytes)
    assert resolution.missing == ()
    return {path: "dir" if isinstance(entry, MerkleDir) else entry
            for path, entry in walk(resolution.root)}


# -- InputTree ------------------------------------------------------------------------


def test_digests_are_sha256_of_the_deterministic_bytes():
    tree = InputTree(FILES, LINKS, EMPTY)
    for digest, blob in tree.blobs.items():
        assert digest == sha(blob)
        assert Directory.FromString(blob).SerializeToString(deterministic=True) == blob
        assert tree.directories[digest].SerializeToString(deterministic=True) == blob
    root = tree.root_digest
    assert root.size_bytes == len(tree.blobs[root.hash])
    assert tree.files["pkg/a.h"].hash == sha(b"int a;\n") == tree.files["same-as-a.h"].hash
    assert tree.file_sources[sha(b"int a;\n")] == b"int a;\n"
    assert len(tree.file_sources) == len(FILES) - 1  # one content shared by two paths


def test_names_are_sorted_by_utf8_bytes():
    tree = InputTree(FILES, LINKS, EMPTY)
    pkg = tree.directories[tree.dir_digests["pkg"].hash]
    names = [node.name for node in pkg.files]
    assert names == ["Z.h", "a.h", "b.h", "~tilde", "\u00e9t\u00e9.h"]
    for directory in tree.directories.values():
        for nodes in (directory.files, directory.directories, directory.symlinks):
            raw = [node.name.encode() for node in nodes]
            assert raw == sorted(raw)


def test_sandboxfs_resolves_the_same_files_sizes_and_exec_bits():
    tree = InputTree(FILES, LINKS, EMPTY)
    got = resolved(tree)
    for path, spec in FILES.items():
        data, executable = spec if isinstance(spec, tuple) else (spec, False)
        assert got[path.encode()] == FileLeaf(sha(data), len(data), executable)
    for path, target in LINKS.items():
        assert got[path.encode()] == SymlinkLeaf(target.encode())
    dirs = {path for path, entry in got.items() if entry == "dir"}
    assert dirs == {b"out", b"pkg", b"pkg/sub", b"pkg/sub/deep", b"pkg/sub/empty"}
    assert len(got) == len(FILES) + len(LINKS) + len(dirs)


def test_empty_tree_is_the_empty_directory():
    tree = InputTree({})
    assert (tree.root_digest.hash, tree.root_digest.size_bytes) == (sha(b""), 0)


@pytest.mark.parametrize("bad", ["/abs", "../up", "a//b", "a/./b", "a/", "", "nul\0"])
def test_paths_a_directory_cannot_hold_are_refused(bad):
    with pytest.raises(ValueError):
        InputTree({bad: b"x"})


def test_a_path_cannot_be_both_a_file_and_a_directory():
    with pytest.raises(ValueError, match="twice"):
        InputTree({"a": b"x", "a/b": b"y"})
    with pytest.raises(ValueError, match="twice"):
        InputTree({"a/b": b"y"}, {"a": "elsewhere"})


def make_host_dir(root: Path) -> None:
    for path, spec in FILES.items():
        data, executable = spec if isinstance(spec, tuple) else (spec, False)
        host = root / path
        host.parent.mkdir(parents=True, exist_ok=True)
        host.write_bytes(data)
        host.chmod(0o755 if executable else 0o644)
    for path, target in LINKS.items():
        os.symlink(target, root / path)
    for path in EMPTY:
        (root / path).mkdir(parents=True)


def test_host_directory_gives_the_same_tree_as_the_dict(tmp_path):
    make_host_dir(tmp_path / "src")
    expected = InputTree(FILES, LINKS, EMPTY)
    tree = InputTree.from_directory(tmp_path / "src")
    assert tree.root_digest == expected.root_digest
    assert tree.blobs == expected.blobs
    assert tree.files == expected.files
    assert tree.file_sources[tree.files["tool"].hash] == str(tmp_path / "src" / "tool")

    prefixed = InputTree.from_directory(tmp_path / "src", prefix="external/src")
    expected = InputTree({f"external/src/{p}": s for p, s in FILES.items()},
                         {f"external/src/{p}": t for p, t in LINKS.items()},
                         [f"external/src/{p}" for p in EMPTY])
    assert prefixed.root_digest == expected.root_digest


def test_hash_cache_reads_a_file_again_only_when_it_changed(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"one")
    cache = HashCache()
    assert cache.digest(str(path)) == (sha(b"one"), 3)
    path.write_bytes(b"three")
    assert InputTree({"f": str(path)}, hash_cache=cache).files["f"].hash == sha(b"three")


def test_push_sends_bytes_inline_and_host_files_by_location(tmp_path):
    host = tmp_path / "big.h"
    host.write_bytes(b"x" * 100)
    tree = InputTree({"mem.h": b"in memory", "pkg/big.h": str(host)})
    mem, big = tree.files["mem.h"].hash, tree.files["pkg/big.h"].hash
    pkg = tree.dir_digests["pkg"].hash

    push = tree.push_for([mem, big, pkg])
    assert dict(push.blobs) == {pkg: tree.blobs[pkg]}
    assert push.content[mem].WhichOneof("source") == "inline"
    assert push.content[mem].inline == b"in memory"
    assert push.content[big].WhichOneof("source") == "location"
    assert push.content[big].location == str(host)
    assert push.content[big].retention == sb.RETENTION_REUSE

    small = tree.push_for([big], inline_limit=100, retention=sb.RETENTION_SINGLE_USE)
    assert small.content[big].inline == b"x" * 100
    assert small.content[big].retention == sb.RETENTION_SINGLE_USE
    assert tree.push_for([big], inline_limit=99).content[big].WhichOneof("source") == "location"

    everything = tree.push_all()
    assert set(everything.blobs) == set(tree.blobs) and set(everything.content) == {mem, big}
    with pytest.raises(KeyError, match="neither"):
        tree.push_for([sha(b"not in the tree")])


def test_the_empty_file_and_the_empty_directory_share_a_hash_and_both_are_pushed():
    tree = InputTree({"empty.txt": b""}, empty_dirs=["nothing"])
    push = tree.push_for([sha(b"")])
    assert push.blobs[sha(b"")] == b"" and push.content[sha(b"")].inline == b""


def test_a_host_directory_with_a_fifo_is_refused(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ValueError, match="neither"):
        InputTree.from_directory(tmp_path)


def test_manifest_names_the_tree_and_outputs():
    tree = InputTree(FILES)
    m = manifest(tree, "/ws/exec", {"out/a.o": "file", "out/d": "dir"}, {"tmp": "/host/tmp"})
    assert m.hash_function == "SHA-256" and m.mnemonic == "Genrule"
    assert m.input_root_digest == tree.root_digest
    assert {p: o.type for p, o in m.outputs.items()} == {"out/a.o": "file", "out/d": "dir"}
    assert dict(m.writable_dirs) == {"tmp": "/host/tmp"}
    with pytest.raises(ValueError):
        manifest(tree, "/ws", {"x": "symlink"})


# -- BackendClient against a fake server -----------------------------------------------

FAKE_SERVER = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, ROOT)
    from sandboxfs.backend import wire
    from sandboxfs.backend.proto import sandbox_pb2 as sb
    from sandboxfs.backend.proto.remote_execution_pb2 import Directory

    mode, log = sys.argv[1], open(sys.argv[2], "a")
    blobs, content, held = {}, set(), []

    def send(response):
        sys.stdout.buffer.write(wire.encode(response.SerializeToString()))
        sys.stdout.buffer.flush()

    def missing(root):
        if root not in blobs:
            return [root]
        need, stack = set(), [root]
        while stack:
            directory = Directory.FromString(blobs[stack.pop()])
            need.update(f.digest.hash for f in directory.files if f.digest.hash not in content)
            for sub in directory.directories:
                (stack.append if sub.digest.hash in blobs else need.add)(sub.digest.hash)
        return sorted(need)

    def handle(request):
        op = request.WhichOneof("op")
        record = {"op": op, "rid": request.rid, "sandbox": request.sandbox_id}
        if op == "negotiate":
            rid = request.rid + 1000 if mode == "badrid" else request.rid
            send(sb.Response(rid=rid, negotiate=sb.Negotiate.Result(ok={})))
        elif op == "push":
            record["push"] = sorted({*request.push.blobs, *request.push.content})
            if mode != "forget":
                blobs.update(request.push.blobs)
                content.update(request.push.content)
        elif op == "create":
            if mode == "die":
                sys.stderr.write("fake server: dying on purpose\\n")
                sys.exit(3)
            want = record["missing"] = missing(request.create.manifest.input_root_digest.hash)
            result = (sb.Create.Result(missing_content={"digest_hashes": want}) if want else
                      sb.Create.Result(ok={"path": "/sandboxes/" + request.sandbox_id}))
            held.append(sb.Response(rid=request.rid, create=result))
            if mode != "hold" and len(held) == (2 if mode == "pairs" else 1):
                for response in reversed(held):  # the later request is answered first
                    send(response)
                held.clear()
        elif op == "destroy":
            send(sb.Response(rid=request.rid, destroy=sb.Destroy.Result(ok={})))
        log.write(json.dumps(record) + "\\n")
        log.flush()

    reader = wire.DelimitedReader()
    try:
        while chunk := sys.stdin.buffer.read1(65536):
            for body in reader.feed(chunk):
                handle(sb.Request.FromString(body))
            reader.feed(b"")  # raises an error found after the good frames of the chunk
        reader.finish()
    except Exception as exc:
        sys.stderr.write(f"fake server: {exc}\\n")
        sys.exit(2)
    if mode == "stubborn":
        time.sleep(60)
""").replace("ROOT", repr(str(ROOT)))


@pytest.fixture
def fake(tmp_path):
    """Start the fake server in a mode; every client started is closed at the end."""
    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER)
    clients = []

    def start(mode: str, **options) -> BackendClient:
        client = BackendClient(tmp_path, argv=[sys.executable, str(script), mode,
                                               str(tmp_path / "log")],
                               stderr=tmp_path / "stderr", **options)
        clients.append(client)
        return client

    def log() -> list[dict]:
        return [json.loads(line) for line in (tmp_path / "log").read_text().splitlines()]

    start.log = log
    yield start
    for client in clients:
        client.close(timeout=5)


def test_responses_out_of_order_reach_their_requests(fake):
    client = fake("pairs")
    assert client.negotiate().WhichOneof("outcome") == "ok"
    tree = InputTree({"a": b"a"})
    push = tree.push_all()
    client.push(push.blobs, push.content)
    request = sb.Request(create=sb.Create(manifest=manifest(tree, "/x", {})))
    first = client.submit(sb.Request(sandbox_id="first", create=request.create))
    second = client.submit(sb.Request(sandbox_id="second", create=request.create))
    assert second.result(timeout=10).create.ok.path == "/sandboxes/second"
    assert first.result(timeout=10).create.ok.path == "/sandboxes/first"
    assert first.result().rid < second.result().rid
    assert client.destroy("first").WhichOneof("outcome") == "ok"
    assert client.close() == 0
    assert [r["op"] for r in fake.log()] == ["negotiate", "push", "create", "create", "destroy"]
    assert client.counts == {"negotiate": 1, "push": 1, "create": 2, "destroy": 1}


def test_create_pushing_pushes_exactly_what_is_missing(fake):
    client = fake("serve")
    tree = InputTree(FILES, LINKS, EMPTY)
    result = client.create_pushing("sb1", tree, manifest(tree, "/x", {"out/o": "file"}))
    assert result.ok.path == "/sandboxes/sb1"
    assert client.close() == 0
    log = fake.log()
    creates = [r for r in log if r["op"] == "create"]
    pushes = [r["push"] for r in log if r["op"] == "push"]
    assert [c["missing"] for c in creates[:-1]] == pushes and creates[-1]["missing"] == []
    assert pushes[0] == [tree.root_digest.hash]
    assert sorted(h for p in pushes for h in p) == sorted({*tree.blobs, *tree.file_sources})


def test_create_pushing_gives_up_when_content_stays_missing(fake):
    client = fake("forget")
    tree = InputTree({"a": b"a"})
    with pytest.raises(BackendError, match="after 3 attempts"):
        client.create_pushing("sb1", tree, manifest(tree, "/x", {}), max_attempts=3)


def test_a_response_with_an_unknown_rid_fails_pending_requests(fake):
    client = fake("badrid")
    with pytest.raises(BackendError, match="rid 1001"):
        client.negotiate()
    with pytest.raises(BackendError, match="broke the protocol"):
        client.create("later", manifest(InputTree({}), "/x", {}))


def test_a_dying_server_fails_pending_requests_with_its_status_and_stderr(fake):
    client = fake("die")
    with pytest.raises(BackendError, match=r"(?s)status 3.*dying on purpose"):
        client.create("sb1", manifest(InputTree({}), "/x", {}))
    with pytest.raises(BackendError, match="status 3"):
        client.destroy("sb1")
    assert client.close() == 3


def test_a_malformed_frame_ends_the_server_and_fails_what_is_pending(fake):
    client = fake("hold")
    pending = client.submit(sb.Request(sandbox_id="sb1", create=sb.Create()))
    client.send_raw(b"\xff" * 11)  # a length prefix longer than any varint
    with pytest.raises(BackendError, match="status 2"):
        pending.result(timeout=10)
    assert client.close() == 2


def test_an_unanswered_request_times_out(fake):
    client = fake("hold", timeout=0.3)
    with pytest.raises(BackendError, match="no response to rid 1"):
        client.create("sb1", manifest(InputTree({}), "/x", {}))


def test_close_kills_a_server_that_ignores_eof(fake):
    client = fake("stubborn")
    client.negotiate()
    assert client.close(timeout=0.5) == -signal.SIGKILL


def test_requests_after_close_say_the_client_closed(fake):
    client = fake("serve")
    client.negotiate()
    assert client.close() == 0
    with pytest.raises(BackendError, match="client closed"):
        client.destroy("any")
