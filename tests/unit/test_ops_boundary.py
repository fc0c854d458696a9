"""The error boundary of the transports, called directly (no mount): which errors become which errno."""

from __future__ import annotations

import errno

import pyfuse3
import pytest

from sandboxfs.fs import operations as fs_operations
from sandboxfs.fs.interface import StaleError, errno_of
from sandboxfs.fs.operations import Operations
from sandboxfs.fuse.pyfuse3_transport import Pyfuse3Operations
from sandboxfs.tree.sandboxes import Tree


def test_errno_of_keeps_os_errors_and_answers_stale_and_bugs():
    assert errno_of(FileNotFoundError(errno.ENOENT, "x")) == errno.ENOENT
    assert errno_of(OSError("no errno")) == errno.EIO
    assert errno_of(StaleError("inode 9")) == errno.ESTALE
    assert errno_of(KeyError("a bug")) == errno.EIO


async def test_unknown_inode_is_estale():
    handlers = Pyfuse3Operations(Operations(Tree()))
    with pytest.raises(pyfuse3.FUSEError) as info:
        await handlers.getattr(987654)
    assert info.value.errno == errno.ESTALE


async def test_a_stray_key_error_is_our_bug_and_answers_eio(monkeypatch, caplog):
    handlers = Pyfuse3Operations(Operations(Tree()))

    def broken(node, name):
        raise KeyError("a bug, not a stale inode")

    monkeypatch.setattr(fs_operations, "lookup", broken)
    with pytest.raises(pyfuse3.FUSEError) as info:
        await handlers.lookup(1, b"x")
    assert info.value.errno == errno.EIO
    assert "a bug, not a stale inode" in caplog.text
