"""Host files per inode, for a session without OPEN (``--no-open``, FUSE no_open).

Once the kernel has been told that OPEN is not implemented (ENOSYS), it
opens files without asking and sends READ, WRITE and FSYNC with file handle
0 and the inode: an open+read+close of a file whose pages it holds then
costs no request at all.  Here each inode that is read or written gets one
host fd of its own, opened on first use (read-only, and read-write at the
first write) through ``Operations.open`` (so writes to read-only mappings
are still refused, at write() rather than at open()), and registered as an
ordinary handle so that every read path by handle serves it.

The fds are released when the kernel forgets the inode (it holds the inode
while any request on it is in flight, so no read can be using a released
fd).  So the kernel's inode cache bounds how many are open; the transport
raises ``RLIMIT_NOFILE`` to its hard limit, and past that a read fails with
EMFILE (nothing is closed under a reader).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sandboxfs.fs.operations import Operations


class InodeFiles:
    """The handle numbers of each inode's own read and read-write host files."""

    def __init__(self, ops: "Operations") -> None:
        self.ops = ops
        self._readers: dict[int, int] = {}  # ino -> fh (read-only)
        self._writers: dict[int, int] = {}  # ino -> fh (read-write)

    def fh(self, ino: int, writing: bool = False) -> int:
        """The handle to read (or write) inode ``ino`` through, opened on first use.

        OSError as ``Operations.open`` raises it: EROFS/EPERM for a write to a
        read-only mapping, ENOENT for a host file gone meanwhile.
        """
        table = self._writers if writing else self._readers
        fh = table.get(ino)
        if fh is None:
            if not writing and ino in self._writers:
                return self._writers[ino]
            fh = table[ino] = self.ops.open(ino, os.O_RDWR if writing else os.O_RDONLY).fh
        return fh

    def forget(self, ino: int) -> None:
        """The kernel dropped references to ``ino``: once it holds none, release its files."""
        node = self.ops.inodes.get(ino)
        if node is None or node.lookups:
            return
        for table in (self._readers, self._writers):
            fh = table.pop(ino, None)
            if fh is not None:
                self.ops.release(fh)
