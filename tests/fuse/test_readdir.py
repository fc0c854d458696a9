"""Directory listings through a real mount.

Covers: a very large host directory lists completely with unique inode
numbers; listing offsets stay valid while entries come and go (two open
handles interleaved, entries created and deleted between reads) and
telldir/seekdir return to the same entry; nested mappings overlay the host
entry of the same name exactly once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import stat
from pathlib import Path

import pytest

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.opendir.restype = ctypes.c_void_p
_libc.opendir.argtypes = [ctypes.c_char_p]
_libc.readdir.restype = ctypes.c_void_p
_libc.readdir.argtypes = [ctypes.c_void_p]
_libc.telldir.restype = ctypes.c_long
_libc.telldir.argtypes = [ctypes.c_void_p]
_libc.seekdir.restype = None
_libc.seekdir.argtypes = [ctypes.c_void_p, ctypes.c_long]
_libc.closedir.argtypes = [ctypes.c_void_p]
# struct dirent on Linux/glibc (64-bit): d_ino, d_off (8 bytes each), d_reclen (2), d_type (1), d_name
_D_NAME_OFFSET = 19


def make_empty_files(directory: Path, names) -> None:
    for name in names:
        os.close(os.open(directory / name, os.O_CREAT | os.O_WRONLY, 0o644))


def mount_dir(sandboxfs_mount, host: Path, *extra: str) -> Path:
    mount = sandboxfs_mount(["--mapping", f"rw:/dir:{host}", *extra])
    return mount / "dir"


@pytest.fixture
def host(workdir: Path) -> Path:
    path = workdir / "host"
    path.mkdir()
    return path


class CDir:
    """A libc DIR* stream, for telldir/seekdir, which Python does not expose."""

    def __init__(self, path: Path) -> None:
        self.dirp = _libc.opendir(os.fsencode(path))
        if not self.dirp:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))

    def read(self) -> str | None:
        """The next name other than '.'/'..', or None at the end."""
        while True:
            entry = _libc.readdir(self.dirp)
            if not entry:
                return None
            name = ctypes.string_at(entry + _D_NAME_OFFSET).decode()
            if name not in (".", ".."):
                return name

    def tell(self) -> int:
        return _libc.telldir(self.dirp)

    def seek(self, position: int) -> None:
        _libc.seekdir(self.dirp, position)

    def close(self) -> None:
        _libc.closedir(self.dirp)


# -- a large directory -------------------------------------------------------------------


def test_hundred_thousand_entries_list_completely(sandboxfs_mount, host):
    names = {f"entry-{i:06d}" for i in range(100_000)}
    make_empty_files(host, names)
    inside = mount_dir(sandboxfs_mount, host)
    listed = os.listdir(inside)
    assert len(listed) == len(names)
    assert set(listed) == names
    with os.scandir(inside) as entries:
        inodes = [entry.inode() for entry in entries]
    assert len(inodes) == len(names)
    assert len(set(inodes)) == len(inodes)


# -- offsets stay valid while the directory changes --------------------------------------


def _read_some(iterator, seen: list[str], count: int) -> bool:
    """Append up to ``count`` names from ``iterator`` to ``seen``; False once it is exhausted."""
    for _ in range(count):
        entry = next(iterator, None)
        if entry is None:
            return False
        seen.append(entry.name)
    return True


def test_interleaved_listings_while_entries_come_and_go(sandboxfs_mount, host):
    # Long names so that one getdents buffer holds only a part of the listing.
    stable = {f"stable-{i:05d}-" + "x" * 100 for i in range(3000)}
    doomed = [f"doomed-{i:05d}" for i in range(600)]
    make_empty_files(host, stable)
    make_empty_files(host, doomed)
    inside = mount_dir(sandboxfs_mount, host)

    listings: tuple[list[str], list[str]] = ([], [])
    deleted: list[str] = []
    created: list[str] = []
    with os.scandir(inside) as first, os.scandir(inside) as second:
        going = [True, True]
        while any(going):
            for i, iterator in enumerate((first, second)):
                going[i] = going[i] and _read_some(iterator, listings[i], 50)
            # Change the directory through the mount between reads.
            for name in doomed[len(deleted):len(deleted) + 10]:
                os.unlink(inside / name)
                deleted.append(name)
            new = [f"new-{len(created) + i:05d}" for i in range(10)]
            make_empty_files(inside, new)
            created.extend(new)

    assert deleted and created
    for seen in listings:
        assert len(seen) == len(set(seen)), "a name was listed twice"
        assert stable <= set(seen), "an entry that existed throughout was skipped"
        assert set(seen) <= stable | set(doomed) | set(created)
    assert set(os.listdir(host)) == (stable | set(doomed) | set(created)) - set(deleted)


def test_seekdir_returns_to_the_same_entry(sandboxfs_mount, host):
    make_empty_files(host, (f"name-{i:04d}-" + "y" * 100 for i in range(2000)))
    inside = mount_dir(sandboxfs_mount, host)
    directory = CDir(inside)
    try:
        for _ in range(10):
            assert directory.read() is not None
        saved = directory.tell()
        following = directory.read()
        rest = []
        while (name := directory.read()) is not None:  # past several getdents buffers
            rest.append(name)
        assert len(rest) == 2000 - 11
        directory.seek(saved)
        assert directory.read() == following
        assert directory.read() == rest[0]
    finally:
        directory.close()


def test_seekdir_while_the_directory_changes(sandboxfs_mount, host):
    make_empty_files(host, (f"name-{i:02d}" for i in range(50)))
    inside = mount_dir(sandboxfs_mount, host)
    directory = CDir(inside)
    try:
        before = [directory.read() for _ in range(20)]
        saved = directory.tell()
        following = directory.read()
        make_empty_files(inside, ["added"])
        for name in before[:5]:  # entries before the saved position: a re-listing would shift
            os.unlink(inside / name)
        directory.seek(saved)
        assert directory.read() == following
    finally:
        directory.close()


# -- overlays -----------------------------------------------------------------------------


def test_overlays_are_listed_once_and_hide_the_host_entry(sandboxfs_mount, workdir, host):
    (host / "plain").write_bytes(b"")
    (host / "shadowed").write_bytes(b"host file")  # hidden by a directory mapping
    (host / "sub").mkdir()
    overlay = workdir / "overlay"
    overlay.mkdir()
    (overlay / "inside-overlay").write_bytes(b"")
    extra = workdir / "extra"
    extra.write_bytes(b"extra file")
    mount = sandboxfs_mount([
        "--mapping", f"rw:/dir:{host}",
        "--mapping", f"ro:/dir/shadowed:{overlay}",
        "--mapping", f"ro:/dir/only-in-mount:{extra}",
        "--mapping", f"ro:/dir/scaffold/deep:{extra}",
    ])
    inside = mount / "dir"
    listed = os.listdir(inside)
    assert sorted(listed) == ["only-in-mount", "plain", "scaffold", "shadowed", "sub"]
    with os.scandir(inside) as entries:
        kinds = {entry.name: entry.is_dir(follow_symlinks=False) for entry in entries}
    assert kinds["shadowed"] is True  # the overlay (a directory), not the host file
    assert stat.S_ISDIR(os.stat(inside / "shadowed").st_mode)
    assert os.listdir(inside / "shadowed") == ["inside-overlay"]
    assert (inside / "only-in-mount").read_bytes() == b"extra file"
    assert os.listdir(inside / "scaffold") == ["deep"]
    assert sorted(os.listdir(host)) == ["plain", "shadowed", "sub"]  # host untouched
