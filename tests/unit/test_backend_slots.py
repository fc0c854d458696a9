"""Backend sandboxes without a mount: trees in, the filesystem operations' view out.

``Slots`` builds sandboxes in a ``Tree`` that ``Operations`` serves; these
tests call the operations directly (lookups, listings, opens, creates), as
the FUSE transports do, and check what a sandbox shows, what it refuses,
what Collect moves and what slot reuse keeps.
"""

from __future__ import annotations

import errno
import os
import stat

import pytest

from bench.backend_driver import InputTree, manifest
from sandboxfs.backend.merkle import DirectoryStore
from sandboxfs.backend.store import ContentStore
from sandboxfs.backend.slots import Slots
from sandboxfs.errors import InvalidRequestError, NotFoundError
from sandboxfs.fs.interface import Context
from sandboxfs.fs.operations import Operations
from sandboxfs.tree.sandboxes import Tree

CTX = Context(uid=0, gid=0, pid=0)


class World:
    """A tree, its operations, a backend over them, and an exec root of staged inputs."""

    def __init__(self, tmp_path) -> None:
        self.tree = Tree()
        self.ops = Operations(self.tree)
        self.dirs = DirectoryStore()
        self.store = ContentStore(tmp_path / "state", budget_bytes=1 << 20)
        self.slots = Slots(self.tree, self.dirs, self.store, "/mnt/serve", str(tmp_path / "scratch"))
        self.exec_root = tmp_path / "execroot"
        self.exec_root.mkdir()

    def stage(self, path: str, data: bytes, mode: int = 0o644) -> str:
        host = self.exec_root / path
        host.parent.mkdir(parents=True, exist_ok=True)
        host.write_bytes(data)
        host.chmod(mode)
        return str(host)

    def push(self, tree: InputTree, content: bool = False) -> None:
        self.dirs.add_blobs(tree.blobs)
        if content:
            for digest, source in tree.file_sources.items():
                self.store.put_inline(digest, source if isinstance(source, bytes)
                                      else open(source, "rb").read())

    def create(self, sandbox_id: str, tree: InputTree, outputs=None, writable=None):
        request = manifest(tree, str(self.exec_root), {}, writable)
        for path, kind in (outputs or {}).items():  # unchecked: the driver refuses bad types
            request.outputs[path].type = kind
        return self.slots.create(sandbox_id, request)

    def ino(self, *path: str) -> int:
        ino = 1
        for part in path:
            ino = self.ops.lookup(ino, part.encode()).ino
            assert ino, f"{part} not found"
        return ino

    def names(self, *path: str) -> list[bytes]:
        fh = self.ops.opendir(self.ino(*path)).fh
        seen = []
        self.ops.readdir(fh, 0, False, lambda name, entry, offset: seen.append(name) or True)
        self.ops.releasedir(fh)
        return sorted(seen)

    def read(self, *path: str) -> bytes:
        fh = self.ops.open(self.ino(*path), os.O_RDONLY).fh
        try:
            return self.ops.read(fh, 0, 1 << 16)
        finally:
            self.ops.release(fh)


@pytest.fixture
def world(tmp_path):
    return World(tmp_path)


def test_a_tree_whose_directories_were_not_pushed_is_missing_exactly_those(world):
    tree = InputTree({"pkg/a.c": b"a", "lib/b.h": b"b"})
    outcome, missing, changed = world.create("s", tree)
    assert outcome == "missing" and missing == [tree.root_digest.hash]
    world.dirs.add(tree.root_digest.hash, tree.blobs[tree.root_digest.hash])
    outcome, missing, _ = world.create("s", tree)
    assert outcome == "missing"
    assert sorted(missing) == sorted(tree.dir_digests[p].hash for p in ("pkg", "lib"))
    assert not world.tree.sandboxes and not world.store.stats()["sandboxes"]


def test_leaves_come_from_the_exec_root_with_the_trees_modes_and_links(world):
    world.stage("pkg/a.c", b"int a;", 0o600)
    world.stage("pkg/tool", b"#!/bin/sh\n", 0o644)
    tree = InputTree({"pkg/a.c": b"int a;", "pkg/tool": (b"#!/bin/sh\n", True)},
                     symlinks={"pkg/link": "a.c"})
    world.push(tree)
    outcome, path, _ = world.create("s", tree)
    assert (outcome, path) == ("ok", "/mnt/serve/1")
    assert world.names("1", "pkg") == [b"a.c", b"link", b"tool"]
    assert world.read("1", "pkg", "a.c") == b"int a;"
    modes = {name: world.ops.getattr(world.ino("1", "pkg", name)).attr.st_mode
             for name in ("a.c", "tool", "link")}
    assert modes == {"a.c": stat.S_IFREG | 0o444, "tool": stat.S_IFREG | 0o555,
                     "link": stat.S_IFLNK | 0o777}
    assert world.ops.readlink(world.ino("1", "pkg", "link")) == b"a.c"


def test_pushed_content_is_served_from_the_store_not_the_exec_root(world):
    tree = InputTree({"gen/data.txt": b"pushed bytes"})
    world.push(tree, content=True)
    world.stage("gen/data.txt", b"something else staged")
    assert world.create("s", tree)[0] == "ok"
    assert world.read("1", "gen", "data.txt") == b"pushed bytes"


def test_inputs_refuse_writes_with_erofs_and_outputs_take_them(world):
    world.stage("pkg/a.c", b"a")
    tree = InputTree({"pkg/a.c": b"a", "src/b.c": b"b"})
    world.stage("src/b.c", b"b")
    world.push(tree)
    outcome, _, _ = world.create("s", tree, {"/pkg/a.o": "file", "/out/lib": "dir"})
    assert outcome == "ok"
    with pytest.raises(OSError) as caught:
        world.ops.create(world.ino("1", "src"), b"evil", 0o644, os.O_WRONLY, CTX)
    assert caught.value.errno == errno.EROFS
    with pytest.raises(OSError) as caught:
        world.ops.open(world.ino("1", "src", "b.c"), os.O_WRONLY)
    assert caught.value.errno == errno.EROFS
    # The output's directory shows its inputs and takes the output.
    assert world.names("1", "pkg") == [b"a.c"]
    _, opened = world.ops.create(world.ino("1", "pkg"), b"a.o", 0o644, os.O_WRONLY, CTX)
    world.ops.write(opened.fh, 0, b"object")
    world.ops.release(opened.fh)
    _, opened = world.ops.create(world.ino("1", "out", "lib"), b"x.a", 0o644, os.O_WRONLY, CTX)
    world.ops.release(opened.fh)
    with pytest.raises(OSError) as caught:  # an input inside an output's directory stays
        world.ops.unlink(world.ino("1", "pkg"), b"a.c")
    assert caught.value.errno == errno.EPERM
    collect_root = world.exec_root.parent / "collected"
    assert world.slots.collect("s", str(collect_root)) == []
    assert (collect_root / "pkg" / "a.o").read_bytes() == b"object"
    assert os.listdir(collect_root / "out" / "lib") == ["x.a"]


def test_outputs_not_produced_are_reported_and_errors_name_the_output(world):
    tree = InputTree({"pkg/a.c": b"a"})
    world.push(tree)
    world.create("s", tree, {"/pkg/never.o": "file"})
    assert world.slots.collect("s", str(world.exec_root)) == ["pkg/never.o"]
    with pytest.raises(NotFoundError, match="Collect 'other': no such sandbox"):
        world.slots.collect("other", str(world.exec_root))


@pytest.mark.parametrize("outputs, writable, message", [
    ({"/pkg/../x": "file"}, None, "output '/pkg/../x': path '/pkg/../x' has a '..' component"),
    ({"/pkg/a.o": "symlink"}, None, "has type 'symlink'"),
    ({"/pkg/a.c/x.o": "file"}, None, "'a.c' is an input file"),
    ({"/top.o": "file"}, None, "directly in the sandbox root"),
    ({}, {"/tmp": "relative/path"}, "relative host path"),
])
def test_bad_outputs_are_refused_and_change_nothing(world, outputs, writable, message):
    tree = InputTree({"pkg/a.c": b"a"})
    world.push(tree)
    with pytest.raises(InvalidRequestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        world.create("s", tree, outputs, writable)
    assert not world.slots.live and not world.store.stats()["sandboxes"]
    assert world.create("s", tree, {"/pkg/a.o": "file"})[0] == "ok"  # the id is still free


def test_an_id_in_use_and_an_unknown_id_are_errors(world):
    tree = InputTree({"a": b"a"}, empty_dirs=["d"])
    world.push(tree)
    assert world.create("s", tree)[0] == "ok"
    with pytest.raises(InvalidRequestError, match="a sandbox with this id exists"):
        world.create("s", tree)
    with pytest.raises(NotFoundError, match="Destroy 'nope': no such sandbox"):
        world.slots.destroy("nope")


def test_a_reused_slot_keeps_the_nodes_of_unchanged_subtrees(world):
    files = {f"tool/include/h{i}.h": f"header {i}".encode() for i in range(50)}
    for path, data in files.items():
        world.stage(path, data)
    world.stage("src/main.c", b"v1")
    first = InputTree({**files, "src/main.c": b"v1"})
    world.push(first)
    assert world.create("a", first, {"/pkg/main.o": "file"})[1] == "/mnt/serve/1"
    header = world.ino("1", "tool", "include", "h7.h")
    include = world.ino("1", "tool", "include")
    old_main = world.ino("1", "src", "main.c")
    world.ops.lookup(world.ino("1", "src"), b"new.c")  # a negative entry the kernel may keep
    changed, trash = world.slots.destroy("a")
    assert os.path.isdir(trash)
    world.stage("src/main.c", b"version 2")
    world.stage("src/new.c", b"new")
    second = InputTree({**files, "src/main.c": b"version 2", "src/new.c": b"new"})
    world.push(second)
    outcome, path, changed = world.create("b", second, {"/pkg/main.o": "file"})
    assert (outcome, path) == ("ok", "/mnt/serve/1")
    assert world.slots.counts["reused"] == 1
    assert world.ino("1", "tool", "include", "h7.h") == header
    assert world.ino("1", "tool", "include") == include
    assert world.ino("1", "src", "main.c") != old_main
    assert world.read("1", "src", "main.c") == b"version 2"
    assert world.names("1", "src") == [b"main.c", b"new.c"]
    src = world.ops.inodes[world.ino("1", "src")]
    # The kernel forgets the changed name, the added one (it may hold a miss) and the
    # output directory (made again); nothing of the unchanged toolchain.
    assert {(src, b"main.c"), (src, b"new.c")} <= set(changed)
    assert {name for _node, name in changed} == {b"main.c", b"new.c", b"pkg"}


def test_the_oldest_idle_slot_leaves_the_mount(world):
    world.slots.max_idle = 1
    tree = InputTree({"a": b"a"})
    world.push(tree)
    world.create("x", tree)
    world.create("y", tree)
    world.slots.destroy("x")
    assert sorted(world.tree.sandboxes) == [b"1", b"2"]
    changed, _ = world.slots.destroy("y")
    assert sorted(world.tree.sandboxes) == [b"2"]
    assert (world.tree.root, b"1") in changed


def test_evicted_content_is_missing_and_comes_back_with_a_push(world):
    world.store.budget_bytes = 10
    tree = InputTree({"big": b"x" * 8, "other": b"y" * 8})
    world.push(tree, content=True)  # the second put evicts the first
    outcome, missing, _ = world.create("s", tree)
    assert outcome == "missing" and missing == [tree.files["big"].hash]
    world.store.budget_bytes = 100
    world.store.put_inline(tree.files["big"].hash, b"x" * 8)
    assert world.create("s", tree)[0] == "ok"


def test_content_refused_at_push_makes_the_create_an_error(world):
    tree = InputTree({"f": b"right"})
    world.push(tree)
    with pytest.raises(InvalidRequestError):
        world.store.put_inline(tree.files["f"].hash, b"wrong")
    with pytest.raises(InvalidRequestError, match="refused when pushed: .*hash to"):
        world.create("s", tree)


def test_one_input_file_is_one_inode_in_every_sandbox_while_its_digest_is_the_same(world):
    world.stage("tc/cc1", b"compiler")
    world.stage("src/a.c", b"a")
    tree = InputTree({"tc/cc1": (b"compiler", True), "src/a.c": b"a"})
    world.push(tree)
    world.create("x", tree)
    world.create("y", tree)  # a second slot: the first is live
    assert world.ino("1", "tc", "cc1") == world.ino("2", "tc", "cc1")
    assert world.ino("1", "tc") != world.ino("2", "tc")  # directories never alias
    world.stage("src/a.c", b"b")
    changed = InputTree({"tc/cc1": (b"compiler", True), "src/a.c": b"b"})
    world.push(changed)
    world.create("z", changed)
    assert world.ino("3", "tc", "cc1") == world.ino("1", "tc", "cc1")
    assert world.ino("3", "src", "a.c") != world.ino("1", "src", "a.c")


def test_small_inputs_keep_their_pages_and_big_ones_pass_through(world):
    world.stage("small.h", b"#define X 1\n")
    big = b"x" * (2 << 20)
    world.stage("big.bin", big)
    tree = InputTree({"small.h": b"#define X 1\n", "big.bin": big})
    world.push(tree)
    world.create("s", tree)
    small_ino, big_ino = world.ino("1", "small.h"), world.ino("1", "big.bin")
    opens = []
    for ino in (small_ino, small_ino, big_ino):
        opened = world.ops.open(ino, os.O_RDONLY)
        opens.append(opened)
        world.ops.release(opened.fh)
    assert [o.backing_fd >= 0 for o in opens] == [False, False, True]
    assert [o.keep_cache for o in opens[:2]] == [False, True]  # kept from the second open on


def test_a_listing_is_kept_by_the_kernel_only_while_the_directory_shows_the_same_tree(world):
    for name in ("a", "b"):
        world.stage(f"src/{name}", name.encode())
    first = InputTree({"src/a": b"a"})
    world.push(first)
    world.create("x", first)
    src = world.ino("1", "src")
    keeps = [world.ops.opendir(src).keep_cache for _ in range(2)]
    world.slots.destroy("x")
    second = InputTree({"src/a": b"a", "src/b": b"b"})
    world.push(second)
    world.create("y", second)
    assert world.ino("1", "src") == src  # the same node, now over another listing
    keeps += [world.ops.opendir(src).keep_cache for _ in range(2)]
    assert keeps == [False, True, False, True]
    assert world.names("1", "src") == [b"a", b"b"]
