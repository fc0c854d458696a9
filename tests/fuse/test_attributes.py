"""What the mount shows: attributes, inode numbers, symlinks, scaffolds, nesting, names, statfs.

Every test builds a host tree under ``workdir/host``, mounts it through the
real CLI and compares what syscalls on the mount report with what the same
syscalls report on the host.  Covered here:

* attributes of mapped objects mirror the host (type and permission bits,
  links, owner, size, blocks, device numbers, nanosecond times);
* inode numbers: stable, equal in readdir and lstat, distinct per file;
* mappings look like the real thing (never symlinks), real symlinks keep
  their target text, paths resolve inside the mount;
* scaffold directories: mode 0555, owned by the mounting user, exactly their
  children;
* nested mappings shadow host entries and keep their own writability;
* a root mapping, non-UTF-8 names, statfs, and the kernel's negative entry
  cache (``--ttl``).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

# Host times with non-zero nanoseconds, so truncation to seconds would show.
ATIME_NS = 1_600_000_000_123_456_789
MTIME_NS = 1_500_000_000_987_654_321


def mapping(kind: str, inner: str, host: str | os.PathLike) -> list[str]:
    return ["--mapping", f"{kind}:{inner}:{os.fspath(host)}"]


def make_host(workdir: Path, name: str = "host") -> Path:
    path = workdir / name
    path.mkdir()
    return path


def write(path: Path, data: bytes = b"data\n") -> Path:
    path.write_bytes(data)
    return path


def attributes(st: os.stat_result) -> dict[str, int]:
    """The fields the mount must pass through unchanged."""
    fields = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks", "st_rdev",
              "st_atime_ns", "st_mtime_ns", "st_ctime_ns")
    return {field: getattr(st, field) for field in fields}


def assert_errno(number: int, func, *args, **kwargs) -> None:
    with pytest.raises(OSError) as info:
        func(*args, **kwargs)
    assert info.value.errno == number, f"{func.__name__}{args}: {info.value}"


# -- attributes ------------------------------------------------------------------------


def _setuid_file(host: Path) -> Path:
    path = write(host / "tool", b"x" * 10_000)
    os.chmod(path, 0o4755)
    return path


def _sticky_dir(host: Path) -> Path:
    path = host / "shared"
    path.mkdir()
    (path / "child").mkdir()  # nlink 3
    os.chmod(path, 0o1777)
    return path


def _hard_linked_file(host: Path) -> Path:
    path = write(host / "linked")
    os.link(path, host / "linked.2")  # nlink 2
    os.chmod(path, 0o640)
    return path


def _char_device(host: Path) -> Path:
    path = host / "null"
    os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    return path


def _fifo(host: Path) -> Path:
    path = host / "pipe"
    os.mkfifo(path, 0o620)
    return path


def _symlink(host: Path) -> Path:
    path = host / "link"
    os.symlink("tool", path)
    return path


HOST_OBJECTS = {
    "setuid-file": _setuid_file,
    "sticky-dir": _sticky_dir,
    "hard-linked-file": _hard_linked_file,
    "char-device": _char_device,
    "fifo": _fifo,
    "symlink": _symlink,
}


@pytest.mark.parametrize("kind", HOST_OBJECTS)
@pytest.mark.parametrize("how", ["inside-mapped-dir", "mapped-itself"])
def test_attributes_mirror_the_host_object(workdir, sandboxfs_mount, kind, how):
    host = make_host(workdir)
    path = HOST_OBJECTS[kind](host)
    os.chown(path, 1234, 5678, follow_symlinks=False)
    os.utime(path, ns=(ATIME_NS, MTIME_NS), follow_symlinks=False)
    if how == "inside-mapped-dir":
        mount = sandboxfs_mount(mapping("ro", "/src", host))
        seen = mount / "src" / path.name
    else:
        mount = sandboxfs_mount(mapping("ro", "/obj", path))
        seen = mount / "obj"
    expected = attributes(os.lstat(path))
    assert attributes(os.lstat(seen)) == expected
    assert expected["st_uid"] == 1234 and expected["st_atime_ns"] == ATIME_NS  # the set-up held


def test_device_numbers_and_file_types_pass_through(workdir, sandboxfs_mount):
    host = make_host(workdir)
    _char_device(host)
    _fifo(host)
    mount = sandboxfs_mount(mapping("ro", "/src", host))
    device = os.lstat(mount / "src" / "null")
    assert stat.S_ISCHR(device.st_mode)
    assert (os.major(device.st_rdev), os.minor(device.st_rdev)) == (1, 3)
    assert stat.S_ISFIFO(os.lstat(mount / "src" / "pipe").st_mode)


# -- inode numbers -----------------------------------------------------------------------


def _tree_for_inodes(workdir: Path) -> tuple[Path, Path]:
    host = make_host(workdir)
    for name in ("a.c", "b.c", "c.h"):
        write(host / name, name.encode())
    (host / "dir").mkdir()
    write(host / "dir" / "inner")
    os.symlink("a.c", host / "link")
    other = make_host(workdir, "other")
    write(other / "nested-file")
    return host, other


def _inode_mounts(workdir, sandboxfs_mount):
    host, other = _tree_for_inodes(workdir)
    return sandboxfs_mount(
        ["--ttl", "0", *mapping("ro", "/src", host), *mapping("ro", "/src/nested", other),
         *mapping("ro", "/scaffold/leaf", other / "nested-file")]
    )


def test_inode_numbers_are_stable_across_repeated_stats(workdir, sandboxfs_mount):
    mount = _inode_mounts(workdir, sandboxfs_mount)  # ttl 0: every stat asks the daemon
    paths = [mount.mount_point, mount / "src", mount / "src" / "a.c", mount / "src" / "dir" / "inner",
             mount / "src" / "nested", mount / "scaffold", mount / "scaffold" / "leaf"]
    first = [os.lstat(p).st_ino for p in paths]
    for _ in range(3):
        assert [os.lstat(p).st_ino for p in paths] == first


@pytest.mark.parametrize("directory", ["", "src", "src/dir", "src/nested", "scaffold"])
def test_readdir_inode_equals_lstat_inode(workdir, sandboxfs_mount, directory):
    mount = _inode_mounts(workdir, sandboxfs_mount)
    with os.scandir(mount.mount_point / directory) as entries:
        listed = {entry.name: entry.inode() for entry in entries}
    assert listed, "the directory listed nothing"
    for name, ino in listed.items():
        assert os.lstat(mount.mount_point / directory / name).st_ino == ino, name


def test_distinct_objects_have_distinct_inode_numbers(workdir, sandboxfs_mount):
    """Every object has its own number, but for one read-only host file mapped twice
    (scaffold/leaf is src/nested/nested-file), which is one inode, as a hard link would
    be (fs/shared_files.py)."""
    mount = _inode_mounts(workdir, sandboxfs_mount)
    root = str(mount.mount_point)
    numbers: dict[int, list[str]] = {os.lstat(root).st_ino: ["/"]}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            numbers.setdefault(os.lstat(path).st_ino, []).append(os.path.relpath(path, root))
    shared = [sorted(paths) for paths in numbers.values() if len(paths) > 1]
    assert shared == [["scaffold/leaf", "src/nested/nested-file"]], shared
    assert len(numbers) == 11  # /, src + 7 entries (incl. nested), scaffold; leaf is nested-file


# -- mappings are not symlinks; real symlinks are ----------------------------------------------


def test_mappings_appear_as_real_files_and_directories(workdir, sandboxfs_mount):
    host = make_host(workdir)
    write(host / "file")
    (host / "dir").mkdir()
    mount = sandboxfs_mount(
        mapping("ro", "/file", host / "file") + mapping("ro", "/dir", host / "dir")
    )
    assert stat.S_ISREG(os.lstat(mount / "file").st_mode)
    assert not os.path.islink(mount / "file")
    assert stat.S_ISDIR(os.lstat(mount / "dir").st_mode)
    assert not os.path.islink(mount / "dir")
    assert (mount / "file").read_bytes() == b"data\n"


def test_realpath_of_a_path_in_the_mount_stays_in_the_mount(workdir, sandboxfs_mount):
    host = make_host(workdir)
    (host / "dir").mkdir()
    write(host / "dir" / "file")
    os.symlink("file", host / "dir" / "alias")
    mount = sandboxfs_mount(
        mapping("ro", "/src", host) + mapping("ro", "/tool", host / "dir" / "file")
    )
    base = os.path.realpath(mount.mount_point)
    assert os.path.realpath(mount / "src" / "dir" / "file") == f"{base}/src/dir/file"
    assert os.path.realpath(mount / "tool") == f"{base}/tool"
    assert os.path.realpath(mount / "src" / "dir" / "alias") == f"{base}/src/dir/file"


SYMLINK_TARGETS = {
    "relative": "file",
    "absolute": "/etc/hostname",
    "dangling": "no/such/target",
}


@pytest.mark.parametrize("kind", SYMLINK_TARGETS)
def test_symlinks_keep_their_target_text(workdir, sandboxfs_mount, kind):
    host = make_host(workdir)
    write(host / "file")
    target = SYMLINK_TARGETS[kind]
    os.symlink(target, host / "link")
    mount = sandboxfs_mount(
        mapping("ro", "/src", host) + mapping("ro", "/mapped-link", host / "link")
    )
    for seen in (mount / "src" / "link", mount / "mapped-link"):
        assert stat.S_ISLNK(os.lstat(seen).st_mode), seen
        assert os.readlink(seen) == target, seen
    if kind == "dangling":
        assert not os.path.exists(mount / "src" / "link")
    if kind == "relative":
        assert (mount / "src" / "link").read_bytes() == b"data\n"


# -- scaffold directories -------------------------------------------------------------------


def test_scaffold_directories_are_0555_and_owned_by_the_mounting_user(workdir, sandboxfs_mount):
    host = make_host(workdir)
    mount = sandboxfs_mount(mapping("ro", "/a/b/c", host))
    for scaffold in (mount.mount_point, mount / "a", mount / "a" / "b"):
        st = os.lstat(scaffold)
        assert st.st_mode == stat.S_IFDIR | 0o555, (scaffold, oct(st.st_mode))
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid()) == (0, 0)


def test_scaffold_lists_exactly_its_children(workdir, sandboxfs_mount):
    host = make_host(workdir)
    write(host / "file")
    mount = sandboxfs_mount(
        mapping("ro", "/a/x", host) + mapping("ro", "/a/y/z", host / "file") + mapping("ro", "/b", host)
    )
    assert sorted(os.listdir(mount.mount_point)) == ["a", "b"]
    assert sorted(os.listdir(mount / "a")) == ["x", "y"]
    assert os.listdir(mount / "a" / "y") == ["z"]
    assert_errno(errno.ENOENT, os.lstat, mount / "a" / "missing")


# -- nested mappings ------------------------------------------------------------------------


def test_nested_mapping_shadows_the_host_entry(workdir, sandboxfs_mount):
    outer = make_host(workdir, "A")
    write(outer / "top")
    (outer / "sub").mkdir()
    write(outer / "sub" / "from-a", b"A\n")
    inner = make_host(workdir, "B")
    write(inner / "from-b", b"B\n")
    mount = sandboxfs_mount(mapping("ro", "/src", outer) + mapping("ro", "/src/sub", inner))
    assert sorted(os.listdir(mount / "src")) == ["sub", "top"]  # "sub" listed once
    assert os.listdir(mount / "src" / "sub") == ["from-b"]
    assert (mount / "src" / "sub" / "from-b").read_bytes() == b"B\n"
    assert_errno(errno.ENOENT, os.lstat, mount / "src" / "sub" / "from-a")
    assert os.lstat(mount / "src" / "sub").st_ino == os.lstat(mount / "src" / "sub").st_ino
    assert os.lstat(mount / "src" / "sub").st_mtime_ns == os.lstat(inner).st_mtime_ns


def test_rw_mapping_nested_inside_ro_is_writable(workdir, sandboxfs_mount):
    outer = make_host(workdir, "src")
    out = make_host(workdir, "out")
    mount = sandboxfs_mount(mapping("ro", "/src", outer) + mapping("rw", "/src/out", out))
    (mount / "src" / "out" / "result.o").write_bytes(b"object\n")
    assert (out / "result.o").read_bytes() == b"object\n"
    assert_errno(errno.EPERM, os.open, mount / "src" / "new", os.O_CREAT | os.O_WRONLY, 0o644)
    assert os.listdir(outer) == []


def test_ro_mapping_nested_inside_rw_is_read_only(workdir, sandboxfs_mount):
    work = make_host(workdir, "work")
    tools = make_host(workdir, "tools")
    write(tools / "cc", b"compiler\n")
    mount = sandboxfs_mount(mapping("rw", "/work", work) + mapping("ro", "/work/tools", tools))
    (mount / "work" / "log").write_bytes(b"ok\n")
    assert (work / "log").read_bytes() == b"ok\n"
    assert_errno(errno.EPERM, os.open, mount / "work" / "tools" / "new", os.O_CREAT | os.O_WRONLY, 0o644)
    assert_errno(errno.EPERM, os.open, mount / "work" / "tools" / "cc", os.O_WRONLY)
    assert os.listdir(tools) == ["cc"]
    assert (tools / "cc").read_bytes() == b"compiler\n"


def test_components_between_a_mapped_dir_and_a_nested_mapping_are_scaffolds(workdir, sandboxfs_mount):
    outer = make_host(workdir, "src")
    write(outer / "top")
    (outer / "x").mkdir()
    write(outer / "x" / "hidden")  # shadowed by the scaffold /src/x
    leaf = make_host(workdir, "leaf")
    write(leaf / "deep")
    mount = sandboxfs_mount(mapping("ro", "/src", outer) + mapping("ro", "/src/x/y/z", leaf))
    assert sorted(os.listdir(mount / "src")) == ["top", "x"]
    for scaffold, children in ((mount / "src" / "x", ["y"]), (mount / "src" / "x" / "y", ["z"])):
        st = os.lstat(scaffold)
        assert st.st_mode == stat.S_IFDIR | 0o555, scaffold
        assert (st.st_uid, st.st_gid) == (0, 0)
        assert os.listdir(scaffold) == children
    assert os.listdir(mount / "src" / "x" / "y" / "z") == ["deep"]


# -- root mapping, names, statfs -----------------------------------------------------------------


def test_root_mapping_shows_one_host_directory(workdir, sandboxfs_mount):
    host = make_host(workdir)
    write(host / "file", b"root view\n")
    (host / "dir").mkdir()
    os.chmod(host, 0o750)
    mount = sandboxfs_mount(mapping("ro", "/", host))
    assert sorted(os.listdir(mount.mount_point)) == ["dir", "file"]
    assert (mount / "file").read_bytes() == b"root view\n"
    root, expected = os.lstat(mount.mount_point), os.lstat(host)
    assert (root.st_mode, root.st_nlink, root.st_mtime_ns) == (
        expected.st_mode, expected.st_nlink, expected.st_mtime_ns)


NON_UTF8 = b"caf\xe9"


def test_non_utf8_names_on_disk_are_listed_and_readable(workdir, sandboxfs_mount):
    host = make_host(workdir)
    with open(bytes(host) + b"/" + NON_UTF8 + b".txt", "wb") as f:
        f.write(b"latin-1\n")
    mount = sandboxfs_mount(mapping("ro", "/src", host))
    inside = os.fsencode(mount / "src")
    assert os.listdir(inside) == [NON_UTF8 + b".txt"]
    with open(inside + b"/" + NON_UTF8 + b".txt", "rb") as f:
        assert f.read() == b"latin-1\n"


def test_non_utf8_mapping_paths_on_the_command_line(workdir, sandboxfs_mount):
    host = bytes(workdir) + b"/" + NON_UTF8 + b"-host"
    os.mkdir(host)
    with open(host + b"/file", "wb") as f:
        f.write(b"found\n")
    # Popen encodes str arguments with os.fsencode, so surrogate escapes become the raw bytes.
    mount = sandboxfs_mount(["--mapping", "ro:" + os.fsdecode(b"/" + NON_UTF8) + ":" + os.fsdecode(host)])
    assert os.listdir(os.fsencode(mount.mount_point)) == [NON_UTF8]
    with open(os.fsencode(mount.mount_point) + b"/" + NON_UTF8 + b"/file", "rb") as f:
        assert f.read() == b"found\n"


def test_statfs_reports_the_root_mapping_host_filesystem(workdir, sandboxfs_mount):
    host = make_host(workdir)
    mount = sandboxfs_mount(mapping("ro", "/", host))
    seen, expected = os.statvfs(mount.mount_point), os.statvfs(host)
    for field in ("f_bsize", "f_frsize", "f_blocks", "f_files", "f_namemax"):
        assert getattr(seen, field) == getattr(expected, field), field
    # Free counts drift with other activity on the host filesystem: compare loosely.
    assert abs(seen.f_bfree - expected.f_bfree) <= max(expected.f_blocks // 100, 1024)
    assert abs(seen.f_ffree - expected.f_ffree) <= max(expected.f_files // 100, 1024)


# -- negative entry cache ------------------------------------------------------------------------


@pytest.mark.parametrize("ttl, visible", [("60", False), ("0", True)])
def test_missing_names_are_cached_for_the_ttl(workdir, sandboxfs_mount, ttl, visible):
    include = make_host(workdir, "include")
    write(include / "present.h")
    mount = sandboxfs_mount(["--ttl", ttl, *mapping("ro", "/include", include)])
    probes = [mount / "include" / f"probe{i}.h" for i in range(50)]
    for probe in probes:  # what a compiler does for each header on each -I dir
        assert_errno(errno.ENOENT, os.stat, probe)
    write(include / "probe7.h")  # behind the mount's back
    assert os.path.exists(probes[7]) is visible
    assert os.path.exists(mount / "include" / "present.h")
