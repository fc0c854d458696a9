"""The Operations error boundary, called directly (no mount): which errors become which errno."""

from __future__ import annotations

import errno

import pyfuse3
import pytest

from sandboxfs import ops
from sandboxfs.tree import Tree


async def test_unknown_inode_is_estale():
    operations = ops.Operations(Tree())
    with pytest.raises(pyfuse3.FUSEError) as info:
        await operations.getattr(987654)
    assert info.value.errno == errno.ESTALE


async def test_a_stray_key_error_is_our_bug_and_answers_eio(monkeypatch):
    operations = ops.Operations(Tree())

    def broken(node, name):
        raise KeyError("a bug, not a stale inode")

    monkeypatch.setattr(ops, "lookup", broken)
    with pytest.raises(pyfuse3.FUSEError) as info:
        await operations.lookup(1, b"x")
    assert info.value.errno == errno.EIO
