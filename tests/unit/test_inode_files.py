"""A no-open session's files per inode (``fs.inode_files``), on Operations without a mount."""

from __future__ import annotations

import errno
import os

import pytest

from sandboxfs.fs.operations import Operations
from sandboxfs.tree.mapping import Mapping
from sandboxfs.tree.sandboxes import Tree


@pytest.fixture
def ops(tmp_path):
    (tmp_path / "ro").mkdir()
    (tmp_path / "rw").mkdir()
    (tmp_path / "ro" / "a.txt").write_bytes(b"read only\n")
    (tmp_path / "rw" / "b.txt").write_bytes(b"0123456789")
    return Operations(Tree([Mapping.of("/ro", os.fsencode(tmp_path / "ro"), False),
                            Mapping.of("/rw", os.fsencode(tmp_path / "rw"), True)]))


def _ino(ops, path: str) -> int:
    ino = 1
    for part in path.split("/"):
        ino = ops.lookup(ino, part.encode()).ino
    return ino


def test_reads_by_inode_share_one_handle_until_the_kernel_forgets_the_inode(ops):
    ino = _ino(ops, "ro/a.txt")
    fh = ops.inode_fh(ino)
    assert ops.inode_fh(ino) == fh, "one host file per inode"
    assert ops.read(fh, 0, 100) == b"read only\n"
    assert ops.inodes.stats()["handles"] == 1
    ops.forget(ino, 1)
    assert ops.inodes.stats()["handles"] == 0, "forgetting the inode released its file"
    assert ops.inodes.get(ino) is None


def test_a_write_by_inode_reaches_the_host_and_later_reads_see_it(ops, tmp_path):
    ino = _ino(ops, "rw/b.txt")
    assert ops.read(ops.inode_fh(ino), 0, 4) == b"0123"
    writer = ops.inode_fh(ino, writing=True)
    assert ops.write(writer, 2, b"xy") == 2
    assert (tmp_path / "rw" / "b.txt").read_bytes() == b"01xy456789"
    assert ops.read(ops.inode_fh(ino), 0, 100) == b"01xy456789"
    ops.forget(ino, 1)
    assert ops.inodes.stats()["handles"] == 0


def test_a_write_by_inode_to_a_read_only_mapping_is_refused(ops, tmp_path):
    ino = _ino(ops, "ro/a.txt")
    with pytest.raises(OSError) as info:
        ops.inode_fh(ino, writing=True)
    assert info.value.errno in (errno.EROFS, errno.EPERM)
    assert (tmp_path / "ro" / "a.txt").read_bytes() == b"read only\n"
