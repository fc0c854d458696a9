"""Security of a real mount: read-only holds, nothing undeclared is reachable, who may get in.

Covered here (what tests/fuse/test_readonly.py, test_control.py and
test_lifecycle.py already check is not repeated):

* **An adversarial catalogue of modifying syscalls** against one mount with
  ``--xattrs``: every attempt (openat with O_TRUNC / O_CREAT|O_EXCL / O_TMPFILE,
  creat, mknod of a device, renameat2 with RENAME_NOREPLACE / RENAME_EXCHANGE /
  RENAME_WHITEOUT, linkat AT_EMPTY_PATH, fchmod / fchown / futimens /
  fsetxattr on read-only fds, truncate and reopen-for-writing through
  ``/proc/self/fd/N``, ftruncate / fallocate / write / pwritev2 / mmap
  PROT_WRITE MAP_SHARED / copy_file_range / sendfile through an O_RDONLY fd,
  utimensat AT_SYMLINK_NOFOLLOW on a symlink, ...) runs against read-only
  files (discovered in a mapped dir, an explicit file mapping, a file mapping
  in a sandbox) and against directories (a read-only mapped dir, the root of a
  read-only mapping, the mount root scaffold, a sandbox root scaffold, an
  intermediate scaffold).  Each one asserts the exact errno and that a
  snapshot of every host tree (names, inode numbers, modes, owners, sizes,
  mtimes, ctimes, link counts, contents, xattrs) is unchanged.  sandboxfs
  answers EPERM; where the kernel refuses before asking us (an O_RDONLY fd, a
  directory opened for writing, an existing name with O_EXCL) its own errno
  is pinned instead.
* **Escapes**: ``..`` from a mapped dir, a sandbox root and the mount root
  (realpath, openat, O_PATH fds, fchdir then ``chdir("..")`` in a child
  process); odd names (``...``, ``%2e%2e``, backslashes, non-UTF-8, 256
  bytes); undeclared host siblings of mapped files and of a mapped dir's
  parent (ENOENT); symlinks that point out of a mapping (served as symlinks:
  readlink gives the stored text, O_NOFOLLOW gives ELOOP, the client's kernel
  resolves the target in the client's view and sandboxfs never serves it);
  a directory swapped for a symlink (by the caller, through a second view of the
  same host directory) while the kernel still holds it: the server must not
  follow it, for reads or writes.
* **Positive controls**: every attempt that sandboxfs answers with EPERM is run
  once in a read-write directory too, where it must work and (unless it only
  opens) change the host: proof that each attempt reaches the filesystem.
* **The control socket**: the umask at bind(2) and the file's mode between
  bind and chmod (seen from inside the real mount process through audit
  hooks), a poller that watches the path while a mount starts, SO_PEERCRED
  with a 0666 socket (``--control-allow-uid`` of another uid, a peer in the
  mounting user's group, a connected fd handed to root with SCM_RIGHTS).
* **``--allow``** with the real second user ``sbxtest``: self and root keep
  it out of everything (EACCES, also for stat of the mount point); other lets
  it read world-readable files while the kernel enforces permissions on
  0600 files, root-owned directories, scaffolds (default_permissions).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import mmap
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import msgpack
import pytest

from sandboxfs.control.client import Client

from .conftest import SYSTEM_PYTHON, run_as
from .harness import Mount, stop_all, world_traversable_tempdir
from .test_control import RAW_CLIENT_SCRIPT

XATTR = "user.sandboxfs-security"

# -- host trees and snapshots --------------------------------------------------------------


def write(path: Path, content: bytes, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    path.chmod(mode)
    return path


def build_host(host: Path) -> None:
    """The host side of the catalogue mount (see ``catalogue_mount_args``)."""
    ro = host / "ro"
    write(ro / "file", b"read-only\n")
    write(ro / "sub" / "inner", b"inner\n")
    (ro / "sub" / "subsub").mkdir()
    (ro / "empty").mkdir()
    os.symlink("file", ro / "link")
    os.symlink("../outside/secret", ro / "rel-escape")
    os.symlink(str(host / "outside" / "secret"), ro / "abs-escape")
    os.symlink("../outside", ro / "dir-escape")
    for path in (ro / "file", ro / "sub", ro / "sub" / "inner"):
        os.setxattr(path, XATTR, b"kept")
    write(host / "ro-file", b"explicit file mapping\n")
    os.setxattr(host / "ro-file", XATTR, b"kept")
    write(host / "ro-file-sibling", b"declared nowhere\n")
    write(host / "tool", b"#!/bin/sh\n", 0o755)
    write(host / "rw" / "file", b"read-write\n")
    (host / "rw" / "dir").mkdir()
    (host / "leaf").mkdir()
    write(host / "outside" / "secret", b"outside every mapping\n")
    os.setxattr(host / "outside" / "secret", "user.outside", b"not ours")


def catalogue_mount_args(host: Path) -> list[str]:
    """Mount level: /ro, /ro-file, /rw, /scaffold/leaf (so / and /scaffold are scaffolds)."""
    mappings = [
        f"ro:/ro:{host}/ro",
        f"ro:/ro-file:{host}/ro-file",
        f"rw:/rw:{host}/rw",
        f"rw:/scaffold/leaf:{host}/leaf",
    ]
    return ["--xattrs", *(arg for m in mappings for arg in ("--mapping", m))]


def sandbox_mappings(host: Path) -> list[tuple]:
    """Sandbox s1: /src (ro dir), /tool (ro file), /deep/er/file, /deep/f; /deep, /deep/er scaffolds."""
    return [
        ("/src", host / "ro"),
        ("/tool", host / "tool"),
        ("/deep/er/file", host / "ro-file"),
        ("/deep/f", host / "tool"),
        ("/out", host / "rw", True),
    ]


Snapshot = dict[str, tuple]


def snapshot(root: Path) -> Snapshot:
    """Everything a modification could change, for every object below ``root`` (and itself)."""
    result: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            path = os.path.normpath(os.path.join(dirpath, name))
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                content: object = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            else:
                content = None
            xattrs = tuple(sorted(
                (n, os.getxattr(path, n, follow_symlinks=False))
                for n in os.listxattr(path, follow_symlinks=False)
            ))
            result[os.path.relpath(path, root)] = (
                st.st_ino, st.st_mode, st.st_uid, st.st_gid, st.st_nlink, st.st_size,
                st.st_mtime_ns, st.st_ctime_ns, content, xattrs,
            )
    return result


def control_path(mount: Mount) -> Path:
    return mount.mount_point.with_name(mount.mount_point.name + ".sock")


# -- syscalls the os module lacks ------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_SYMLINK_FOLLOW = 0x400
RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT = 1, 2, 4


def _check(result: int, *names: object) -> int:
    if result == -1:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number), *(str(n) for n in names[:1]))
    return result


def renameat2(old: Path, new: Path, flags: int) -> None:
    _check(_libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new),
                           ctypes.c_uint(flags)), old)


def creat(path: Path) -> None:
    os.close(_check(_libc.creat(os.fsencode(path), 0o644), path))


def fallocate(fd: int, length: int) -> None:
    _check(_libc.fallocate(fd, 0, ctypes.c_long(0), ctypes.c_long(length)))


def linkat_follow(old: str, new: Path) -> None:
    """linkat(AT_SYMLINK_FOLLOW): os.link calls link(2), which would link a /proc magic link itself."""
    _check(_libc.linkat(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new),
                        AT_SYMLINK_FOLLOW), new)


def linkat_empty_path(fd: int, new: Path) -> None:
    """linkat(fd, "", AT_FDCWD, new, AT_EMPTY_PATH): give an open file a new name."""
    _check(_libc.linkat(fd, b"", AT_FDCWD, os.fsencode(new), AT_EMPTY_PATH), new)


# -- the catalogue mount -----------------------------------------------------------------------


class World(NamedTuple):
    host: Path  # every host tree lives below this
    mount: Path  # the mount point
    client: Client


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    """One mount shared by the catalogue (each attempt checks the host itself)."""
    workdir = world_traversable_tempdir("sbxsec-")
    mounts: list[Mount] = []
    try:
        host = workdir / "host"
        build_host(host)
        (workdir / "mnt").mkdir()
        mount = Mount(workdir / "mnt", catalogue_mount_args(host), workdir / "sandboxfs.log")
        mounts.append(mount)
        mount.start()
        with Client(control_path(mount)) as client:
            client.create_sandbox("s1", sandbox_mappings(host))
            yield World(host, mount.mount_point, client)
    finally:
        try:
            stop_all(mounts)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


class Target(NamedTuple):
    path: str  # relative to the mount point
    file_child: str = ""  # for directories: an existing child file ...
    dir_child: str = ""  # ... and an existing, empty child directory (or a mapping)


FILE_TARGETS: dict[str, Target] = {
    "ro-mapped-file": Target("ro/file"),
    "ro-file-mapping": Target("ro-file"),
    "sandbox-file-mapping": Target("s1/deep/er/file"),
}

DIR_TARGETS: dict[str, Target] = {
    "ro-mapped-dir": Target("ro/sub", "inner", "subsub"),
    "ro-mapping-root": Target("ro", "file", "empty"),
    "mount-root": Target("", "ro-file", "ro"),
    "sandbox-root": Target("s1", "tool", "src"),
    "intermediate-scaffold": Target("s1/deep", "f", "er"),
}


class Attempt(NamedTuple):
    mount: Path
    target: Path
    file_child: Path
    dir_child: Path
    rw: Path  # a read-write directory holding ``file`` and ``dir``: the other end of moves

    @property
    def parent(self) -> Path:
        return self.target.parent


def open_close(path: Path, flags: int, dir_fd: int | None = None) -> None:
    os.close(os.open(path, flags, 0o644, dir_fd=dir_fd))


def with_fd(path: Path, flags: int, action: Callable[[int], object]) -> None:
    """Open ``path`` (expected to work), then run ``action(fd)``; always close."""
    fd = os.open(path, flags)
    try:
        action(fd)
    finally:
        os.close(fd)


def via_parent_fd(path: Path, action: Callable[[int, str], object]) -> None:
    """Run ``action(dirfd, name)`` with an O_PATH fd of ``path``'s directory (the *at calls)."""
    with_fd(path.parent, os.O_PATH | os.O_DIRECTORY, lambda fd: action(fd, path.name))


def proc_fd(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def mmap_shared_writable(fd: int) -> None:
    mmap.mmap(fd, 4, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE).close()


def copy_into(fd_out: int, source: Path) -> None:
    with_fd(source, os.O_RDONLY, lambda fd_in: os.copy_file_range(fd_in, fd_out, 4))


def sendfile_into(fd_out: int, source: Path) -> None:
    with_fd(source, os.O_RDONLY, lambda fd_in: os.sendfile(fd_out, fd_in, 0, 4))


EPERM, EBADF, EINVAL, EACCES, EEXIST, EISDIR = (
    errno.EPERM, errno.EBADF, errno.EINVAL, errno.EACCES, errno.EEXIST, errno.EISDIR)
RDONLY = os.O_RDONLY

# name -> (errno, attempt on a read-only *file* ``a.target``)
FILE_ATTEMPTS: dict[str, tuple[int, Callable[[Attempt], object]]] = {
    "open O_WRONLY": (EPERM, lambda a: open_close(a.target, os.O_WRONLY)),
    "open O_RDWR": (EPERM, lambda a: open_close(a.target, os.O_RDWR)),
    "open O_RDONLY|O_TRUNC": (EPERM, lambda a: open_close(a.target, RDONLY | os.O_TRUNC)),
    "open O_WRONLY|O_APPEND": (EPERM, lambda a: open_close(a.target, os.O_WRONLY | os.O_APPEND)),
    "open O_CREAT|O_WRONLY existing": (
        EPERM, lambda a: open_close(a.target, os.O_CREAT | os.O_WRONLY)),
    "openat O_TRUNC": (EPERM, lambda a: via_parent_fd(
        a.target, lambda d, n: open_close(n, os.O_WRONLY | os.O_TRUNC, dir_fd=d))),
    "openat O_CREAT|O_EXCL existing": (EEXIST, lambda a: via_parent_fd(
        a.target, lambda d, n: open_close(n, os.O_CREAT | os.O_EXCL | os.O_WRONLY, dir_fd=d))),
    "creat existing": (EPERM, lambda a: creat(a.target)),
    "truncate": (EPERM, lambda a: os.truncate(a.target, 0)),
    "truncate extend": (EPERM, lambda a: os.truncate(a.target, 1 << 20)),
    "ftruncate O_RDONLY fd": (EINVAL, lambda a: with_fd(a.target, RDONLY, lambda fd: os.ftruncate(fd, 0))),
    "truncate /proc/self/fd of O_RDONLY fd": (
        EPERM, lambda a: with_fd(a.target, RDONLY, lambda fd: os.truncate(proc_fd(fd), 0))),
    "truncate /proc/self/fd of O_PATH fd": (
        EPERM, lambda a: with_fd(a.target, os.O_PATH, lambda fd: os.truncate(proc_fd(fd), 0))),
    "reopen /proc/self/fd O_WRONLY": (EPERM, lambda a: with_fd(
        a.target, RDONLY, lambda fd: open_close(Path(proc_fd(fd)), os.O_WRONLY))),
    "reopen O_PATH fd O_RDWR|O_TRUNC": (EPERM, lambda a: with_fd(
        a.target, os.O_PATH, lambda fd: open_close(Path(proc_fd(fd)), os.O_RDWR | os.O_TRUNC))),
    "write O_RDONLY fd": (EBADF, lambda a: with_fd(a.target, RDONLY, lambda fd: os.write(fd, b"x"))),
    "pwritev2 O_RDONLY fd": (EBADF, lambda a: with_fd(
        a.target, RDONLY, lambda fd: os.pwritev(fd, [b"x"], 0, os.RWF_APPEND))),
    "fallocate O_RDONLY fd": (EBADF, lambda a: with_fd(a.target, RDONLY, lambda fd: fallocate(fd, 4096))),
    "posix_fallocate O_RDONLY fd": (
        EBADF, lambda a: with_fd(a.target, RDONLY, lambda fd: os.posix_fallocate(fd, 0, 4096))),
    "mmap PROT_WRITE MAP_SHARED O_RDONLY fd": (
        EACCES, lambda a: with_fd(a.target, RDONLY, mmap_shared_writable)),
    "copy_file_range into O_RDONLY fd": (EBADF, lambda a: with_fd(
        a.target, RDONLY, lambda fd: copy_into(fd, a.mount / "rw/file"))),
    "sendfile into O_RDONLY fd": (EBADF, lambda a: with_fd(
        a.target, RDONLY, lambda fd: sendfile_into(fd, a.mount / "rw/file"))),
    "chmod": (EPERM, lambda a: os.chmod(a.target, 0o777)),
    "fchmod O_RDONLY fd": (EPERM, lambda a: with_fd(a.target, RDONLY, lambda fd: os.fchmod(fd, 0o600))),
    "fchmod O_PATH fd via /proc": (EPERM, lambda a: with_fd(
        a.target, os.O_PATH, lambda fd: os.chmod(proc_fd(fd), 0o600))),
    "chown": (EPERM, lambda a: os.chown(a.target, 1234, 5678)),
    "fchown O_RDONLY fd": (EPERM, lambda a: with_fd(a.target, RDONLY, lambda fd: os.fchown(fd, 1234, -1))),
    "utime": (EPERM, lambda a: os.utime(a.target, ns=(1, 2))),
    "futimens O_RDONLY fd": (EPERM, lambda a: with_fd(a.target, RDONLY, lambda fd: os.utime(fd, ns=(1, 2)))),
    "utimensat AT_SYMLINK_NOFOLLOW": (EPERM, lambda a: via_parent_fd(
        a.target, lambda d, n: os.utime(n, ns=(1, 2), dir_fd=d, follow_symlinks=False))),
    "setxattr": (EPERM, lambda a: os.setxattr(a.target, XATTR, b"changed")),
    "setxattr XATTR_CREATE new": (
        EPERM, lambda a: os.setxattr(a.target, "user.new", b"v", os.XATTR_CREATE)),
    "fsetxattr O_RDONLY fd": (EPERM, lambda a: with_fd(
        a.target, RDONLY, lambda fd: os.setxattr(fd, XATTR, b"changed"))),
    "removexattr": (EPERM, lambda a: os.removexattr(a.target, XATTR)),
    "fremovexattr O_RDONLY fd": (
        EPERM, lambda a: with_fd(a.target, RDONLY, lambda fd: os.removexattr(fd, XATTR))),
    "unlink": (EPERM, lambda a: os.unlink(a.target)),
    "rename within": (EPERM, lambda a: os.rename(a.target, a.parent / "renamed")),
    "rename out to rw": (EPERM, lambda a: os.rename(a.target, a.rw / "moved")),
    "rename rw file over it": (EPERM, lambda a: os.rename(a.rw / "file", a.target)),
    "renameat2 RENAME_EXCHANGE with rw file": (
        EPERM, lambda a: renameat2(a.target, a.rw / "file", RENAME_EXCHANGE)),
    "link out to rw": (EPERM, lambda a: os.link(a.target, a.rw / "hard")),
    "linkat AT_EMPTY_PATH out to rw": (
        EPERM, lambda a: with_fd(a.target, RDONLY, lambda fd: linkat_empty_path(fd, a.rw / "hard"))),
    "link /proc/self/fd out to rw": (EPERM, lambda a: with_fd(
        a.target, os.O_PATH, lambda fd: linkat_follow(proc_fd(fd), a.rw / "hard"))),
}

# name -> (errno, attempt on a read-only *directory* ``a.target`` and its children)
DIR_ATTEMPTS: dict[str, tuple[int, Callable[[Attempt], object]]] = {
    "create": (EPERM, lambda a: open_close(a.target / "new", os.O_CREAT | os.O_WRONLY)),
    "openat O_CREAT|O_EXCL": (EPERM, lambda a: with_fd(a.target, os.O_PATH | os.O_DIRECTORY, lambda d:
        open_close("new", os.O_CREAT | os.O_EXCL | os.O_RDWR, dir_fd=d))),
    "creat": (EPERM, lambda a: creat(a.target / "new")),
    "open O_TMPFILE": (errno.EOPNOTSUPP, lambda a: open_close(a.target, os.O_TMPFILE | os.O_WRONLY)),
    "open dir O_WRONLY": (EISDIR, lambda a: open_close(a.target, os.O_WRONLY)),
    "open dir O_RDONLY|O_TRUNC": (EISDIR, lambda a: open_close(a.target, RDONLY | os.O_TRUNC)),
    "mkdir": (EPERM, lambda a: os.mkdir(a.target / "newdir")),
    "mkdirat": (EPERM, lambda a: with_fd(
        a.target, os.O_PATH | os.O_DIRECTORY, lambda d: os.mkdir("newdir", dir_fd=d))),
    "mknod regular": (EPERM, lambda a: os.mknod(a.target / "node", stat.S_IFREG | 0o644)),
    "mknod char device": (
        EPERM, lambda a: os.mknod(a.target / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))),
    "mkfifo": (EPERM, lambda a: os.mkfifo(a.target / "fifo")),
    "symlink": (EPERM, lambda a: os.symlink("/etc/passwd", a.target / "newlink")),
    "link rw file in": (EPERM, lambda a: os.link(a.rw / "file", a.target / "hard")),
    "linkat AT_EMPTY_PATH rw file in": (EPERM, lambda a: with_fd(
        a.rw / "file", RDONLY, lambda fd: linkat_empty_path(fd, a.target / "hard"))),
    "link child out to rw": (EPERM, lambda a: os.link(a.file_child, a.rw / "hard")),
    "unlink child file": (EPERM, lambda a: os.unlink(a.file_child)),
    "unlinkat AT_REMOVEDIR child dir": (EPERM, lambda a: with_fd(
        a.target, os.O_PATH | os.O_DIRECTORY, lambda d: os.rmdir(a.dir_child.name, dir_fd=d))),
    "rmdir child dir": (EPERM, lambda a: os.rmdir(a.dir_child)),
    "rename child within": (EPERM, lambda a: os.rename(a.file_child, a.target / "renamed")),
    "rename child dir within": (EPERM, lambda a: os.rename(a.dir_child, a.target / "moved")),
    "rename child out to rw": (EPERM, lambda a: os.rename(a.file_child, a.rw / "moved")),
    "rename rw file in": (EPERM, lambda a: os.rename(a.rw / "file", a.target / "moved")),
    "rename rw dir in": (EPERM, lambda a: os.rename(a.rw / "dir", a.target / "moved")),
    "renameat2 RENAME_NOREPLACE within": (
        EPERM, lambda a: renameat2(a.file_child, a.target / "renamed", RENAME_NOREPLACE)),
    "renameat2 RENAME_NOREPLACE rw file in": (
        EPERM, lambda a: renameat2(a.rw / "file", a.target / "moved", RENAME_NOREPLACE)),
    "renameat2 RENAME_EXCHANGE child with rw": (
        EPERM, lambda a: renameat2(a.file_child, a.rw / "file", RENAME_EXCHANGE)),
    "renameat2 RENAME_EXCHANGE children": (
        EPERM, lambda a: renameat2(a.file_child, a.dir_child, RENAME_EXCHANGE)),
    "renameat2 RENAME_WHITEOUT within": (
        EPERM, lambda a: renameat2(a.file_child, a.target / "renamed", RENAME_WHITEOUT)),
    "renameat2 RENAME_WHITEOUT rw file in": (
        EPERM, lambda a: renameat2(a.rw / "file", a.target / "moved", RENAME_WHITEOUT)),
    "chmod": (EPERM, lambda a: os.chmod(a.target, 0o777)),
    "fchmod O_DIRECTORY fd": (EPERM, lambda a: with_fd(
        a.target, RDONLY | os.O_DIRECTORY, lambda fd: os.fchmod(fd, 0o700))),
    "chown": (EPERM, lambda a: os.chown(a.target, 1234, 5678)),
    "fchown O_DIRECTORY fd": (EPERM, lambda a: with_fd(
        a.target, RDONLY | os.O_DIRECTORY, lambda fd: os.fchown(fd, -1, 5678))),
    "utime now": (EPERM, lambda a: os.utime(a.target)),
    "futimens O_DIRECTORY fd": (EPERM, lambda a: with_fd(
        a.target, RDONLY | os.O_DIRECTORY, lambda fd: os.utime(fd, ns=(1, 2)))),
    "setxattr": (EPERM, lambda a: os.setxattr(a.target, "user.new", b"v")),
    "fsetxattr O_DIRECTORY fd": (EPERM, lambda a: with_fd(
        a.target, RDONLY | os.O_DIRECTORY, lambda fd: os.setxattr(fd, "user.new", b"v"))),
    "removexattr": (EPERM, lambda a: os.removexattr(a.target, XATTR)),
}


def _cases(targets: dict[str, Target], attempts: dict) -> list:
    return [
        pytest.param(target_name, name, id=f"{target_name}-{name}")
        for target_name in targets
        for name in attempts
    ]


def run_attempt(world: World, target: Target, name: str, attempts: dict) -> None:
    """Run one attempt; assert its errno and that no host tree changed."""
    number, action = attempts[name]
    base = world.mount / target.path if target.path else world.mount
    attempt = Attempt(world.mount, base, base / target.file_child, base / target.dir_child,
                      world.mount / "rw")
    before = snapshot(world.host)
    with pytest.raises(OSError) as info:
        action(attempt)
    got = info.value.errno
    assert got == number, (
        f"{name} on /{target.path}: {errno.errorcode.get(got, got)} ({info.value}), "
        f"wanted {errno.errorcode[number]}")
    assert snapshot(world.host) == before, "the host tree changed"


@pytest.mark.parametrize("target, name", _cases(FILE_TARGETS, FILE_ATTEMPTS))
def test_read_only_file_refuses(world, target, name):
    run_attempt(world, FILE_TARGETS[target], name, FILE_ATTEMPTS)


@pytest.mark.parametrize("target, name", _cases(DIR_TARGETS, DIR_ATTEMPTS))
def test_read_only_directory_refuses(world, target, name):
    run_attempt(world, DIR_TARGETS[target], name, DIR_ATTEMPTS)


# -- the same attempts where they are allowed: proof that each one reaches the filesystem ------

# Attempts that succeed without changing anything when allowed (opening for writing).
NO_CHANGE_WHEN_ALLOWED = {
    "open O_WRONLY", "open O_RDWR", "open O_WRONLY|O_APPEND", "open O_CREAT|O_WRONLY existing",
    "reopen /proc/self/fd O_WRONLY",
}

_control_serial = iter(range(1_000_000))


def fresh_rw_attempt(world: World, kind: str) -> Attempt:
    """A new directory in the read-write mapping (new names: nothing cached by the kernel)."""
    name = f"control{next(_control_serial)}"
    host = world.host / "rw" / name
    write(host / "f", b"victim\n")
    (host / "e").mkdir()
    write(host / "side" / "file", b"side\n")
    (host / "side" / "dir").mkdir()
    for path in (host, host / "f"):
        os.setxattr(path, XATTR, b"kept")
    inside = world.mount / "rw" / name
    target = inside / "f" if kind == "file" else inside
    return Attempt(world.mount, target, inside / "f", inside / "e", inside / "side")


def _allowed_cases(attempts: dict) -> list:
    return [name for name, (number, _) in attempts.items() if number == errno.EPERM]


def run_allowed(world: World, kind: str, name: str, attempts: dict) -> None:
    attempt = fresh_rw_attempt(world, kind)
    before = snapshot(world.host)
    attempts[name][1](attempt)
    if name not in NO_CHANGE_WHEN_ALLOWED:
        assert snapshot(world.host) != before, f"{name} changed nothing even where allowed"


@pytest.mark.parametrize("name", _allowed_cases(FILE_ATTEMPTS))
def test_file_attempt_works_on_a_read_write_file(world, name):
    run_allowed(world, "file", name, FILE_ATTEMPTS)


@pytest.mark.parametrize("name", _allowed_cases(DIR_ATTEMPTS))
def test_directory_attempt_works_in_a_read_write_directory(world, name):
    run_allowed(world, "dir", name, DIR_ATTEMPTS)


# -- escapes: nothing outside the declared mappings is reachable ------------------------------

MOUNT_ROOT_NAMES = ["ro", "ro-file", "rw", "s1", "scaffold"]
SANDBOX_NAMES = ["deep", "out", "src", "tool"]
RO_NAMES = ["abs-escape", "dir-escape", "empty", "file", "link", "rel-escape", "sub"]


def identity(path: Path | str | int) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def errno_of(action: Callable[[], object]) -> int | None:
    try:
        action()
    except OSError as exc:
        return exc.errno
    return None


@pytest.mark.parametrize("inside, expected", [
    ("ro/..", ""),
    ("ro/sub/..", "ro"),
    ("ro/sub/subsub/../../..", ""),
    ("s1/..", ""),
    ("s1/src/..", "s1"),
    ("s1/src/sub/../..", "s1"),
    ("s1/deep/er/..", "s1/deep"),
    ("s1/deep/er/../../..", ""),
    ("scaffold/leaf/..", "scaffold"),
])
def test_dotdot_stays_in_the_mount_tree(world, inside, expected):
    """``..`` of a mapped dir is its parent in the mount, never its parent on the host."""
    path, parent = world.mount / inside, world.mount / expected

    assert identity(path) == identity(parent)
    assert sorted(os.listdir(path)) == sorted(os.listdir(parent))
    assert os.path.realpath(path) == os.path.realpath(parent)


def test_listings_hold_only_declared_names(world):
    assert sorted(os.listdir(world.mount)) == MOUNT_ROOT_NAMES
    assert sorted(os.listdir(world.mount / "s1")) == SANDBOX_NAMES
    assert sorted(os.listdir(world.mount / "s1/src")) == RO_NAMES
    assert sorted(os.listdir(world.mount / "s1/deep")) == ["er", "f"]
    assert os.listdir(world.mount / "s1/deep/er") == ["file"]
    assert os.listdir(world.mount / "scaffold") == ["leaf"]


def test_mount_root_dotdot_is_the_mount_points_parent(world):
    """At the mount root ``..`` leaves the mount for the mount point's parent (the client's view)."""
    outer = world.mount.parent

    assert identity(world.mount / "..") == identity(outer)
    assert identity(world.mount / "s1/src/../../..") == identity(outer)
    assert os.stat(world.mount / "..").st_dev != os.stat(world.mount).st_dev


@pytest.mark.parametrize("flags", [os.O_RDONLY | os.O_DIRECTORY, os.O_PATH | os.O_DIRECTORY],
                         ids=["O_RDONLY", "O_PATH"])
def test_openat_dotdot_walks_up_the_mount_tree(world, flags):
    expected = ["s1/src/sub", "s1/src", "s1", ""]
    fd = os.open(world.mount / expected[0], flags)
    seen = []
    try:
        for _ in expected:
            seen.append(identity(fd))
            parent = os.open("..", flags, dir_fd=fd)
            os.close(fd)
            fd = parent
        seen.append(identity(fd))  # one more: out of the mount
    finally:
        os.close(fd)

    assert seen == [identity(world.mount / p) for p in expected] + [identity(world.mount.parent)]


FCHDIR_UP_SCRIPT = """
import json, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
os.fchdir(fd)
steps = []
for _ in range(int(sys.argv[2])):
    steps.append([os.getcwd(), sorted(os.listdir("."))])
    os.chdir("..")
steps.append([os.getcwd(), None])
print(json.dumps(steps))
"""


def test_fchdir_into_a_sandbox_then_dotdot(world):
    """A process whose cwd is inside a sandbox climbs the mount tree, then leaves the mount."""
    start = world.mount / "s1/src/sub/subsub"
    result = subprocess.run(
        [sys.executable, "-c", FCHDIR_UP_SCRIPT, str(start), "5"],
        capture_output=True, text=True, timeout=60, cwd="/",
    )
    assert result.returncode == 0, result.stderr
    steps = json.loads(result.stdout)

    assert steps == [
        [str(world.mount / "s1/src/sub/subsub"), []],
        [str(world.mount / "s1/src/sub"), ["inner", "subsub"]],
        [str(world.mount / "s1/src"), RO_NAMES],
        [str(world.mount / "s1"), SANDBOX_NAMES],
        [str(world.mount), MOUNT_ROOT_NAMES],
        [str(world.mount.parent), None],
    ]


# Host names next to mapped objects, and names that look like path tricks.
ODD_NAMES = ["...", "%2e%2e", "..%2f", "..\\", "\\..", ".. ", " ..", "..\u2215..", "\u2024\u2024",
             "ro-file-sibling", "outside", "host", "leaf", "tool"]


@pytest.mark.parametrize("directory", ["", "s1", "ro", "s1/src/sub", "s1/deep", "s1/deep/er", "scaffold"])
def test_undeclared_and_odd_names_are_enoent(world, directory):
    base = world.mount / directory
    declared = set(os.listdir(base))
    for name in ODD_NAMES:
        if name in declared:
            continue
        assert errno_of(lambda: os.lstat(base / name)) == errno.ENOENT, name
    assert errno_of(lambda: os.lstat(os.fsencode(base) + b"/\xff..")) == errno.ENOENT



@pytest.mark.parametrize("directory", [
    "ro", "s1/src/sub",
    pytest.param("", id="mount-root"),
    pytest.param("s1", id="sandbox-root"),
    pytest.param("s1/deep", id="intermediate-scaffold"),
])
def test_overlong_name_is_enametoolong(world, directory):
    base = world.mount / directory
    assert errno_of(lambda: os.lstat(base / ("x" * 256))) == errno.ENAMETOOLONG
    assert errno_of(lambda: os.mkdir(base / ("y" * 256))) == errno.ENAMETOOLONG


@pytest.mark.parametrize("inside", [
    "ro-file-sibling",  # host sibling of the file mapping /ro-file
    "s1/deep/er/ro-file",  # the host name of the file mapped as /deep/er/file
    "s1/deep/er/ro-file-sibling",  # its host sibling
    "s1/deep/tool",  # the host name of the file mapped as /deep/f
    "s1/outside",  # host siblings of the mapped dir /src (host: ro)'s parent ...
    "s1/src/../outside",
    "s1/src/../ro-file-sibling",
    "ro/../outside",
    "ro/sub/../../leaf",
    "scaffold/leaf/../../outside",
])
def test_undeclared_host_sibling_is_enoent(world, inside):
    assert errno_of(lambda: os.lstat(world.mount / inside)) == errno.ENOENT


def test_openat_relative_escapes_are_enoent(world):
    fd = os.open(world.mount / "s1/src", os.O_PATH | os.O_DIRECTORY)
    try:
        for relative in ["../outside/secret", "../ro-file-sibling", "../../outside",
                         "../../host/outside/secret", "sub/../../outside"]:
            assert errno_of(lambda: os.open(relative, os.O_RDONLY, dir_fd=fd)) == errno.ENOENT, relative
    finally:
        os.close(fd)
    assert errno_of(lambda: os.lstat(world.mount / "ro-file/x")) == errno.ENOTDIR


def fuse_counts(world: World) -> dict[str, int]:
    return world.client.stats()["fuse_ops"]


def test_symlinks_out_of_a_mapping_are_served_as_links_not_followed(world):
    """The server hands out link text; only the client's kernel resolves it, in the client's view.

    A relative target that climbs out of the mapping resolves inside the mount
    (where nothing undeclared exists: ENOENT); an absolute one resolves in the
    caller's own filesystem view (here the host itself: the caller could open
    it without the mount), and sandboxfs serves no byte of it.
    """
    ro, outside = world.mount / "ro", world.host / "outside"
    mount_dev = os.stat(world.mount).st_dev

    for name, text in [("abs-escape", str(outside / "secret")),
                       ("rel-escape", "../outside/secret"), ("dir-escape", "../outside")]:
        st = os.lstat(ro / name)
        assert stat.S_ISLNK(st.st_mode) and st.st_dev == mount_dev, name
        assert os.readlink(ro / name) == text
        assert errno_of(lambda: os.open(ro / name, os.O_RDONLY | os.O_NOFOLLOW)) == errno.ELOOP
        assert os.listxattr(ro / name, follow_symlinks=False) == []  # not the target's
    assert errno_of(lambda: os.stat(ro / "rel-escape")) == errno.ENOENT
    assert errno_of(lambda: os.listdir(ro / "dir-escape")) == errno.ENOENT
    assert errno_of(lambda: os.stat(ro / "dir-escape/secret")) == errno.ENOENT

    opens, reads = fuse_counts(world).get("open", 0), fuse_counts(world).get("read", 0)
    with open(ro / "abs-escape", "rb") as f:
        assert f.read() == b"outside every mapping\n"
        assert os.fstat(f.fileno()).st_dev != mount_dev  # the host's file, not ours
    counts = fuse_counts(world)
    assert (counts.get("open", 0), counts.get("read", 0)) == (opens, reads)


SWAP_SCRIPT = """
import errno, json, os, sys
view, work, private = sys.argv[1:4]
result = {}
def attempt(key, action):
    try:
        result[key] = action()
    except OSError as exc:
        result[key] = errno.errorcode[exc.errno]
attempt("direct read", lambda: open(private + "/secret").read())
os.mkdir(work + "/sub")
held = os.open(view + "/sub", os.O_RDONLY | os.O_DIRECTORY)  # the other view's node
os.rename(work + "/sub", work + "/sub.old")  # both through the mount, by this user
os.symlink(private, work + "/sub")
def read_at():
    fd = os.open("secret", os.O_RDONLY, dir_fd=held)
    try:
        return os.read(fd, 100).decode()
    finally:
        os.close(fd)
attempt("listdir held", lambda: sorted(os.listdir(held)))
attempt("read through held", read_at)
attempt("read through path", lambda: open(view + "/sub/secret").read())
attempt("create through held", lambda: os.close(os.open("planted", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=held)))
attempt("mkdir through held", lambda: os.mkdir("planted-dir", dir_fd=held))
print(json.dumps(result))
"""

def swap_as_user(sandboxfs_mount, workdir: Path, user, view_type: str) -> tuple[dict, Path]:
    """Mount rw:/work and VIEW_TYPE:/view of one host dir owned by ``user``; run SWAP_SCRIPT as them."""
    shared = workdir / "shared"
    shared.mkdir()
    os.chown(shared, user.pw_uid, user.pw_gid)
    private = workdir / "private"
    write(private / "secret", b"root's secret\n")
    private.chmod(0o700)
    mount = sandboxfs_mount(["--allow", "other", "--ttl", "600", "--no-control",
                             "--mapping", f"rw:/work:{shared}",
                             "--mapping", f"{view_type}:/view:{shared}"])
    result = run_as(user, [SYSTEM_PYTHON, "-c", SWAP_SCRIPT, str(mount / "view"),
                           str(mount / "work"), str(private)], timeout=60)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["direct read"] == "EACCES"  # the setting: the caller may not read it
    return seen, private


def test_directory_swapped_for_a_symlink_is_not_followed_for_reads(
        sandboxfs_mount, workdir, unprivileged_user):
    """A user with a read-write and a read-only view of one host dir swaps a subdir for a symlink.

    Everything happens through the mount, as ``sbxtest``.  The read-only view
    still holds the old directory (an open fd; a cached entry does the same
    for ``--ttl`` seconds).  Looking up a name in it must not resolve the
    symlink on the host side: ``private`` is 0700 root, so the caller cannot
    read its 0644 file directly, and must not through the mount either.
    """
    seen, _ = swap_as_user(sandboxfs_mount, workdir, unprivileged_user, "ro")

    assert "secret" not in seen["listdir held"]
    assert seen["read through held"] in ("ENOENT", "ESTALE", "ELOOP")
    assert seen["read through path"] in ("ENOENT", "ESTALE", "ELOOP")


def test_directory_swapped_for_a_symlink_is_not_followed_for_writes(
        sandboxfs_mount, workdir, unprivileged_user):
    """The same with two read-write views: nothing may be created in the 0700 root dir."""
    seen, private = swap_as_user(sandboxfs_mount, workdir, unprivileged_user, "rw")

    assert sorted(os.listdir(private)) == ["secret"], seen
    assert seen["create through held"] in ("ENOENT", "ESTALE", "ELOOP")
    assert seen["mkdir through held"] in ("ENOENT", "ESTALE", "ELOOP")


# -- the control socket ------------------------------------------------------------------------

AUDIT_WRAPPER = """
import json, os, stat, sys
socket_path, record = sys.argv[1], sys.argv[2]
def note(**fields):
    with open(record, "a") as f:
        f.write(json.dumps(fields) + "\\n")
def hook(event, args):
    if event == "socket.bind" and len(args) > 1 and args[1] == socket_path:
        mask = os.umask(0o077)
        os.umask(mask)
        note(event="bind", umask=mask)
    elif event == "os.chmod" and isinstance(args[0], (str, bytes)) \\
            and os.fsdecode(args[0]) == socket_path:
        st = os.lstat(socket_path)
        note(event="chmod", mode=stat.S_IMODE(st.st_mode), to=args[1])
sys.addaudithook(hook)
from sandboxfs.cli.main import main
sys.exit(main(sys.argv[3:]))
"""


class AuditedMount(Mount):
    """A real mount whose process records the umask at bind(2) and the mode before chmod(2)."""

    def __init__(self, mount_point: Path, args: list[str], log_path: Path, record: Path) -> None:
        super().__init__(mount_point, args, log_path)
        self.record = record
        socket_path = str(self.mount_point) + ".sock"
        self.command = [sys.executable, "-c", AUDIT_WRAPPER, socket_path, str(self.record),
                        "mount", *self.args, str(self.mount_point)]

    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.record.read_text().splitlines()]


@pytest.mark.parametrize("extra, final_mode", [
    ([], 0o600),
    (["--control-allow-uid", "4242"], 0o666),
], ids=["default", "control-allow-uid"])
def test_socket_is_never_wider_than_0600_between_bind_and_chmod(workdir, extra, final_mode):
    """Seen from inside the mount process: bind(2) runs under a umask that masks all but 0600."""
    (workdir / "mnt").mkdir()
    mount = AuditedMount(workdir / "mnt", extra,
                         workdir / "sandboxfs.log", workdir / "audit.jsonl")
    try:
        mount.start()
        events = mount.events()
        socket_path = workdir / "mnt.sock"
        st = os.lstat(socket_path)
    finally:
        mount.stop()

    binds = [e for e in events if e["event"] == "bind"]
    assert len(binds) == 1, events
    assert binds[0]["umask"] & 0o177 == 0o177, f"umask {binds[0]['umask']:o} at bind"
    for chmod in (e for e in events if e["event"] == "chmod"):
        assert chmod["mode"] & 0o177 == 0, f"mode {chmod['mode']:o} before chmod"
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == final_mode
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())


def test_socket_mode_seen_by_a_poller_while_the_mount_starts(sandboxfs_mount, workdir):
    """Another thread lstat()s the path as fast as it can from before the mount starts."""
    socket_path = workdir / "mnt0.sock"
    modes: set[int] = set()
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            try:
                modes.add(stat.S_IMODE(os.lstat(socket_path).st_mode))
            except FileNotFoundError:
                pass

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        sandboxfs_mount([])
        time.sleep(0.05)
    finally:
        done.set()
        poller.join(timeout=10)

    assert modes == {0o600}


LIST_REQUEST = msgpack.packb({"id": 1, "op": "list"}, use_bin_type=True)


def decode_all(data: bytes) -> list:
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(data)
    return list(unpacker)


def error_codes(words: list[str]) -> list[str]:
    assert words[0] == "reply", words
    return [reply["error"]["code"] for reply in decode_all(bytes.fromhex(words[1] if len(words) > 1 else ""))]


def test_socket_shared_with_another_uid_still_refuses_the_rest(sandboxfs_mount, unprivileged_user):
    """``--control-allow-uid`` makes the file 0666: SO_PEERCRED alone then keeps sbxtest out."""
    mount = sandboxfs_mount(["--control-allow-uid", str(unprivileged_user.pw_uid + 1000)])
    assert stat.S_IMODE(os.lstat(control_path(mount)).st_mode) == 0o666

    result = run_as(unprivileged_user, [SYSTEM_PYTHON, "-I", "-c", RAW_CLIENT_SCRIPT,
                                        str(control_path(mount)), LIST_REQUEST.hex()], timeout=60)

    assert result.returncode == 0, result.stderr
    assert error_codes(result.stdout.split()) == ["permission_denied"]


def test_peer_in_the_mounting_users_group_is_refused(sandboxfs_mount, unprivileged_user):
    """SO_PEERCRED is checked by uid: sbxtest with the mounting user's gid as its own is refused."""
    mount = sandboxfs_mount([])
    control_path(mount).chmod(0o666)  # past the file mode, to the credentials check

    result = subprocess.run(
        [SYSTEM_PYTHON, "-I", "-c", RAW_CLIENT_SCRIPT, str(control_path(mount)), LIST_REQUEST.hex()],
        user=unprivileged_user.pw_uid, group=os.getgid(), extra_groups=[os.getgid()],
        capture_output=True, text=True, timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert error_codes(result.stdout.split()) == ["permission_denied"]


PASS_CONNECTION_SCRIPT = """
import socket, sys
channel = socket.socket(fileno=int(sys.argv[2]))
conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
conn.connect(sys.argv[1])
socket.send_fds(channel, [b"x"], [conn.fileno()])
"""


def test_connection_made_by_another_user_stays_refused_when_handed_to_root(
        sandboxfs_mount, unprivileged_user):
    """The credentials are the connecting process's: root writing on sbxtest's connection is refused."""
    mount = sandboxfs_mount([])
    control_path(mount).chmod(0o666)
    ours, theirs = socket.socketpair()
    try:
        result = run_as(unprivileged_user, [SYSTEM_PYTHON, "-I", "-c", PASS_CONNECTION_SCRIPT,
                                            str(control_path(mount)), str(theirs.fileno())],
                        pass_fds=[theirs.fileno()], timeout=60)
        assert result.returncode == 0, result.stderr
        _, fds, _, _ = socket.recv_fds(ours, 1, 1)
    finally:
        ours.close()
        theirs.close()
    with socket.socket(fileno=fds[0]) as conn:
        conn.settimeout(10)
        try:
            conn.sendall(LIST_REQUEST)
        except OSError:
            pass  # already answered and closed
        data = b""
        while chunk := conn.recv(65536):
            data += chunk

    assert [reply["error"]["code"] for reply in decode_all(data)] == ["permission_denied"]


# -- --allow: who besides the mounting user may use the mount ----------------------------------

ALLOW_PROBE_SCRIPT = """
import errno, json, os, sys
m = sys.argv[1]
def attempt(action):
    try:
        action()
        return "OK"
    except OSError as exc:
        return errno.errorcode[exc.errno]
def read(path):
    with open(path) as f:
        f.read()
probes = {
    "stat mount": lambda: os.stat(m),
    "listdir mount": lambda: os.listdir(m),
    "read public": lambda: read(m + "/ro/public"),
    "read private": lambda: read(m + "/ro/private"),
    "read private in rw": lambda: read(m + "/rw/private"),
    "write public in rw": lambda: open(m + "/rw/public", "a").close(),
    "create in rw": lambda: open(m + "/rw/new", "x").close(),
    "mkdir in rw": lambda: os.mkdir(m + "/rw/newdir"),
    "unlink in rw": lambda: os.unlink(m + "/rw/public"),
    "rename in rw": lambda: os.rename(m + "/rw/public", m + "/rw/moved"),
    "chmod in rw": lambda: os.chmod(m + "/rw/public", 0o666),
    "utime now in rw": lambda: os.utime(m + "/rw/public"),
    "mkdir in scaffold": lambda: os.mkdir(m + "/scaffold/newdir"),
    "mkdir in root scaffold": lambda: os.mkdir(m + "/newdir"),
}
print(json.dumps({name: attempt(action) for name, action in probes.items()}))
"""

KEPT_OUT = {name: "EACCES" for name in [
    "stat mount", "listdir mount", "read public", "read private", "read private in rw",
    "write public in rw", "create in rw", "mkdir in rw", "unlink in rw", "rename in rw",
    "chmod in rw", "utime now in rw", "mkdir in scaffold", "mkdir in root scaffold"]}

LET_IN_WITH_PERMISSIONS = {
    "stat mount": "OK",
    "listdir mount": "OK",
    "read public": "OK",
    "read private": "EACCES",
    "read private in rw": "EACCES",
    "write public in rw": "EACCES",
    "create in rw": "EACCES",
    "mkdir in rw": "EACCES",
    "unlink in rw": "EACCES",
    "rename in rw": "EACCES",
    "chmod in rw": "EPERM",  # not the owner
    "utime now in rw": "EACCES",  # neither owner nor writer
    "mkdir in scaffold": "EACCES",  # 0555 root: the kernel refuses before sandboxfs would
    "mkdir in root scaffold": "EACCES",
}


@pytest.mark.parametrize("allow, expected", [
    (None, KEPT_OUT),
    ("self", KEPT_OUT),
    # The mount runs as root, so allow_root should admit no one that self does not.
    ("root", KEPT_OUT),
    ("other", LET_IN_WITH_PERMISSIONS),
], ids=["default", "self", "root", "other"])
def test_allow_and_kernel_permission_checks_for_another_user(
        sandboxfs_mount, workdir, unprivileged_user, allow, expected):
    host = workdir / "host"
    write(host / "ro" / "public", b"public\n", 0o644)
    write(host / "ro" / "private", b"private\n", 0o600)
    write(host / "rw" / "public", b"public\n", 0o644)
    write(host / "rw" / "private", b"private\n", 0o600)
    (host / "rw").chmod(0o755)
    (host / "leaf").mkdir()
    args = ["--no-control", "--mapping", f"ro:/ro:{host}/ro", "--mapping", f"rw:/rw:{host}/rw",
            "--mapping", f"rw:/scaffold/leaf:{host}/leaf"]
    mount = sandboxfs_mount(args if allow is None else ["--allow", allow, *args])
    before = snapshot(host)

    result = run_as(unprivileged_user, [SYSTEM_PYTHON, "-I", "-c", ALLOW_PROBE_SCRIPT,
                                        str(mount.mount_point)], timeout=60)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == expected
    assert snapshot(host) == before
    assert sorted(os.listdir(mount.mount_point)) == ["ro", "rw", "scaffold"]  # root is let in
    assert (mount / "ro/private").read_bytes() == b"private\n"
