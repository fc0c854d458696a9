"""Host reads that must not stall the serving loop: inline when cached, else a thread.

Every FUSE request of every sandbox is served by one loop in one thread, so
a read that waits for a disk would stall all of them.  Sending every read to
a worker thread would cost ~30-60 us per request instead, which is more than
the read itself when the data is in the page cache (the common case for
toolchain files).  So ``read_nowait`` first tries ``preadv2(RWF_NOWAIT)``,
which returns at once with the data if it is cached and fails with EAGAIN if
it would block; only then does the transport call ``read_full`` in a worker
thread.  Filesystems that do not support RWF_NOWAIT get threads, except
memory-backed ones (tmpfs), whose reads never wait for a device.

Owns: the choice of inline vs threaded host reads.  No transport, no trio.
"""

from __future__ import annotations

import errno
import os

# Filesystem types whose reads never wait for a device.
_MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs", "devtmpfs", "proc", "sysfs"})

_inline_by_dev: dict[int, bool] = {}


def _filesystem_type(dev: int) -> str | None:
    major, minor = os.major(dev), os.minor(dev)
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            for line in f:
                fields = line.split()
                if fields[2] == f"{major}:{minor}".encode():
                    dash = fields.index(b"-")
                    return fields[dash + 1].decode()
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reads_never_block(fd: int) -> bool:
    dev = os.fstat(fd).st_dev
    known = _inline_by_dev.get(dev)
    if known is None:
        known = _inline_by_dev[dev] = _filesystem_type(dev) in _MEMORY_FILESYSTEMS
    return known


def read_full(fd: int, offset: int, size: int) -> bytes:
    """pread until ``size`` bytes or end of file (FUSE treats a short read as EOF); may block."""
    data = os.pread(fd, size, offset)
    if len(data) == size or not data:
        return data
    chunks = [data]
    got = len(data)
    while got < size:
        more = os.pread(fd, size - got, offset + got)
        if not more:
            break
        chunks.append(more)
        got += len(more)
    return b"".join(chunks)


def read_nowait(fd: int, offset: int, size: int) -> bytes | bytearray | memoryview | None:
    """Up to ``size`` bytes at ``offset`` (short only at end of file) if they can be had
    without waiting for a device; else None: call ``read_full`` in a worker thread."""
    buf = bytearray(size)
    try:
        got = os.preadv(fd, [buf], offset, os.RWF_NOWAIT)
    except BlockingIOError:
        return None
    except OSError as exc:
        if exc.errno != errno.EOPNOTSUPP:
            raise
        return read_full(fd, offset, size) if _reads_never_block(fd) else None
    if got == size:
        return buf
    if not got:
        return b""  # at or past the end of the file
    if offset + got >= os.fstat(fd).st_size:
        return memoryview(buf)[:got]  # end of file, not a partial cache hit
    return None  # a partial cache hit reads again in the thread: rare, and simpler
