"""Host I/O that must not stall the event loop: reads and fsync.

Every FUSE request of every sandbox is served by one trio loop in one thread,
so a read that waits for a disk would stall all of them.  Sending every read
to a worker thread would cost ~30-60 us per request instead, which is more
than the read itself when the data is in the page cache (the common case for
toolchain files).  So a read first tries ``preadv2(RWF_NOWAIT)``, which
returns at once with the data if it is cached and fails with EAGAIN if it
would block; only then does the read move to a thread.  Filesystems that do
not support RWF_NOWAIT get threads, except memory-backed ones (tmpfs), whose
reads never wait for a device.

Owns: the choice of inline vs threaded host I/O.  No pyfuse3 here.
"""

from __future__ import annotations

import errno
import os

import trio

# Filesystem types whose reads never wait for a device.
_MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs", "devtmpfs", "proc", "sysfs"})
# Bounded so that slow disks cannot make us spawn unbounded threads.
io_threads = trio.CapacityLimiter(16)

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


def _pread_full(fd: int, size: int, offset: int) -> bytes:
    """pread until ``size`` bytes or end of file (FUSE treats a short read as EOF)."""
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


async def read(fd: int, offset: int, size: int) -> bytes | memoryview:
    """Read up to ``size`` bytes at ``offset``; short only at end of file."""
    buf = bytearray(size)
    try:
        got = os.preadv(fd, [buf], offset, os.RWF_NOWAIT)
    except BlockingIOError:
        got = -1
    except OSError as exc:
        if exc.errno != errno.EOPNOTSUPP:
            raise
        if _reads_never_block(fd):
            return _pread_full(fd, size, offset)
        got = -1
    if got == size:
        return buf
    if got > 0 and offset + got >= os.fstat(fd).st_size:
        return memoryview(buf)[:got]  # end of file, not a partial cache hit
    if got < 0:
        got = 0
    # abandon_on_cancel: a host read stalled on a hung filesystem must not hold
    # the unmount at shutdown (the only time requests are cancelled).
    rest = await trio.to_thread.run_sync(
        _pread_full, fd, size - got, offset + got, limiter=io_threads, abandon_on_cancel=True
    )
    if not got:
        return rest
    return bytes(memoryview(buf)[:got]) + rest


async def fsync(fd: int, datasync: bool) -> None:
    await trio.to_thread.run_sync(
        os.fdatasync if datasync else os.fsync, fd, limiter=io_threads, abandon_on_cancel=True
    )
