"""Read-write mappings through a real mount: every change lands on the host at once.

Covers: creating, writing and removing names (files, dirs, FIFOs, symlinks);
attribute changes (truncate, chmod, chown, utime); ownership of entries an
unprivileged caller creates and the kernel's permission checks
(default_permissions); rename in all its forms (within and between mappings,
across host filesystems, RENAME_NOREPLACE, RENAME_EXCHANGE); open files that
outlive unlink and rename; hard links; large and mmap'ed I/O; and executing a
program compiled into the mount.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import shutil
import stat
import subprocess
import textwrap
from pathlib import Path
from typing import NamedTuple

import pytest

from .conftest import SYSTEM_PYTHON, run_as

# The venv's python lives under /root (mode 0700): other users need the system one.

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class RwMapping(NamedTuple):
    host: Path  # the host directory behind the mapping
    inside: Path  # the same directory seen through the mount


def mount_rw(sandboxfs_mount, host: Path, *extra: str, inside: str = "/out") -> RwMapping:
    mount = sandboxfs_mount(["--mapping", f"rw:{inside}:{host}", *extra])
    return RwMapping(host, mount.mount_point / inside.lstrip("/"))


def renameat2(old: Path, new: Path, flags: int) -> None:
    if _libc.renameat2(_AT_FDCWD, os.fsencode(old), _AT_FDCWD, os.fsencode(new),
                       ctypes.c_uint(flags)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(old), None, str(new))


def user_python(user, code: str) -> subprocess.CompletedProcess:
    """Run ``code`` as ``user`` with the system python; fails the test if it crashed."""
    result = run_as(user, [SYSTEM_PYTHON, "-c", textwrap.dedent(code)])
    assert result.returncode == 0, result.stderr
    return result


def errno_as_user(user, code: str) -> int:
    """Run ``code`` (which should raise OSError) as ``user``; return its errno (0 if none)."""
    wrapped = "import os, sys\ntry:\n" + textwrap.indent(textwrap.dedent(code), "    ") + (
        "\nexcept OSError as e:\n    print(e.errno)\nelse:\n    print(0)\n"
    )
    return int(user_python(user, wrapped).stdout.strip())


@pytest.fixture
def host(workdir: Path) -> Path:
    path = workdir / "host"
    path.mkdir()
    return path


@pytest.fixture
def rw(sandboxfs_mount, host: Path) -> RwMapping:
    return mount_rw(sandboxfs_mount, host)


@pytest.fixture
def shared_rw(sandboxfs_mount, host: Path) -> RwMapping:
    """A world-writable rw mapping that other users may use (--allow other)."""
    host.chmod(0o777)
    return mount_rw(sandboxfs_mount, host, "--allow", "other")


@pytest.fixture
def tmpfs_dir(workdir: Path) -> Path:
    """A directory on another host filesystem (a tmpfs), unmounted lazily at teardown."""
    path = workdir / "tmpfs"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


# -- names and contents ------------------------------------------------------------------


def test_create_write_read(rw):
    (rw.inside / "f").write_bytes(b"hello")
    assert (rw.host / "f").read_bytes() == b"hello"
    assert (rw.inside / "f").read_bytes() == b"hello"


def test_write_on_host_is_read_through_mount(rw):
    (rw.host / "f").write_bytes(b"from host")
    assert (rw.inside / "f").read_bytes() == b"from host"


def test_overwrite_truncates(rw):
    (rw.host / "f").write_bytes(b"a long old content")
    with open(rw.inside / "f", "wb") as f:  # O_WRONLY | O_CREAT | O_TRUNC on an existing file
        f.write(b"short")
    assert (rw.host / "f").read_bytes() == b"short"
    assert (rw.inside / "f").read_bytes() == b"short"


def test_append(rw):
    (rw.inside / "log").write_bytes(b"one\n")
    with open(rw.inside / "log", "ab") as f:
        f.write(b"two\n")
    fd = os.open(rw.inside / "log", os.O_WRONLY | os.O_APPEND)
    try:
        os.lseek(fd, 0, os.SEEK_SET)  # O_APPEND writes go to the end wherever the offset is
        os.write(fd, b"three\n")
    finally:
        os.close(fd)
    assert (rw.host / "log").read_bytes() == b"one\ntwo\nthree\n"
    assert (rw.inside / "log").read_bytes() == b"one\ntwo\nthree\n"


def test_mkdir_and_rmdir(rw):
    os.mkdir(rw.inside / "d", 0o750)
    assert stat.S_IMODE(os.stat(rw.host / "d").st_mode) == 0o750
    os.rmdir(rw.inside / "d")
    assert not (rw.host / "d").exists()
    assert not (rw.inside / "d").exists()


def test_unlink(rw):
    (rw.host / "f").write_bytes(b"x")
    os.unlink(rw.inside / "f")
    assert not (rw.host / "f").exists()
    assert not (rw.inside / "f").exists()


def test_mknod_fifo(rw):
    os.mkfifo(rw.inside / "fifo", 0o640)
    st = os.lstat(rw.host / "fifo")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    assert stat.S_ISFIFO(os.lstat(rw.inside / "fifo").st_mode)


def test_symlink(rw):
    os.symlink("some/target", rw.inside / "link")
    assert os.readlink(rw.host / "link") == "some/target"
    assert os.readlink(rw.inside / "link") == "some/target"
    assert stat.S_ISLNK(os.lstat(rw.inside / "link").st_mode)


@pytest.mark.parametrize("new_size", [3, 100_000], ids=["down", "up"])
def test_truncate(rw, new_size):
    (rw.host / "f").write_bytes(b"0123456789")
    os.truncate(rw.inside / "f", new_size)
    expected = b"0123456789"[:new_size].ljust(new_size, b"\0")
    assert (rw.host / "f").read_bytes() == expected
    assert os.stat(rw.inside / "f").st_size == new_size
    assert (rw.inside / "f").read_bytes() == expected


def test_chmod(rw):
    (rw.host / "f").write_bytes(b"x")
    os.chmod(rw.inside / "f", 0o604)
    assert stat.S_IMODE(os.stat(rw.host / "f").st_mode) == 0o604
    assert stat.S_IMODE(os.stat(rw.inside / "f").st_mode) == 0o604


def test_chown_to_another_user(rw, unprivileged_user):
    (rw.host / "f").write_bytes(b"x")
    os.chown(rw.inside / "f", unprivileged_user.pw_uid, unprivileged_user.pw_gid)
    st = os.stat(rw.host / "f")
    assert (st.st_uid, st.st_gid) == (unprivileged_user.pw_uid, unprivileged_user.pw_gid)
    st = os.stat(rw.inside / "f")
    assert (st.st_uid, st.st_gid) == (unprivileged_user.pw_uid, unprivileged_user.pw_gid)


def test_utime_keeps_nanoseconds(rw):
    (rw.host / "f").write_bytes(b"x")
    atime_ns, mtime_ns = 1_600_000_000_123_456_789, 1_700_000_000_987_654_321
    os.utime(rw.inside / "f", ns=(atime_ns, mtime_ns))
    st = os.stat(rw.host / "f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (atime_ns, mtime_ns)
    st = os.stat(rw.inside / "f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (atime_ns, mtime_ns)


# -- ownership and permissions -----------------------------------------------------------


def test_entries_created_by_a_user_are_owned_by_that_user(shared_rw, unprivileged_user):
    user_python(unprivileged_user, f"""
        import os
        base = {str(shared_rw.inside)!r}
        os.close(os.open(base + "/file", os.O_CREAT | os.O_WRONLY, 0o600))
        os.mkdir(base + "/dir")
        os.symlink("file", base + "/link")
    """)
    for name in ("file", "dir", "link"):
        st = os.lstat(shared_rw.host / name)
        assert (st.st_uid, st.st_gid) == (unprivileged_user.pw_uid, unprivileged_user.pw_gid), name


def test_umask_of_the_caller_applies(shared_rw, unprivileged_user):
    user_python(unprivileged_user, f"""
        import os
        os.umask(0o022)
        os.close(os.open({str(shared_rw.inside / "f")!r}, os.O_CREAT | os.O_WRONLY, 0o666))
        os.mkdir({str(shared_rw.inside / "d")!r}, 0o777)
    """)
    assert stat.S_IMODE(os.stat(shared_rw.host / "f").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(shared_rw.host / "d").st_mode) == 0o755


def test_user_cannot_write_a_root_owned_file(shared_rw, unprivileged_user):
    (shared_rw.host / "f").write_bytes(b"root's")
    (shared_rw.host / "f").chmod(0o644)
    code = f"os.open({str(shared_rw.inside / 'f')!r}, os.O_WRONLY)"
    assert errno_as_user(unprivileged_user, code) == errno.EACCES
    assert (shared_rw.host / "f").read_bytes() == b"root's"


def test_user_cannot_create_in_a_root_owned_dir(shared_rw, unprivileged_user):
    (shared_rw.host / "d").mkdir(mode=0o755)
    code = f"os.open({str(shared_rw.inside / 'd' / 'new')!r}, os.O_CREAT | os.O_WRONLY, 0o644)"
    assert errno_as_user(unprivileged_user, code) == errno.EACCES
    assert os.listdir(shared_rw.host / "d") == []


# -- rename ------------------------------------------------------------------------------


def test_rename_file_within_mapping(rw):
    (rw.host / "a").write_bytes(b"content")
    os.rename(rw.inside / "a", rw.inside / "b")
    assert not (rw.host / "a").exists()
    assert (rw.host / "b").read_bytes() == b"content"
    assert not (rw.inside / "a").exists()
    assert (rw.inside / "b").read_bytes() == b"content"


def test_rename_directory_keeps_its_children_reachable(rw):
    (rw.inside / "old" / "sub").mkdir(parents=True)
    (rw.inside / "old" / "sub" / "f").write_bytes(b"deep")
    assert (rw.inside / "old" / "sub" / "f").read_bytes() == b"deep"  # the kernel knows them
    os.rename(rw.inside / "old", rw.inside / "new")
    assert (rw.inside / "new" / "sub" / "f").read_bytes() == b"deep"
    assert os.listdir(rw.inside / "new" / "sub") == ["f"]
    assert not (rw.inside / "old").exists()
    assert not (rw.inside / "old" / "sub" / "f").exists()
    assert (rw.host / "new" / "sub" / "f").read_bytes() == b"deep"
    assert not (rw.host / "old").exists()


def test_rename_over_an_existing_file_replaces_it(rw):
    (rw.inside / "src").write_bytes(b"new")
    (rw.inside / "dst").write_bytes(b"old")
    os.rename(rw.inside / "src", rw.inside / "dst")
    assert (rw.inside / "dst").read_bytes() == b"new"
    assert (rw.host / "dst").read_bytes() == b"new"
    assert sorted(os.listdir(rw.inside)) == ["dst"]
    assert sorted(os.listdir(rw.host)) == ["dst"]


def test_rename_between_mappings_on_one_filesystem(sandboxfs_mount, workdir):
    first, second = workdir / "first", workdir / "second"
    first.mkdir()
    second.mkdir()
    (first / "f").write_bytes(b"moving")
    mount = sandboxfs_mount(["--mapping", f"rw:/a:{first}", "--mapping", f"rw:/b:{second}"])
    os.rename(mount / "a/f", mount / "b/f")
    assert (second / "f").read_bytes() == b"moving"
    assert not (first / "f").exists()
    assert (mount / "b/f").read_bytes() == b"moving"
    assert not (mount / "a/f").exists()


def test_rename_across_host_filesystems_fails_exdev(sandboxfs_mount, host, tmpfs_dir):
    (host / "f").write_bytes(b"stays")
    mount = sandboxfs_mount(["--mapping", f"rw:/disk:{host}", "--mapping", f"rw:/mem:{tmpfs_dir}"])
    with pytest.raises(OSError) as caught:
        os.rename(mount / "disk/f", mount / "mem/f")
    assert caught.value.errno == errno.EXDEV
    assert (host / "f").read_bytes() == b"stays"
    assert os.listdir(tmpfs_dir) == []


def test_rename_noreplace_refuses_an_existing_target(rw):
    (rw.inside / "src").write_bytes(b"src")
    (rw.inside / "dst").write_bytes(b"dst")
    with pytest.raises(OSError) as caught:
        renameat2(rw.inside / "src", rw.inside / "dst", RENAME_NOREPLACE)
    assert caught.value.errno == errno.EEXIST
    assert (rw.host / "src").read_bytes() == b"src"
    assert (rw.host / "dst").read_bytes() == b"dst"


def test_rename_noreplace_to_a_free_name(rw):
    (rw.inside / "src").write_bytes(b"src")
    renameat2(rw.inside / "src", rw.inside / "dst", RENAME_NOREPLACE)
    assert (rw.host / "dst").read_bytes() == b"src"
    assert not (rw.inside / "src").exists()


def test_rename_exchange_swaps_two_files(rw):
    (rw.inside / "d").mkdir()
    (rw.inside / "one").write_bytes(b"first")
    (rw.inside / "d" / "two").write_bytes(b"second!")
    one_before = os.stat(rw.inside / "one")
    renameat2(rw.inside / "one", rw.inside / "d" / "two", RENAME_EXCHANGE)
    assert (rw.inside / "one").read_bytes() == b"second!"
    assert (rw.inside / "d" / "two").read_bytes() == b"first"
    assert (rw.host / "one").read_bytes() == b"second!"
    assert (rw.host / "d" / "two").read_bytes() == b"first"
    assert os.stat(rw.inside / "one").st_size == len(b"second!")
    moved = os.stat(rw.inside / "d" / "two")
    assert moved.st_size == len(b"first")
    assert moved.st_ino == one_before.st_ino  # the file kept its identity when it moved


# -- open files outlive unlink and rename ------------------------------------------------


def _unlink_file(rw: RwMapping) -> None:
    os.unlink(rw.inside / "d" / "f")


def _rename_file(rw: RwMapping) -> None:
    os.rename(rw.inside / "d" / "f", rw.inside / "d" / "g")


def _rename_parent(rw: RwMapping) -> None:
    os.rename(rw.inside / "d", rw.inside / "e")


def _rename_over_file(rw: RwMapping) -> None:
    (rw.inside / "d" / "other").write_bytes(b"other")
    os.rename(rw.inside / "d" / "other", rw.inside / "d" / "f")


@pytest.mark.parametrize("change", [_unlink_file, _rename_file, _rename_parent, _rename_over_file],
                         ids=["unlink", "rename", "rename-parent", "replaced-by-rename"])
def test_open_file_keeps_working(rw, change):
    (rw.inside / "d").mkdir()
    (rw.inside / "d" / "f").write_bytes(b"0123456789")
    fd = os.open(rw.inside / "d" / "f", os.O_RDWR)
    try:
        change(rw)
        assert os.pread(fd, 4, 2) == b"2345"
        assert os.pwrite(fd, b"ABCDEFGHIJKLMNOPQRST", 0) == 20
        assert os.fstat(fd).st_size == 20
        assert os.pread(fd, 100, 0) == b"ABCDEFGHIJKLMNOPQRST"
        os.ftruncate(fd, 5)
        assert os.fstat(fd).st_size == 5
        os.fchmod(fd, 0o640)
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o640
        assert os.pread(fd, 100, 0) == b"ABCDE"
    finally:
        os.close(fd)


def _rmdir(rw: RwMapping) -> None:
    os.rmdir(rw.inside / "d" / "sub")


def _rename_dir(rw: RwMapping) -> None:
    os.rename(rw.inside / "d" / "sub", rw.inside / "d" / "moved")


def _rename_dir_parent(rw: RwMapping) -> None:
    os.rename(rw.inside / "d", rw.inside / "e")


@pytest.mark.parametrize("change", [_rmdir, _rename_dir, _rename_dir_parent],
                         ids=["rmdir", "rename", "rename-parent"])
def test_open_directory_keeps_working(rw, change):
    """fstat, fchmod, fchown and futimens on a directory fd act on the directory
    that was opened, as natively, even once it was removed or renamed."""
    (rw.inside / "d" / "sub").mkdir(parents=True)
    fd = os.open(rw.inside / "d" / "sub", os.O_RDONLY | os.O_DIRECTORY)
    try:
        change(rw)
        removed = change is _rmdir
        assert stat.S_ISDIR(os.fstat(fd).st_mode)
        if removed:
            assert os.fstat(fd).st_nlink == 0
        os.fchmod(fd, 0o750)
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o750
        os.fchown(fd, 1234, 5678)
        assert (os.fstat(fd).st_uid, os.fstat(fd).st_gid) == (1234, 5678)
        os.utime(fd, ns=(1_000_000_000, 2_000_000_000))
        assert os.fstat(fd).st_mtime_ns == 2_000_000_000
        assert os.listdir(fd) == []
        os.fsync(fd)
    finally:
        os.close(fd)
    if not removed:
        moved = rw.host / ("d/moved" if change is _rename_dir else "e/sub")
        st = os.stat(moved)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_mtime_ns) == (0o750, 1234, 2_000_000_000)


def test_a_renamed_open_directory_lists_what_it_holds(rw):
    (rw.inside / "d").mkdir()
    (rw.inside / "d" / "a").write_bytes(b"")
    fd = os.open(rw.inside / "d", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rename(rw.host / "d", rw.host / "elsewhere")  # behind the mount's back
        (rw.host / "elsewhere" / "b").write_bytes(b"")
        assert sorted(os.listdir(fd)) == ["a", "b"]
    finally:
        os.close(fd)


@pytest.mark.parametrize("change, host_name", [(_rename_file, "d/g"), (_rename_parent, "e/f")],
                         ids=["rename", "rename-parent"])
def test_changes_through_a_renamed_open_file_reach_the_host(rw, change, host_name):
    (rw.inside / "d").mkdir()
    (rw.inside / "d" / "f").write_bytes(b"0123456789")
    fd = os.open(rw.inside / "d" / "f", os.O_RDWR)
    try:
        change(rw)
        os.pwrite(fd, b"xy", 0)
        os.fchmod(fd, 0o600)
        os.ftruncate(fd, 4)
    finally:
        os.close(fd)
    assert (rw.host / host_name).read_bytes() == b"xy23"
    assert stat.S_IMODE(os.stat(rw.host / host_name).st_mode) == 0o600


def test_file_replaced_on_host_shows_new_content(sandboxfs_mount, host):
    (host / "f").write_bytes(b"old content")
    rw = mount_rw(sandboxfs_mount, host, "--ttl", "0")
    assert (rw.inside / "f").read_bytes() == b"old content"
    old_ino = os.stat(rw.inside / "f").st_ino
    (host / "f.tmp").write_bytes(b"replaced!")
    os.rename(host / "f.tmp", host / "f")  # a new host inode at the same name
    assert (rw.inside / "f").read_bytes() == b"replaced!"
    assert os.stat(rw.inside / "f").st_ino != old_ino


def test_file_changed_in_place_on_host_shows_new_content(sandboxfs_mount, host):
    (host / "f").write_bytes(b"old content")
    rw = mount_rw(sandboxfs_mount, host, "--ttl", "0")
    assert (rw.inside / "f").read_bytes() == b"old content"  # now in the page cache
    with open(host / "f", "r+b") as f:  # same host inode, same size
        f.write(b"NEW")
    assert (rw.inside / "f").read_bytes() == b"NEW content"


# -- hard links --------------------------------------------------------------------------


def test_hard_link_within_a_mapping(sandboxfs_mount, host):
    # --ttl 0: the two names are two inodes to the kernel, each with its own cache.
    rw = mount_rw(sandboxfs_mount, host, "--ttl", "0")
    (rw.inside / "a").write_bytes(b"shared")
    os.link(rw.inside / "a", rw.inside / "b")
    assert os.stat(rw.host / "a").st_ino == os.stat(rw.host / "b").st_ino
    assert (rw.inside / "b").read_bytes() == b"shared"
    assert os.stat(rw.inside / "a").st_nlink == 2
    assert os.stat(rw.inside / "b").st_nlink == 2
    with open(rw.inside / "b", "r+b") as f:
        f.write(b"SHARED, longer")
    assert (rw.inside / "a").read_bytes() == b"SHARED, longer"
    assert (rw.host / "a").read_bytes() == b"SHARED, longer"


# -- bulk and mapped I/O, exec -----------------------------------------------------------


def test_large_sequential_write_and_read(rw):
    data = os.urandom(20 * 1024 * 1024)
    with open(rw.inside / "big", "wb") as f:
        f.write(data)
    assert (rw.host / "big").read_bytes() == data
    assert (rw.inside / "big").read_bytes() == data


def test_mmap_read(rw):
    data = os.urandom(3 * mmap.PAGESIZE + 123)
    (rw.host / "f").write_bytes(data)
    with open(rw.inside / "f", "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        assert m[:] == data
        assert m[mmap.PAGESIZE:mmap.PAGESIZE + 10] == data[mmap.PAGESIZE:mmap.PAGESIZE + 10]


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_compile_and_exec_from_the_mount(rw):
    (rw.inside / "hello.c").write_text(
        '#include <stdio.h>\nint main(void) { puts("hello from sandboxfs"); return 7; }\n'
    )
    subprocess.run(["gcc", "-o", str(rw.inside / "hello"), str(rw.inside / "hello.c")], check=True)
    assert os.access(rw.host / "hello", os.X_OK)
    result = subprocess.run([str(rw.inside / "hello")], capture_output=True, text=True)
    assert (result.returncode, result.stdout) == (7, "hello from sandboxfs\n")
