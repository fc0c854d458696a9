"""``fs.shared_files`` through ``Operations``, without a mount: which lookups share a node.

The real-mount behaviour is in tests/fuse/test_shared_inodes.py; these pin
the rules (regular files of read-only mappings only, never a node the kernel
holds already, never while tracked, dropped from the table when the kernel
forgets it) and the choice of place after a host file was replaced.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandboxfs.fs.operations import Operations
from sandboxfs.fs.shared_files import SharedFile, SharedFiles
from sandboxfs.tree.mapping import Mapping
from sandboxfs.tree.sandboxes import Tree

ROOT = 1


@pytest.fixture
def host(tmp_path: Path) -> Path:
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc" / "a.h").write_bytes(b"int a;\n")
    (tmp_path / "inc" / "sub").mkdir()
    return tmp_path


def _ops(host: Path, **kwargs) -> Operations:
    ops = Operations(Tree(), **kwargs)
    inc = os.fsencode(host / "inc")
    ops.tree.create_sandbox("one", [Mapping.of(b"/inc", inc, False)])
    ops.tree.create_sandbox("two", [Mapping.of(b"/inc", inc, False),
                                    Mapping.of(b"/f.h", inc + b"/a.h", False)])
    ops.tree.create_sandbox("rw", [Mapping.of(b"/inc", inc, True)])
    return ops


def _ino(ops: Operations, *path: bytes) -> int:
    ino = ROOT
    for name in path:
        ino = ops.lookup(ino, name).ino
    return ino


def test_one_node_for_one_read_only_file(host):
    ops = _ops(host)
    shared = _ino(ops, b"one", b"inc", b"a.h")
    assert type(ops.inodes[shared]) is SharedFile
    assert _ino(ops, b"two", b"inc", b"a.h") == shared
    two_inc = ops.inodes[_ino(ops, b"two", b"inc")]
    assert b"a.h" not in (two_inc.known or {})  # its own node was not kept: only the shared one
    assert _ino(ops, b"two", b"f.h") == shared  # a file mapping of the same host file
    assert ops.inodes[shared].lookups == 3  # each entry reply counted on the one node
    assert _ino(ops, b"rw", b"inc", b"a.h") != shared  # read-write: its own node
    assert _ino(ops, b"one", b"inc", b"sub") != _ino(ops, b"two", b"inc", b"sub")  # directories


def test_switched_off_each_lookup_keeps_its_node(host):
    ops = _ops(host, shared_inodes=False)
    assert _ino(ops, b"one", b"inc", b"a.h") != _ino(ops, b"two", b"inc", b"a.h")


def test_a_tracked_sandbox_shares_nothing(host):
    ops = _ops(host)
    ops.access.track(b"one")
    assert _ino(ops, b"one", b"inc", b"a.h") != _ino(ops, b"two", b"inc", b"a.h")


def test_forgotten_it_leaves_the_table_and_the_next_lookup_starts_again(host):
    ops = _ops(host)
    first = _ino(ops, b"one", b"inc", b"a.h")
    assert ops.shared.by_file
    ops.forget(first, 1)
    assert not ops.shared.by_file
    again = _ino(ops, b"two", b"inc", b"a.h")
    assert again != first and type(ops.inodes[again]) is SharedFile


def test_a_node_the_kernel_already_holds_is_not_swapped(host):
    ops = _ops(host, shared_inodes=False)
    own = _ino(ops, b"one", b"inc", b"a.h")  # held under its own number
    ops.shared = SharedFiles()  # sharing switched on with the node held
    assert _ino(ops, b"two", b"inc", b"a.h") != own  # two's own lookup shares from now on
    assert _ino(ops, b"one", b"inc", b"a.h") == own  # one's name keeps its number


def test_host_access_goes_through_a_place_that_still_shows_the_file(tmp_path):
    left, right = tmp_path / "left", tmp_path / "right"
    left.mkdir()
    right.mkdir()
    (left / "f").write_bytes(b"old\n")
    os.link(left / "f", right / "f")
    ops = Operations(Tree())
    ops.tree.create_sandbox("a", [Mapping.of(b"/d", os.fsencode(left), False)])
    ops.tree.create_sandbox("b", [Mapping.of(b"/d", os.fsencode(right), False)])
    ino = _ino(ops, b"a", b"d", b"f")
    assert _ino(ops, b"b", b"d", b"f") == ino  # b is the latest place
    (right / "new").write_bytes(b"new, longer\n")
    os.rename(right / "new", right / "f")
    node = ops.inodes[ino]
    assert node.lstat().st_size == 4  # left's, not the newcomer's
    opened = ops.open(ino, os.O_RDONLY)
    try:
        assert ops.read(opened.fh, 0, 100) == b"old\n"
    finally:
        ops.release(opened.fh)
    os.unlink(left / "f")  # no place shows it any more: the latest place is used
    assert node.lstat().st_size == len(b"new, longer\n")


def test_a_readdirplus_entry_shares_as_a_lookup_does(host):
    ops = _ops(host)
    shared = _ino(ops, b"one", b"inc", b"a.h")
    fh = ops.opendir(_ino(ops, b"two", b"inc")).fh
    got: dict[bytes, int] = {}
    ops.readdir(fh, 0, True, lambda name, entry, offset: got.setdefault(name, entry.ino) > 0)
    assert got[b"a.h"] == shared
    assert ops.inodes[shared].lookups == 2


def test_an_entry_the_kernel_does_not_take_leaves_nothing_shared(host):
    ops = _ops(host)
    fh = ops.opendir(_ino(ops, b"one", b"inc")).fh
    ops.readdir(fh, 0, True, lambda name, entry, offset: name != b"a.h")  # full at a.h
    assert not ops.shared.by_file


def test_a_small_file_keeps_its_pages_once_a_second_place_shares_it(host):
    (host / "inc" / "big.bin").write_bytes(b"\0" * SharedFile.passthrough_min)
    ops = _ops(host)

    def passes_through(*path: bytes) -> bool:
        opened = ops.open(_ino(ops, *path), os.O_RDONLY)
        ops.release(opened.fh)
        return opened.backing_fd >= 0

    assert passes_through(b"one", b"inc", b"a.h")  # one place: as an unshared node
    assert not passes_through(b"two", b"inc", b"a.h")  # shared: its pages are kept
    assert passes_through(b"one", b"inc", b"big.bin")
    assert passes_through(b"two", b"inc", b"big.bin")  # 1 MiB and more: always through


def test_a_plain_listing_shows_the_shared_number_and_makes_none(host):
    ops = _ops(host)

    def listed(*path: bytes) -> dict[bytes, int]:
        fh = ops.opendir(_ino(ops, *path)).fh
        got: dict[bytes, int] = {}
        ops.readdir(fh, 0, False, lambda name, entry, offset: got.setdefault(name, entry.ino) > 0)
        return got

    listed(b"one", b"inc")
    assert not ops.shared.by_file  # a plain listing holds nothing, so shares nothing
    shared = _ino(ops, b"one", b"inc", b"a.h")
    assert listed(b"two", b"inc")[b"a.h"] == shared  # what a lookup there would answer
    assert ops.inodes[shared].lookups == 1
