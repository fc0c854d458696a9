"""Host calls that have no ``*at`` form, made on exactly the node's host object.

setattr and the xattr calls must reach the object a node stands for and
never follow a symlink swapped in below a mapping.  They act on an open
file's fd, or on an O_PATH fd of the object reached without following
symlinks (``tree.host_entries``), through ``/proc/self/fd/N`` where the call
takes no fd.

Knows no transport.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from typing import Any, Callable

from sandboxfs.fs.interface import NOW, SetAttr
from sandboxfs.tree.host_entries import HostEntry, proc_path
from sandboxfs.tree.nodes import HostNode


def on_host_object(node: HostNode, call: Callable[[str], Any], on_symlink: int) -> Any:
    """``call(path)`` with a path that reaches exactly the node's host object.

    A symlink would be followed from ``/proc/self/fd/N``, so symlinks answer
    ``on_symlink`` instead (Linux allows no user xattrs on them anyway).
    """
    with node.entry() as entry:
        fd = entry.open_path()
    try:
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            raise OSError(on_symlink, os.strerror(on_symlink))
        return call(proc_path(fd))
    finally:
        os.close(fd)


def _time(value: int | None, current: int) -> int:
    if value is None:
        return current
    return time.time_ns() if value == NOW else value


def set_attributes(changes: SetAttr, fd: int, fd_writable: bool,
                   entry: HostEntry | None = None) -> None:
    """Apply a setattr to the object behind ``fd``, never through a symlink.

    ``fd`` is an open file of the node, or (``entry`` given) an O_PATH fd of
    its host object, which ``entry`` names relative to a safe directory fd.
    A symlink's mode cannot change on Linux, and a size change never reaches
    a symlink (the kernel follows it).
    """
    st = os.fstat(fd)
    link = stat.S_ISLNK(st.st_mode)
    if changes.size is not None:
        if fd_writable:
            os.ftruncate(fd, changes.size)
        elif link:
            raise OSError(errno.EINVAL, "a symlink has no size to set")
        else:
            os.truncate(proc_path(fd), changes.size)
    if changes.mode is not None and not link:
        os.chmod(proc_path(fd), stat.S_IMODE(changes.mode))
    if changes.uid is not None or changes.gid is not None:
        uid = changes.uid if changes.uid is not None else -1
        gid = changes.gid if changes.gid is not None else -1
        if entry is None:
            os.fchown(fd, uid, gid)
        else:
            os.chown(entry.name, uid, gid, dir_fd=entry.dir_fd, follow_symlinks=False)
    if changes.atime_ns is not None or changes.mtime_ns is not None:
        times = (_time(changes.atime_ns, st.st_atime_ns), _time(changes.mtime_ns, st.st_mtime_ns))
        if entry is None:
            os.utime(fd, ns=times)
        else:
            os.utime(entry.name, ns=times, dir_fd=entry.dir_fd, follow_symlinks=False)
