"""Unix socket addresses for paths longer than ``sun_path`` holds.

A ``sockaddr_un`` holds 107 bytes of path, and build tools put control sockets
deep inside output bases and pytest temp dirs.  Linux resolves
``/proc/self/fd/N/name`` through the open directory ``N``, so a long path is
bound or connected to through an ``O_PATH`` descriptor of its parent: the
socket file still appears at the real path.
"""

from __future__ import annotations

import contextlib
import errno
import os
from typing import Iterator

# sizeof(sockaddr_un.sun_path) is 108 on Linux, one byte for the NUL.
SUN_PATH_MAX = 107


@contextlib.contextmanager
def socket_address(path: str) -> Iterator[str]:
    """Yield an address for ``path`` that fits ``sun_path``; valid inside the block."""
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        yield path
        return
    parent, name = os.path.split(path)
    try:
        fd = os.open(parent or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, path) from None
    try:
        address = f"/proc/self/fd/{fd}/{name}"
        if len(os.fsencode(address)) > SUN_PATH_MAX:
            raise OSError(errno.ENAMETOOLONG, f"socket file name is longer than {SUN_PATH_MAX - 20} bytes", path)
        yield address
    finally:
        os.close(fd)
