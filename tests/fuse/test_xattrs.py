"""Extended attributes through a real mount.

With ``--xattrs`` user.* attributes pass through to the host file: set, get,
list and remove on a rw mapping change the host at once, and a ro mapping can
be read but not changed (EPERM, host untouched).  Without ``--xattrs`` every
xattr call fails with EOPNOTSUPP.  The host is ext4 (user xattrs supported).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import NamedTuple

import pytest


class XattrMount(NamedTuple):
    rw_host: Path
    ro_host: Path
    rw: Path  # rw_host seen through the mount
    ro: Path  # ro_host seen through the mount


def _mount(sandboxfs_mount, workdir: Path, *extra: str) -> XattrMount:
    rw_host, ro_host = workdir / "rw-file", workdir / "ro-file"
    rw_host.write_bytes(b"rw")
    ro_host.write_bytes(b"ro")
    os.setxattr(ro_host, "user.origin", b"host")
    mount = sandboxfs_mount([
        "--mapping", f"rw:/rw-file:{rw_host}", "--mapping", f"ro:/ro-file:{ro_host}", *extra,
    ])
    return XattrMount(rw_host, ro_host, mount / "rw-file", mount / "ro-file")


@pytest.fixture
def with_xattrs(sandboxfs_mount, workdir) -> XattrMount:
    return _mount(sandboxfs_mount, workdir, "--xattrs")


@pytest.fixture
def without_xattrs(sandboxfs_mount, workdir) -> XattrMount:
    return _mount(sandboxfs_mount, workdir)


def test_set_through_mount_is_on_host(with_xattrs):
    os.setxattr(with_xattrs.rw, "user.colour", b"blue")
    assert os.getxattr(with_xattrs.rw_host, "user.colour") == b"blue"
    assert os.getxattr(with_xattrs.rw, "user.colour") == b"blue"


def test_set_on_host_is_seen_through_mount(with_xattrs):
    os.setxattr(with_xattrs.rw_host, "user.size", b"large")
    assert os.getxattr(with_xattrs.rw, "user.size") == b"large"


def test_list(with_xattrs):
    os.setxattr(with_xattrs.rw, "user.a", b"1")
    os.setxattr(with_xattrs.rw, "user.b", b"2")
    assert sorted(os.listxattr(with_xattrs.rw)) == ["user.a", "user.b"]
    assert sorted(os.listxattr(with_xattrs.rw_host)) == ["user.a", "user.b"]


def test_remove(with_xattrs):
    os.setxattr(with_xattrs.rw_host, "user.gone", b"soon")
    os.removexattr(with_xattrs.rw, "user.gone")
    assert "user.gone" not in os.listxattr(with_xattrs.rw_host)
    with pytest.raises(OSError) as caught:
        os.getxattr(with_xattrs.rw, "user.gone")
    assert caught.value.errno == errno.ENODATA


def test_get_missing_attribute_is_enodata(with_xattrs):
    with pytest.raises(OSError) as caught:
        os.getxattr(with_xattrs.rw, "user.never-set")
    assert caught.value.errno == errno.ENODATA


def test_read_only_file_can_be_read(with_xattrs):
    assert os.getxattr(with_xattrs.ro, "user.origin") == b"host"
    assert os.listxattr(with_xattrs.ro) == ["user.origin"]


@pytest.mark.parametrize("change", [
    lambda path: os.setxattr(path, "user.origin", b"changed"),
    lambda path: os.setxattr(path, "user.new", b"x"),
    lambda path: os.removexattr(path, "user.origin"),
], ids=["replace", "add", "remove"])
def test_read_only_file_cannot_be_changed(with_xattrs, change):
    with pytest.raises(OSError) as caught:
        change(with_xattrs.ro)
    assert caught.value.errno == errno.EPERM
    assert os.listxattr(with_xattrs.ro_host) == ["user.origin"]
    assert os.getxattr(with_xattrs.ro_host, "user.origin") == b"host"


@pytest.mark.parametrize("call", [
    lambda path: os.getxattr(path, "user.origin"),
    lambda path: os.listxattr(path),
    lambda path: os.setxattr(path, "user.new", b"x"),
    lambda path: os.removexattr(path, "user.origin"),
], ids=["get", "list", "set", "remove"])
@pytest.mark.parametrize("which", ["rw", "ro"])
def test_without_flag_every_call_is_unsupported(without_xattrs, call, which):
    path = getattr(without_xattrs, which)
    host = getattr(without_xattrs, f"{which}_host")
    os.setxattr(without_xattrs.rw_host, "user.origin", b"host")  # present on both hosts
    with pytest.raises(OSError) as caught:
        call(path)
    assert caught.value.errno == errno.EOPNOTSUPP
    assert os.listxattr(host) == ["user.origin"]


def _rw_dir(sandboxfs_mount, workdir: Path) -> tuple[Path, Path]:
    """A rw directory mapping (its entries may be removed): (host, inside)."""
    host = workdir / "rw-dir"
    host.mkdir()
    return host, sandboxfs_mount(["--mapping", f"rw:/rw:{host}", "--xattrs"]) / "rw"


def test_calls_on_an_fd_of_an_unlinked_file_act_on_the_open_file(sandboxfs_mount, workdir):
    _host, inside = _rw_dir(sandboxfs_mount, workdir)
    (inside / "f").write_bytes(b"data")
    os.setxattr(inside / "f", "user.kept", b"yes")
    fd = os.open(inside / "f", os.O_RDWR)
    try:
        os.unlink(inside / "f")
        assert os.getxattr(fd, "user.kept") == b"yes"
        assert "user.kept" in os.listxattr(fd)
        os.setxattr(fd, "user.added", b"later")
        assert os.getxattr(fd, "user.added") == b"later"
        os.removexattr(fd, "user.kept")
        assert "user.kept" not in os.listxattr(fd)
    finally:
        os.close(fd)


def test_calls_on_an_fd_of_a_removed_directory_act_on_it(sandboxfs_mount, workdir):
    _host, inside = _rw_dir(sandboxfs_mount, workdir)
    (inside / "sub").mkdir()
    fd = os.open(inside / "sub", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.setxattr(fd, "user.a", b"1")
        os.rmdir(inside / "sub")
        assert os.getxattr(fd, "user.a") == b"1"
        os.setxattr(fd, "user.b", b"2")
        assert sorted(os.listxattr(fd)) == ["user.a", "user.b"]
    finally:
        os.close(fd)
