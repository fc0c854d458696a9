"""Unit tests of ``Tree.file_tops``: a sandbox whose root is mapped to a file (sandboxfs 0.2).

0.2 accepted a CreateSandbox whose first mapping maps "/" to a regular file;
/ID then is that file.  The 0.2 front end turns ``file_tops`` on; the control
protocol and the mount's own root keep requiring directories.  The host side
is a real tree under ``tmp_path``.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from sandboxfs.errors import MappingError
from sandboxfs.tree.lookup import lookup
from sandboxfs.tree.mapping import Mapping
from sandboxfs.tree.nodes import MappedNode
from sandboxfs.tree.sandboxes import Tree


@pytest.fixture
def host(tmp_path: Path) -> Path:
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("body")
    (tmp_path / "link").symlink_to(tmp_path / "file")
    return tmp_path


def root_to(path: Path, writable: bool = False) -> Mapping:
    return Mapping.of("/", str(path), writable)


def file_tree() -> Tree:
    tree = Tree()
    tree.file_tops = True
    return tree


def test_the_control_protocol_keeps_sandbox_tops_directories(host):
    with pytest.raises(MappingError, match="the top of a mount or sandbox must be a directory"):
        Tree().create_sandbox("sb", [root_to(host / "file")])


@pytest.mark.parametrize("name, kind", [("file", stat.S_ISREG), ("link", stat.S_ISLNK)])
def test_with_file_tops_the_sandbox_is_the_file(host, name, kind):
    tree = file_tree()
    tree.create_sandbox("sb", [root_to(host / name, writable=True)])
    found = lookup(tree.root, b"sb")
    assert found is not None
    node, st = found
    assert isinstance(node, MappedNode) and node.overlays is None and node.writable
    assert kind(st.st_mode)
    assert tree.sandboxes[b"sb"].mapping_count == 1
    tree.destroy_sandbox("sb")
    assert lookup(tree.root, b"sb") is None


def test_a_directory_root_is_unchanged_by_file_tops(host):
    tree = file_tree()
    tree.create_sandbox("sb", [root_to(host / "dir"), Mapping.of("/f", str(host / "file"))])
    node, _ = lookup(tree.root, b"sb")
    assert isinstance(node, MappedNode) and set(node.overlays) == {b"f"}


def test_nothing_nests_below_a_file_top(host):
    tree = file_tree()
    with pytest.raises(MappingError) as caught:
        tree.create_sandbox("sb", [root_to(host / "file"), Mapping.of("/a", str(host / "dir"))])
    assert caught.value.details["index"] == 1
    assert caught.value.details["reason"] == (
        f"cannot nest below {host / 'file'}: ENOTDIR (Not a directory)")
    assert b"sb" not in tree.sandboxes


def test_mapping_into_a_file_top_later_is_refused(host):
    tree = file_tree()
    tree.create_sandbox("sb", [root_to(host / "file")])
    with pytest.raises(MappingError, match="cannot nest below .*ENOTDIR"):
        tree.map("sb", [Mapping.of("/a", str(host / "dir"))])
    assert tree.sandboxes[b"sb"].mapping_count == 1


def test_the_mount_root_stays_a_directory(host):
    """FUSE gives the mount's root the mount point's type: a file root would fail with EIO."""
    with pytest.raises(MappingError, match="the top of a mount or sandbox must be a directory"):
        Tree([root_to(host / "file")])
