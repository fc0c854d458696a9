"""Reaching host objects below a mapping without following symlinks.

A mapping's host path was declared by the client and is used as given.
Below it, every name came from the kernel and must stay a real directory
entry whatever the host does meanwhile: a user who can write in a mapped
directory could otherwise swap a subdirectory for a symlink to ``/root``
and have the server (often root) read or create through it.  So a host
object is reached as a ``HostEntry`` -- a directory fd opened with
``openat2(RESOLVE_NO_SYMLINKS)`` from the mapping root, and a final name --
and every syscall on it is an ``*at`` call that does not follow that name.

Pure host access: no pyfuse3, no trio.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_SYS_OPENAT2 = 437  # the same on every architecture (a syscall from 2020)
_RESOLVE_NO_SYMLINKS = 0x04
DIRECTORY_PATH = os.O_PATH | os.O_DIRECTORY


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def open_below(root: bytes, rest: bytes, flags: int = DIRECTORY_PATH) -> int:
    """Open ``root/rest``, following no symlink inside ``rest`` (ELOOP if there is one)."""
    if not rest:
        return os.open(root, flags | os.O_CLOEXEC)
    root_fd = os.open(root, DIRECTORY_PATH | os.O_CLOEXEC)
    try:
        how = _OpenHow(flags | os.O_CLOEXEC, 0, _RESOLVE_NO_SYMLINKS)
        fd = _libc.syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(root_fd), ctypes.c_char_p(rest),
                           ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    finally:
        os.close(root_fd)
    if fd < 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number), root + b"/" + rest)
    return fd


class HostEntry:
    """A host object as (``dir_fd``, ``name``), for ``*at`` calls that never follow ``name``.

    ``dir_fd`` is None when ``name`` is an absolute path: a mapping's own host
    path or a name directly inside it, where only the last component could
    be swapped (and is not followed).  Use it as a context manager: the fd
    is closed at the end, unless it is a kept one (``owned`` False:
    ``tree.dir_fds``).
    """

    __slots__ = ("dir_fd", "name", "owned")

    def __init__(self, dir_fd: int | None, name: bytes, owned: bool = True) -> None:
        self.dir_fd = dir_fd
        self.name = name
        self.owned = owned

    def __enter__(self) -> "HostEntry":
        return self

    def __exit__(self, *exc) -> None:
        if self.dir_fd is not None:
            if self.owned:
                os.close(self.dir_fd)
            self.dir_fd = None

    def lstat(self) -> os.stat_result:
        return os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)

    def open(self, flags: int, mode: int = 0o777) -> int:
        return os.open(self.name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=self.dir_fd)

    def open_path(self) -> int:
        """An O_PATH fd of the object itself (a symlink stays a symlink)."""
        return self.open(os.O_PATH)


def proc_path(fd: int) -> str:
    """A path that reaches exactly the object behind ``fd`` (for calls that take no fd)."""
    return f"/proc/self/fd/{fd}"


def renameat2(old: HostEntry, new: HostEntry, flags: int) -> None:
    """rename(2) between two entries, with RENAME_NOREPLACE / RENAME_EXCHANGE / RENAME_WHITEOUT."""
    at_cwd = -100
    if _libc.renameat2(
        old.dir_fd if old.dir_fd is not None else at_cwd, old.name,
        new.dir_fd if new.dir_fd is not None else at_cwd, new.name, ctypes.c_uint(flags),
    ) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), old.name, None, new.name)
