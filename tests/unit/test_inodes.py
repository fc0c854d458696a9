"""Unit tests of sandboxfs.fs.inodes.InodeTable: inode numbers, lookup counts, open handles.

Numbers are handed out once and never reused; the table holds a node while
the kernel does (lookup count > 0) or while a host fd is open on it; a
forgotten discovered node leaves its parent's cache.  Nodes come from
sandboxfs.tree over a small host tree in ``tmp_path``; the host fds are real.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandboxfs.fs.inodes import ROOT_INODE, Handle, InodeTable, StaleError
from sandboxfs.tree.lookup import lookup
from sandboxfs.tree.nodes import FoundNode, MappedNode, ScaffoldDir


@pytest.fixture
def host(tmp_path) -> Path:
    (tmp_path / "dir").mkdir()
    for name in ("a", "b", "c"):
        (tmp_path / "dir" / name).write_text(name)
    return tmp_path


@pytest.fixture
def mapped_dir(host) -> MappedNode:
    return MappedNode.of_path(os.fsencode(host / "dir"), True)


@pytest.fixture
def table() -> InodeTable:
    return InodeTable(ScaffoldDir())


@pytest.fixture
def open_fd(host):
    """Open real host fds; all closed at teardown."""
    fds = []

    def open_one(name: str = "a") -> int:
        fd = os.open(host / "dir" / name, os.O_RDONLY)
        fds.append(fd)
        return fd

    yield open_one
    for fd in fds:
        os.close(fd)


def discovered(parent: MappedNode, name: bytes) -> FoundNode:
    node, _ = lookup(parent, name)
    return node


def test_root_is_inode_one_and_never_forgotten():
    root = ScaffoldDir()
    table = InodeTable(root)
    assert root.ino == ROOT_INODE == 1
    assert table[ROOT_INODE] is root and len(table) == 1
    table.forget(ROOT_INODE, 1000)
    assert table[ROOT_INODE] is root


def test_set_root_replaces_the_root(table):
    new_root = MappedNode(b"/", None, False)
    table.set_root(new_root)
    assert table[ROOT_INODE] is new_root and new_root.ino == ROOT_INODE


def test_number_is_assigned_once(table, mapped_dir):
    a = discovered(mapped_dir, b"a")
    b = discovered(mapped_dir, b"b")
    first = table.number(a)
    assert first > ROOT_INODE
    assert table.number(a) == first
    assert table.number(b) not in (first, ROOT_INODE)
    assert a.lookups == 0  # number() counts no lookup
    with pytest.raises(KeyError):
        table[first]  # and does not put the node in the table


def test_remember_counts_lookups(table, mapped_dir):
    a = discovered(mapped_dir, b"a")
    ino = table.remember(a)
    assert table.remember(a) == ino
    assert a.lookups == 2 and table[ino] is a
    table.forget(ino, 1)
    assert table[ino] is a and a.lookups == 1
    table.forget(ino, 1)
    with pytest.raises(KeyError):
        table[ino]
    assert a.lookups == 0


def test_forget_more_than_counted_drops_the_node(table, mapped_dir):
    a = discovered(mapped_dir, b"a")
    ino = table.remember(a)
    table.forget(ino, 5)
    assert a.lookups == 0
    with pytest.raises(KeyError):
        table[ino]


def test_forget_of_unknown_inode_is_ignored(table):
    table.forget(12345, 1)
    assert len(table) == 1


def test_numbers_are_never_reused(table, mapped_dir):
    seen = set()
    for name in (b"a", b"b", b"c", b"a", b"b"):
        node = discovered(mapped_dir, name)
        ino = table.remember(node)
        assert ino not in seen
        seen.add(ino)
        table.forget(ino, 1)  # dropped from the table and from the parent's cache
    assert ROOT_INODE not in seen


def test_forgetting_discovered_node_removes_it_from_parent_cache(table, mapped_dir):
    a = discovered(mapped_dir, b"a")
    b = discovered(mapped_dir, b"b")
    table.remember(a)
    table.remember(b)
    table.forget(a.ino, 1)
    assert mapped_dir.known == {b"b": b}
    again = discovered(mapped_dir, b"a")
    assert again is not a  # a new node, so a new number
    assert table.remember(again) != a.ino


def test_forgetting_stale_node_keeps_its_replacement_cached(table, mapped_dir, host):
    old = discovered(mapped_dir, b"a")
    table.remember(old)
    (host / "dir" / "a.new").write_text("new")
    os.replace(host / "dir" / "a.new", host / "dir" / "a")
    new = discovered(mapped_dir, b"a")
    table.remember(new)
    table.forget(old.ino, 1)
    assert mapped_dir.known[b"a"] is new
    assert table[new.ino] is new


def test_explicit_node_keeps_its_number_after_being_forgotten(table):
    mapping = MappedNode.of_path(b"/host/path", False)
    ino = table.remember(mapping)
    table.forget(ino, 1)
    with pytest.raises(KeyError):
        table[ino]
    assert table.remember(mapping) == ino  # looked up again: same number
    assert table[ino] is mapping


def test_scaffold_keeps_its_number_after_being_forgotten(table):
    scaffold = ScaffoldDir()
    ino = table.remember(scaffold)
    table.forget(ino, 1)
    assert table.remember(scaffold) == ino


def test_open_handle_keeps_forgotten_node_until_release(table, mapped_dir, open_fd):
    a = discovered(mapped_dir, b"a")
    ino = table.remember(a)
    fd = open_fd("a")
    fh = table.open(Handle(a, fd=fd))
    table.forget(ino, 1)
    assert table[ino] is a  # still reachable: the handle is open
    assert mapped_dir.known[b"a"] is a  # and still cached under its name
    assert table.open_fd(a) == fd
    handle = table.release(fh)
    assert handle.node is a and handle.fd == fd
    with pytest.raises(KeyError):
        table[ino]
    assert b"a" not in mapped_dir.known
    assert table.open_fd(a) == -1


def test_release_keeps_node_the_kernel_still_holds(table, mapped_dir, open_fd):
    a = discovered(mapped_dir, b"a")
    ino = table.remember(a)
    fh = table.open(Handle(a, fd=open_fd("a")))
    table.release(fh)
    assert table[ino] is a and mapped_dir.known[b"a"] is a


def test_node_looked_up_again_while_open_survives_release(table, mapped_dir, open_fd):
    a = discovered(mapped_dir, b"a")
    ino = table.remember(a)
    fh = table.open(Handle(a, fd=open_fd("a")))
    table.forget(ino, 1)
    assert table.remember(a) == ino  # the kernel learns it again before release
    table.release(fh)
    assert table[ino] is a and a.lookups == 1


def test_last_of_several_handles_releases_node(table, mapped_dir, open_fd):
    a = discovered(mapped_dir, b"a")
    ino = table.remember(a)
    fd1, fd2 = open_fd("a"), open_fd("a")
    fh1 = table.open(Handle(a, fd=fd1))
    fh2 = table.open(Handle(a, fd=fd2))
    table.forget(ino, 1)
    assert table.open_fd(a) == fd1
    table.release(fh1)
    assert table[ino] is a
    assert table.open_fd(a) == fd2
    table.release(fh2)
    with pytest.raises(KeyError):
        table[ino]


def test_handle_without_fd_does_not_pin_the_node(table, mapped_dir):
    sub = discovered(mapped_dir, b"a")
    ino = table.remember(sub)
    fh = table.open(Handle(sub, entries=[]))  # a directory snapshot: no host fd
    assert table.open_fd(sub) == -1
    table.forget(ino, 1)
    with pytest.raises(KeyError):
        table[ino]
    assert table.release(fh).node is sub


def test_handle_numbers_are_unique_and_looked_up(table, mapped_dir):
    a = discovered(mapped_dir, b"a")
    table.remember(a)
    h1, h2 = Handle(a), Handle(a, writable=True)
    fh1, fh2 = table.open(h1), table.open(h2)
    assert fh1 != fh2
    assert table.handle(fh1) is h1 and table.handle(fh2) is h2
    assert set(table.handles()) == {h1, h2}
    assert table.stats() == {"inodes": 2, "handles": 2}
    table.release(fh1)
    with pytest.raises(KeyError):
        table.handle(fh1)
    with pytest.raises(KeyError):
        table.release(fh1)
    assert table.open(Handle(a)) not in (fh1, fh2)  # handle numbers are not reused either


def test_handles_iterates_over_a_copy(table, mapped_dir):
    a = discovered(mapped_dir, b"a")
    table.remember(a)
    fhs = [table.open(Handle(a)) for _ in range(3)]
    for _handle in table.handles():  # releasing while iterating is safe
        table.release(fhs.pop())
    assert table.stats()["handles"] == 0


def test_unknown_numbers_raise_stale_error_which_the_ops_boundary_answers_estale():
    table = InodeTable(ScaffoldDir())
    with pytest.raises(StaleError):
        table[12345]
    with pytest.raises(StaleError):
        table.handle(678)
