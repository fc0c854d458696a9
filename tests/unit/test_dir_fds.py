"""Kept directory fds (tree.dir_fds): bounded, given back, and never a way around a swap."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

import pytest

from sandboxfs.fs.operations import Operations
from sandboxfs.tree import dir_fds
from sandboxfs.tree.dir_fds import DirFds
from sandboxfs.tree.mapping import Mapping
from sandboxfs.tree.sandboxes import Tree


def _is_open(fd: int) -> bool:
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError as exc:
        assert exc.errno == errno.EBADF
        return False
    return True


class _Key:
    """Stands for a node: DirFds only hashes it."""


def test_an_fd_is_opened_once_and_the_least_recent_one_goes_first(tmp_path):
    fds = DirFds(limit=2)
    opened = []

    def opener():
        opened.append(os.open(tmp_path, os.O_PATH | os.O_DIRECTORY))
        return opened[-1]

    a, b, c = _Key(), _Key(), _Key()
    first = fds.get(a, opener)
    assert fds.get(a, opener) == first and len(opened) == 1
    fds.get(b, opener)
    fds.get(a, opener)  # a is now the most recent
    fds.get(c, opener)  # over the limit: b, the least recent, is closed
    assert len(fds) == 2
    assert not _is_open(opened[1])
    assert _is_open(opened[0]) and _is_open(opened[2])
    fds.discard(a)
    fds.discard(c)
    assert not _is_open(opened[0]) and not _is_open(opened[2])
    assert len(fds) == 0


@pytest.fixture
def host(tmp_path) -> Path:
    (tmp_path / "src" / "d").mkdir(parents=True)
    for i in range(20):
        (tmp_path / "src" / "d" / f"f{i}").write_text(str(i))
    return tmp_path


def test_lookups_in_a_directory_share_one_fd_given_back_when_it_is_forgotten(host):
    ops = Operations(Tree([Mapping.of("/src", os.fsencode(host / "src"))]))
    before = len(dir_fds.DIR_FDS)
    d = ops.lookup(ops.lookup(1, b"src").ino, b"d").ino
    for i in range(20):
        assert ops.lookup(d, f"f{i}".encode()).ino
    assert len(dir_fds.DIR_FDS) == before + 1
    ops.forget(d, 1)
    assert len(dir_fds.DIR_FDS) == before


def test_a_directory_swapped_for_a_symlink_is_never_followed(host, tmp_path_factory):
    """The kernel still holds the old node: its children are looked up in the
    directory that was found, never through the symlink now at its path."""
    secret = tmp_path_factory.mktemp("secret")
    (secret / "f0").write_text("secret")
    ops = Operations(Tree([Mapping.of("/src", os.fsencode(host / "src"))]))
    src = ops.lookup(1, b"src").ino
    d = ops.lookup(src, b"d").ino
    ops.lookup(d, b"f0")
    os.rename(host / "src" / "d", host / "moved")
    os.symlink(secret, host / "src" / "d")
    entry = ops.lookup(d, b"f1")  # through the old node: the moved directory
    assert entry.ino and entry.attr.st_size == 1
    fresh = ops.lookup(src, b"d")  # the name again: now the symlink, a new node
    assert fresh.ino != d
    assert ops.readlink(fresh.ino) == os.fsencode(secret)
