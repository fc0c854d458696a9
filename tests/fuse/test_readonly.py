"""Read-only parts of a mount refuse every modification and leave the host untouched.

One mount shows:

* ``/ro``            -- a read-only mapping of a dir with a file, a subdir, an
  empty dir and a symlink;
* ``/rw``            -- a read-write mapping, the other end of renames and links,
  holding ``nested`` and ``nested-file``: read-only mappings nested in it;
* ``/scaffold/leaf`` -- a read-write mapping, so ``/scaffold`` (and ``/``) are
  scaffold directories.

Each case runs one modifying syscall (renameat2 RENAME_EXCHANGE through ctypes too), asserts its errno (EPERM) and that a
snapshot of every host tree (names, contents, modes, owners, times, xattrs)
is unchanged.  The last tests cover xattrs without ``--xattrs`` (EOPNOTSUPP)
and an unprivileged caller (permission checks come first: EACCES).
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from pathlib import Path
from typing import Callable, NamedTuple

import pytest

from .conftest import SYSTEM_PYTHON, run_as

XATTR = "user.sandboxfs-test"


class Layout(NamedTuple):
    host: Path  # every host tree lives below this
    mount: Path  # the mount point


def build_host(host: Path) -> None:
    ro = host / "ro"
    (ro / "sub").mkdir(parents=True)
    (ro / "file").write_bytes(b"read-only\n")
    (ro / "sub" / "inner").write_bytes(b"inner\n")
    (ro / "empty").mkdir()
    os.symlink("file", ro / "link")
    os.setxattr(ro / "file", XATTR, b"kept")
    (host / "rw" / "dir").mkdir(parents=True)
    (host / "rw" / "file").write_bytes(b"read-write\n")
    (host / "nested").mkdir()
    (host / "nested" / "data").write_bytes(b"nested\n")
    (host / "nested-file").write_bytes(b"nested file\n")
    (host / "leaf").mkdir()


def mount_args(host: Path, *extra: str) -> list[str]:
    mappings = [
        f"ro:/ro:{host}/ro",
        f"rw:/rw:{host}/rw",
        f"ro:/rw/nested:{host}/nested",
        f"ro:/rw/nested-file:{host}/nested-file",
        f"rw:/scaffold/leaf:{host}/leaf",
    ]
    return [*extra, *(arg for m in mappings for arg in ("--mapping", m))]


def snapshot(root: Path) -> dict[str, tuple]:
    """Everything a modification could change, for every object below ``root`` (and itself)."""
    result = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            path = os.path.normpath(os.path.join(dirpath, name))
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
                xattrs = ()
            else:
                content = Path(path).read_bytes() if stat.S_ISREG(st.st_mode) else None
                xattrs = tuple(sorted((n, os.getxattr(path, n)) for n in os.listxattr(path)))
            result[os.path.relpath(path, root)] = (
                st.st_mode, st.st_uid, st.st_gid, st.st_nlink, st.st_size,
                st.st_mtime_ns, st.st_ctime_ns, content, xattrs,
            )
    return result


@pytest.fixture
def layout(workdir, sandboxfs_mount) -> Layout:
    host = workdir / "host"
    build_host(host)
    mount = sandboxfs_mount(mount_args(host, "--xattrs"))
    return Layout(host, mount.mount_point)


def assert_refused(layout: Layout, number: int, operation: Callable[[Path], object]) -> None:
    before = snapshot(layout.host)
    with pytest.raises(OSError) as info:
        operation(layout.mount)
    assert info.value.errno == number, f"{info.value} (wanted {errno.errorcode[number]})"
    assert snapshot(layout.host) == before, "the host tree changed"


def open_close(path: Path, flags: int) -> None:
    os.close(os.open(path, flags, 0o644))


_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD = -100
RENAME_EXCHANGE = 2


def exchange(a: Path, b: Path) -> None:
    """renameat2(RENAME_EXCHANGE), which the os module lacks (``mv --exchange`` is too new here)."""
    if _libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE):
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number), str(a), None, str(b))


# name -> operation on the mount point; every one must fail with EPERM.
READ_ONLY_MAPPING_CASES: dict[str, Callable[[Path], object]] = {
    "open O_WRONLY": lambda m: open_close(m / "ro/file", os.O_WRONLY),
    "open O_RDWR": lambda m: open_close(m / "ro/file", os.O_RDWR),
    "open O_RDONLY|O_TRUNC": lambda m: open_close(m / "ro/file", os.O_RDONLY | os.O_TRUNC),
    "open O_WRONLY|O_APPEND": lambda m: open_close(m / "ro/file", os.O_WRONLY | os.O_APPEND),
    "open O_WRONLY via symlink": lambda m: open_close(m / "ro/link", os.O_WRONLY),
    "create": lambda m: open_close(m / "ro/new", os.O_CREAT | os.O_WRONLY),
    "create O_EXCL": lambda m: open_close(m / "ro/new", os.O_CREAT | os.O_EXCL | os.O_WRONLY),
    "create in subdir": lambda m: open_close(m / "ro/sub/new", os.O_CREAT | os.O_RDWR),
    "mkfifo": lambda m: os.mkfifo(m / "ro/fifo"),
    "mknod regular": lambda m: os.mknod(m / "ro/node", stat.S_IFREG | 0o644),
    "mkdir": lambda m: os.mkdir(m / "ro/newdir"),
    "unlink file": lambda m: os.unlink(m / "ro/file"),
    "unlink symlink": lambda m: os.unlink(m / "ro/link"),
    "unlink in subdir": lambda m: os.unlink(m / "ro/sub/inner"),
    "rmdir": lambda m: os.rmdir(m / "ro/empty"),
    "rename within": lambda m: os.rename(m / "ro/file", m / "ro/renamed"),
    "rename over existing": lambda m: os.rename(m / "ro/file", m / "ro/sub/inner"),
    "rename dir within": lambda m: os.rename(m / "ro/sub", m / "ro/moved"),
    "rename out to rw": lambda m: os.rename(m / "ro/file", m / "rw/moved"),
    "rename into from rw": lambda m: os.rename(m / "rw/file", m / "ro/moved"),
    "rename dir into from rw": lambda m: os.rename(m / "rw/dir", m / "ro/moved"),
    "exchange within": lambda m: exchange(m / "ro/file", m / "ro/sub/inner"),
    "exchange with rw": lambda m: exchange(m / "ro/file", m / "rw/file"),
    "symlink": lambda m: os.symlink("file", m / "ro/newlink"),
    "link within": lambda m: os.link(m / "ro/file", m / "ro/hard"),
    "link ro source to rw": lambda m: os.link(m / "ro/file", m / "rw/hard"),
    "link rw source into ro": lambda m: os.link(m / "rw/file", m / "ro/hard"),
    "chmod file": lambda m: os.chmod(m / "ro/file", 0o777),
    "chmod dir": lambda m: os.chmod(m / "ro/sub", 0o700),
    "chmod mapping root": lambda m: os.chmod(m / "ro", 0o700),
    "chown file": lambda m: os.chown(m / "ro/file", 1234, 5678),
    "chown group only": lambda m: os.chown(m / "ro/file", -1, 5678),
    "lchown symlink": lambda m: os.chown(m / "ro/link", 1234, 5678, follow_symlinks=False),
    "truncate": lambda m: os.truncate(m / "ro/file", 0),
    "truncate extend": lambda m: os.truncate(m / "ro/file", 4096),
    "utime explicit": lambda m: os.utime(m / "ro/file", ns=(1, 2)),
    "utime now": lambda m: os.utime(m / "ro/file"),
    "utime dir": lambda m: os.utime(m / "ro/sub", ns=(1, 2)),
    "utime symlink": lambda m: os.utime(m / "ro/link", ns=(1, 2), follow_symlinks=False),
    "setxattr file": lambda m: os.setxattr(m / "ro/file", XATTR, b"changed"),
    "setxattr new name": lambda m: os.setxattr(m / "ro/sub", "user.new", b"v"),
    "removexattr": lambda m: os.removexattr(m / "ro/file", XATTR),
}

SCAFFOLD_CASES: dict[str, Callable[[Path], object]] = {
    "create": lambda m: open_close(m / "scaffold/new", os.O_CREAT | os.O_WRONLY),
    "create at root": lambda m: open_close(m / "new", os.O_CREAT | os.O_WRONLY),
    "mkdir": lambda m: os.mkdir(m / "scaffold/newdir"),
    "mkfifo": lambda m: os.mkfifo(m / "scaffold/fifo"),
    "symlink": lambda m: os.symlink("leaf", m / "scaffold/newlink"),
    "link from rw": lambda m: os.link(m / "rw/file", m / "scaffold/hard"),
    "rmdir mapping": lambda m: os.rmdir(m / "scaffold/leaf"),
    "rmdir scaffold": lambda m: os.rmdir(m / "scaffold"),
    "rename mapping within": lambda m: os.rename(m / "scaffold/leaf", m / "scaffold/moved"),
    "rename mapping out": lambda m: os.rename(m / "scaffold/leaf", m / "rw/moved"),
    "rename rw file in": lambda m: os.rename(m / "rw/file", m / "scaffold/moved"),
    "exchange mapping with rw": lambda m: exchange(m / "scaffold/leaf", m / "rw/dir"),
    "rename scaffold": lambda m: os.rename(m / "scaffold", m / "moved"),
    "chmod": lambda m: os.chmod(m / "scaffold", 0o777),
    "chown": lambda m: os.chown(m / "scaffold", 1234, 5678),
    "utime": lambda m: os.utime(m / "scaffold", ns=(1, 2)),
    "setxattr": lambda m: os.setxattr(m / "scaffold", "user.new", b"v"),
}

NESTED_IN_RW_CASES: dict[str, Callable[[Path], object]] = {
    "rmdir nested dir": lambda m: os.rmdir(m / "rw/nested"),
    "unlink nested file": lambda m: os.unlink(m / "rw/nested-file"),
    "rename nested dir": lambda m: os.rename(m / "rw/nested", m / "rw/moved"),
    "rename nested file": lambda m: os.rename(m / "rw/nested-file", m / "rw/moved"),
    "rename dir over nested dir": lambda m: os.rename(m / "rw/dir", m / "rw/nested"),
    "rename file over nested file": lambda m: os.rename(m / "rw/file", m / "rw/nested-file"),
    "exchange nested file with rw file": lambda m: exchange(m / "rw/nested-file", m / "rw/file"),
    "create in nested dir": lambda m: open_close(m / "rw/nested/new", os.O_CREAT | os.O_WRONLY),
    "unlink in nested dir": lambda m: os.unlink(m / "rw/nested/data"),
    "write nested file": lambda m: open_close(m / "rw/nested-file", os.O_WRONLY),
}


@pytest.mark.parametrize("operation", READ_ONLY_MAPPING_CASES.values(), ids=READ_ONLY_MAPPING_CASES)
def test_read_only_mapping_refuses(layout, operation):
    assert_refused(layout, errno.EPERM, operation)


@pytest.mark.parametrize("operation", SCAFFOLD_CASES.values(), ids=SCAFFOLD_CASES)
def test_scaffold_directory_refuses(layout, operation):
    assert_refused(layout, errno.EPERM, operation)


@pytest.mark.parametrize("operation", NESTED_IN_RW_CASES.values(), ids=NESTED_IN_RW_CASES)
def test_nested_read_only_mapping_in_rw_dir_refuses(layout, operation):
    assert_refused(layout, errno.EPERM, operation)


def test_reads_still_work_after_refusals(layout):
    """The refusals are per request: the read-only part stays fully readable."""
    for operation in READ_ONLY_MAPPING_CASES.values():
        with pytest.raises(OSError):
            operation(layout.mount)
    assert (layout.mount / "ro/file").read_bytes() == b"read-only\n"
    assert sorted(os.listdir(layout.mount / "ro")) == ["empty", "file", "link", "sub"]
    assert os.getxattr(layout.mount / "ro/file", XATTR) == b"kept"


@pytest.mark.parametrize("operation", [
    lambda m: os.setxattr(m / "ro/file", XATTR, b"changed"),
    lambda m: os.removexattr(m / "ro/file", XATTR),
    lambda m: os.setxattr(m / "rw/file", XATTR, b"new"),
], ids=["setxattr ro", "removexattr ro", "setxattr rw"])
def test_xattr_changes_without_xattrs_flag_are_unsupported(workdir, sandboxfs_mount, operation):
    host = workdir / "host"
    build_host(host)
    mount = sandboxfs_mount(mount_args(host))
    assert_refused(Layout(host, mount.mount_point), errno.EOPNOTSUPP, operation)


OPEN_AND_REPORT_ERRNO = """
import errno, os, sys
try:
    os.close(os.open(sys.argv[1], int(sys.argv[2]), 0o644))
except OSError as exc:
    print(errno.errorcode[exc.errno])
else:
    print("OK")
"""


@pytest.mark.parametrize("path, flags", [
    ("ro/file", os.O_WRONLY),
    ("ro/file", os.O_RDWR | os.O_TRUNC),
    ("ro/new", os.O_CREAT | os.O_WRONLY),
], ids=["write", "truncate", "create"])
def test_unprivileged_user_cannot_write_read_only_root_file(
        workdir, sandboxfs_mount, unprivileged_user, path, flags):
    host = workdir / "host"
    build_host(host)
    os.chmod(host / "ro/file", 0o644)
    mount = sandboxfs_mount(mount_args(host, "--allow", "other"))
    layout = Layout(host, mount.mount_point)
    before = snapshot(host)
    result = run_as(unprivileged_user, [SYSTEM_PYTHON, "-c", OPEN_AND_REPORT_ERRNO,
                                        str(layout.mount / path), str(flags)])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in ("EACCES", "EPERM")
    assert snapshot(host) == before
    reader = run_as(unprivileged_user, ["cat", str(layout.mount / "ro/file")])
    assert reader.stdout == "read-only\n", reader.stderr  # the mount is usable by that user
