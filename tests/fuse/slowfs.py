"""A tiny FUSE filesystem whose reads are slow: a stand-in for a stalled host disk.

Usage: ``python tests/fuse/slowfs.py MOUNT_POINT DELAY``

The root directory holds one read-only file, ``slow.bin`` (``SIZE`` bytes of
``content()``).  Each read() waits DELAY seconds (``trio.sleep``, so the
filesystem itself keeps answering lookups and getattrs meanwhile) before it
answers.  Before waiting it prints ``read started OFFSET SIZE`` on stdout, so
a test knows when a read is in flight.  Files are opened with ``direct_io``
so that every read reaches us (no page cache in between).

Used by test_concurrency.py as the host filesystem behind a sandboxfs
mapping; it serves until SIGTERM/SIGINT or an unmount.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import sys

import pyfuse3
import trio

FILE_NAME = b"slow.bin"
FILE_INODE = pyfuse3.ROOT_INODE + 1
SIZE = 64 * 1024


def content() -> bytes:
    """The bytes of slow.bin (a test imports this to check what it read)."""
    return bytes(i % 251 for i in range(SIZE))


class SlowFS(pyfuse3.Operations):
    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.data = content()

    def _attributes(self, inode: int) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = inode
        if inode == pyfuse3.ROOT_INODE:
            entry.st_mode = stat.S_IFDIR | 0o755
            entry.st_nlink = 2
        elif inode == FILE_INODE:
            entry.st_mode = stat.S_IFREG | 0o444
            entry.st_nlink = 1
            entry.st_size = len(self.data)
        else:
            raise pyfuse3.FUSEError(errno.ENOENT)
        entry.st_blksize = 4096
        entry.entry_timeout = entry.attr_timeout = 60
        return entry

    async def getattr(self, inode, ctx=None):
        return self._attributes(inode)

    async def lookup(self, parent_inode, name, ctx=None):
        if parent_inode != pyfuse3.ROOT_INODE or name != FILE_NAME:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attributes(FILE_INODE)

    async def opendir(self, inode, ctx):
        if inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh, start_id, token):
        if start_id == 0:
            pyfuse3.readdir_reply(token, FILE_NAME, self._attributes(FILE_INODE), 1)

    async def open(self, inode, flags, ctx):
        if inode != FILE_INODE:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise pyfuse3.FUSEError(errno.EROFS)
        return pyfuse3.FileInfo(fh=inode, direct_io=True)

    async def read(self, fh, off, size):
        print(f"read started {off} {size}", flush=True)
        await trio.sleep(self.delay)
        return self.data[off:off + size]


async def _serve() -> None:
    async with trio.open_nursery() as nursery:
        async def stop_on_signal():
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()

        nursery.start_soon(stop_on_signal)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def main(argv: list[str]) -> int:
    mount_point, delay = argv[1], float(argv[2])
    options = {"fsname=slowfs", "subtype=slowfs"}
    pyfuse3.init(SlowFS(delay), mount_point, options)
    try:
        trio.run(_serve)
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
