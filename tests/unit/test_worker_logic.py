"""The worker's pure parts, without an engine or a mount: batching, outputs, history, nodes."""

from __future__ import annotations

import errno
import hashlib
import os

import pytest

from sandboxfs.backend.merkle import DirectoryStore
from sandboxfs.backend.proto import remote_execution_pb2 as re
from sandboxfs.backend.store import ContentStore
from sandboxfs.errors import UsageError
from sandboxfs.tree.content import CasFile
from sandboxfs.worker.action import manifest_for, output_paths
from sandboxfs.worker.engine import BATCH_BLOB_MAX, BATCH_BYTES, BATCH_COUNT, grpc_target
from sandboxfs.worker.fetch import FIRST_BATCH, CasFetcher, ReadHistory, _plan, put_empty
from sandboxfs.worker.outputs import collect_outputs
from bench.remote_client import build_tree


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_small_blobs_go_in_batches_under_the_byte_limit_and_big_ones_alone():
    wanted = {f"{i:064x}": 400_000 for i in range(20)}
    wanted["f" * 64] = BATCH_BLOB_MAX + 1
    wanted["e" * 64] = 0
    jobs = _plan(wanted)
    big = [job for job in jobs if job[0][1] > BATCH_BLOB_MAX]
    assert big == [[("f" * 64, BATCH_BLOB_MAX + 1)]]
    small = [job for job in jobs if job[0][1] <= BATCH_BLOB_MAX]
    assert all(sum(size for _, size in job) <= BATCH_BYTES for job in small)
    assert sorted(d for job in small for d, _ in job) == sorted(
        d for d, s in wanted.items() if 0 < s <= BATCH_BLOB_MAX)
    assert all(d != "e" * 64 for job in jobs for d, _ in job), "the empty blob needs no fetch"


def test_an_ordered_prefetch_keeps_the_lookup_order_with_a_small_first_batch():
    wanted = {f"{i:064x}": 2000 + (i * 7919) % 2000 for i in range(3000)}
    wanted["f" * 64] = BATCH_BLOB_MAX + 1
    jobs = _plan(wanted, ordered=True)
    small = [job for job in jobs if job[0][1] <= BATCH_BLOB_MAX]
    assert len(small[0]) == FIRST_BATCH
    assert all(len(job) <= BATCH_COUNT and sum(s for _, s in job) <= BATCH_BYTES for job in small)
    order = [d for job in small for d, _ in job]
    assert order == [d for d, s in wanted.items() if s <= BATCH_BLOB_MAX]
    assert [("f" * 64, BATCH_BLOB_MAX + 1)] in jobs


def test_outputs_are_relative_to_the_working_directory_and_parents_become_writable():
    command = re.Command(arguments=["x"], working_directory="pkg",
                         output_files=["out/a.o", "out/a.o"], output_directories=["gen"])
    assert output_paths(command) == ["pkg/out/a.o", "pkg/gen"]
    manifest = manifest_for(command, re.Digest(hash="a" * 64, size_bytes=3))
    assert {k: v.type for k, v in manifest.outputs.items()} == {"pkg/out/a.o": "file",
                                                                "pkg/gen": "file"}
    newer = re.Command(arguments=["x"], output_paths=["p/q"], output_files=["ignored"])
    assert output_paths(newer) == ["p/q"]


def test_collected_outputs_describe_files_trees_and_symlinks(tmp_path):
    out = tmp_path / "scratch"
    (out / "tree" / "sub").mkdir(parents=True)
    (out / "a.txt").write_bytes(b"one\n")
    (out / "tree" / "run").write_bytes(b"#!/bin/sh\n")
    os.chmod(out / "tree" / "run", 0o755)
    (out / "tree" / "sub" / "x").write_bytes(b"x")
    (out / "tree" / "sub2").mkdir()
    (out / "tree" / "sub2" / "x").write_bytes(b"x")  # an equal subtree: one child entry
    os.symlink("a.txt", out / "link")

    class Out:
        def __init__(self, dest: bytes) -> None:
            self.dest = dest

    outputs = [(Out(b"o/" + name), os.fsencode(out / os.fsdecode(name)))
               for name in (b"a.txt", b"tree", b"link", b"absent")]
    command = re.Command(arguments=["x"], working_directory="o",
                         output_files=["a.txt", "link", "absent"], output_directories=["tree"])
    result = re.ActionResult()
    blobs: dict = {}
    collect_outputs(result, outputs, command, blobs)
    (file_out,) = result.output_files
    assert (file_out.path, file_out.digest.hash) == ("a.txt", _sha(b"one\n"))
    assert blobs[_sha(b"one\n")] == (4, str(out / "a.txt"))
    assert [(s.path, s.target) for s in result.output_file_symlinks] == [("link", "a.txt")]
    (tree_out,) = result.output_directories
    size, data = blobs[tree_out.tree_digest.hash]
    tree = re.Tree.FromString(data)
    assert [(f.name, f.is_executable) for f in tree.root.files] == [("run", True)]
    assert [d.name for d in tree.root.directories] == ["sub", "sub2"]
    assert len(tree.children) == 1, "equal subdirectories are one child"
    assert tree.root.directories[0].digest == tree.root.directories[1].digest


def test_read_history_wants_only_what_the_store_lacks_at_the_recorded_paths(tmp_path):
    blobs: dict = {}
    root = build_tree({"a/x": b"1", "a/y": b"22", "b/z": b"333"}, blobs)
    directories = DirectoryStore()
    for digest, (_size, data) in blobs.items():
        if data not in (b"1", b"22", b"333"):
            directories.add(digest, data)
    tree = directories.resolve(root.hash, root.size_bytes).root
    store = ContentStore(tmp_path / "store")
    store.put_inline(_sha(b"22"), b"22")
    history = ReadHistory()
    history.record("cmd", [b"a/x", b"a/y", b"gone/w", b"a"])
    assert history.wanted("cmd", tree, store) == {_sha(b"1"): 1}
    assert history.wanted("other", tree, store) == {}


def test_a_rerun_that_looks_up_less_keeps_what_earlier_runs_looked_up():
    history = ReadHistory()
    history.record("cmd", [b"a/x", b"a/y"])
    history.record("cmd", [])  # a reused slot: the kernel still held every name
    history.record("cmd", [b"b/z", b"a/y"])
    assert history.paths("cmd") == [b"a/x", b"a/y", b"b/z"]


def test_misses_in_order_read_ahead_more_each_time_and_a_jump_starts_over(tmp_path):
    files = {f"d/f{i:02}": f"{i}".encode() * (i + 1) for i in range(40)}
    blobs: dict = {}
    root = build_tree(files, blobs)
    directories = DirectoryStore()
    for digest, (_size, data) in blobs.items():
        if data not in files.values():
            directories.add(digest, data)
    directory = directories.resolve(root.hash, root.size_bytes).root.entries[b"d"]
    store = ContentStore(tmp_path / "store")
    fetcher = CasFetcher(engine=None, store=store)
    digest = {int(name[1:]): leaf.digest for name, leaf in directory.entries.items()}
    for name, leaf in directory.entries.items():
        fetcher.note_place(leaf.digest, directory, name)

    def fetched(*numbers: int) -> None:  # as a fetch would leave the store
        for n in numbers:
            store.put_inline(digest[n], files[f"d/f{n:02}"])

    store.put_inline(digest[2], files["d/f02"])  # held already: never read ahead
    assert fetcher._readahead(digest[0]) == {}, "a first miss fetches only itself"
    fetched(0)
    assert list(fetcher._readahead(digest[1])) == [digest[3], digest[4], digest[5]]
    fetched(1, 3, 4, 5)
    assert list(fetcher._readahead(digest[6])) == [digest[n] for n in range(7, 22)]
    fetched(6, *range(7, 22))
    assert fetcher._readahead(digest[30]) == {}, "a jump over missing files starts over"
    fetched(30)
    assert fetcher._readahead(digest[35]) == {}, "sparse reads never read ahead"
    assert fetcher._readahead("0" * 64) == {}, "a digest never looked up"


class _Fetcher:
    def __init__(self, store: ContentStore) -> None:
        self.store = store
        self.fetched: list[str] = []

    def held_path(self, digest: str):
        return self.store.path(digest)

    def fetch(self, digest: str, size: int) -> None:
        self.fetched.append(digest)
        self.store.put_inline(digest, b"data")


def test_a_cas_file_shows_its_tree_attributes_and_asks_for_a_fetch_until_held(tmp_path):
    store = ContentStore(tmp_path / "store")
    put_empty(store)
    fetcher = _Fetcher(store)
    digest = _sha(b"data")
    node = CasFile(os.fsencode(store.path_for(digest)), digest, 4, True, fetcher)
    before = node.lstat()
    assert (before.st_size, before.st_mode & 0o777) == (4, 0o555)
    fetch = node.pending_fetch()
    assert fetch is not None
    fetch()
    assert fetcher.fetched == [digest] and node.pending_fetch() is None
    assert node.lstat() == before, "attributes must not change when the bytes arrive"
    with open(node.host_path(), "rb") as f:
        assert f.read() == b"data"


def test_the_engine_address_must_be_grpc():
    assert grpc_target("grpc://127.0.0.1:50051") == "127.0.0.1:50051"
    assert grpc_target("localhost:1") == "localhost:1"
    with pytest.raises(UsageError, match="only grpc://"):
        grpc_target("grpcs://example:443")


def test_a_fetch_that_fails_is_eio_naming_the_blob(tmp_path):
    from sandboxfs.worker.fetch import CasFetcher

    class NoEngine:
        def read_batch(self, digests):
            for d in digests:
                yield d, 5, "not here", b""

    store = ContentStore(tmp_path / "store")
    fetcher = CasFetcher(NoEngine(), store)
    with pytest.raises(OSError) as caught:
        fetcher.fetch("a" * 64, 10)
    assert caught.value.errno == errno.EIO and "a" * 64 in str(caught.value)
    assert fetcher.failures["a" * 64].kind == "missing"
    assert fetcher.failures_since(0, {"a" * 64, "b" * 64}).keys() == {"a" * 64}
