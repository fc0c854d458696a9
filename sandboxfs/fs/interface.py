"""The contract between the filesystem operations and a transport that speaks to the kernel.

A transport (``sandboxfs.fuse.kernel``: our own /dev/fuse protocol; or
``sandboxfs.fuse.pyfuse3``) turns kernel requests into calls of an object
that implements ``FsOperations`` and turns the plain results below back into
replies.  The operations know no transport: they take inode numbers, file
handle numbers and bytes, return these values, and fail by raising
``OSError`` with an errno (``errno_of`` maps anything else).

Why every method is synchronous: a trio task per request costs more than the
request (~10 us against ~3 us), and every operation except a host read that
misses the page cache, and fsync, takes microseconds.  Those two are split:
``read_nowait`` answers inline or says it would block, and the transport then
runs ``read`` (or ``fsync``) in a worker thread.

Pure: no pyfuse3, no trio, no wire format.
"""

from __future__ import annotations

import errno
import logging
import os
from typing import Callable, NamedTuple, Protocol

log = logging.getLogger(__name__)

ROOT_INODE = 1


class Context(NamedTuple):
    """Who asks: the calling process's ids (for ownership of created objects)."""

    uid: int
    gid: int
    pid: int
    umask: int = 0


class Entry(NamedTuple):
    """An entry or attribute reply.

    ``ino`` 0 is a negative entry: the name does not exist, and the kernel may
    cache that for ``entry_timeout`` seconds (``attr`` is None then).
    ``attr`` carries everything but the inode number (its ``st_ino`` is the
    host's and must not be sent; ``ino`` is ours).  Each positive entry reply
    the kernel accepts counts one lookup of ``ino`` (see ``forget``).
    """

    ino: int
    attr: os.stat_result | None
    entry_timeout: float
    attr_timeout: float


class Opened(NamedTuple):
    """The answer to open, create and opendir.

    ``backing_fd`` is the host descriptor behind the handle (-1 for none):
    a transport that can use kernel passthrough registers it as the
    backing file.  ``keep_cache``: the kernel may keep the pages it has of
    this file.  ``cache_dir``: the kernel may cache this directory's listing.
    """

    fh: int
    keep_cache: bool = False
    direct_io: bool = False
    cache_dir: bool = False
    backing_fd: int = -1


class SetAttr(NamedTuple):
    """What a setattr changes; None leaves a field as it is.

    Times are nanoseconds since the epoch, or ``NOW`` for the current time.
    """

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None


NOW = -1  # a SetAttr time meaning "the current time" (UTIME_NOW)

# readdir's callback: (name, entry, offset of the next entry) -> True if it fit.
# For a plain READDIR only entry.ino and the type bits of entry.attr.st_mode
# are used; a False answer means the entry was not sent and counts no lookup.
AddEntry = Callable[[bytes, Entry, int], bool]


class FsOperations(Protocol):
    """The filesystem, as a transport sees it.  Every method may raise OSError."""

    def lookup(self, parent: int, name: bytes, ctx: Context) -> Entry: ...
    def forget(self, ino: int, nlookup: int) -> None: ...
    def getattr(self, ino: int, fh: int | None, ctx: Context) -> Entry: ...
    def setattr(self, ino: int, changes: SetAttr, fh: int | None, ctx: Context) -> Entry: ...
    def readlink(self, ino: int, ctx: Context) -> bytes: ...

    def mknod(self, parent: int, name: bytes, mode: int, rdev: int, ctx: Context) -> Entry: ...
    def mkdir(self, parent: int, name: bytes, mode: int, ctx: Context) -> Entry: ...
    def symlink(self, parent: int, name: bytes, target: bytes, ctx: Context) -> Entry: ...
    def link(self, ino: int, new_parent: int, new_name: bytes, ctx: Context) -> Entry: ...
    def unlink(self, parent: int, name: bytes, ctx: Context) -> None: ...
    def rmdir(self, parent: int, name: bytes, ctx: Context) -> None: ...
    def rename(self, parent: int, name: bytes, new_parent: int, new_name: bytes, flags: int,
               ctx: Context) -> None: ...

    def fetch_for(self, ino: int) -> Callable[[], None] | None: ...
    def inode_fh(self, ino: int, writing: bool = False) -> int: ...
    def open(self, ino: int, flags: int, ctx: Context) -> Opened: ...
    def create(self, parent: int, name: bytes, mode: int, flags: int,
               ctx: Context) -> tuple[Entry, Opened]: ...
    def read_nowait(self, fh: int, offset: int, size: int) -> bytes | memoryview | None:
        """The data if it can be had without waiting for a device, else None."""
    def read(self, fh: int, offset: int, size: int) -> bytes | memoryview:
        """The data; may block (a transport calls it from a worker thread)."""
    def write(self, fh: int, offset: int, data: bytes | memoryview) -> int: ...
    def flush(self, fh: int) -> None: ...
    def release(self, fh: int) -> None: ...
    def fsync(self, fh: int, datasync: bool) -> None:
        """May block: a transport calls it from a worker thread."""

    def opendir(self, ino: int, ctx: Context) -> Opened: ...
    def readdir(self, fh: int, offset: int, plus: bool, add: AddEntry) -> None: ...
    def releasedir(self, fh: int) -> None: ...
    def fsyncdir(self, fh: int, datasync: bool) -> None: ...
    def statfs(self, ino: int) -> os.statvfs_result: ...

    def getxattr(self, ino: int, name: bytes, ctx: Context) -> bytes: ...
    def listxattr(self, ino: int, ctx: Context) -> list[bytes]: ...
    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int, ctx: Context) -> None: ...
    def removexattr(self, ino: int, name: bytes, ctx: Context) -> None: ...


class KernelNotifier(Protocol):
    """What the filesystem asks of a transport when the tree changed behind the kernel.

    Each call may wait for the kernel, which may itself wait for a request
    only the serving loop can answer: transports run them off that loop.
    ``invalidate_entries`` drops cached names (positive or negative);
    ENOENT from the kernel (nothing cached) is not an error.
    """

    async def invalidate_entries(self, entries: list[tuple[int, bytes]]) -> None: ...


class StaleError(KeyError):
    """The kernel named an inode or file handle we no longer hold (ESTALE)."""


def errno_of(exc: BaseException, what: str = "request") -> int:
    """The errno a transport answers for an exception that left an operation.

    OSError keeps its errno; a stale inode or handle is ESTALE; anything else
    is our bug: logged with its traceback, answered EIO, and the filesystem
    keeps serving every other request.
    """
    if isinstance(exc, OSError):
        return exc.errno or errno.EIO
    if isinstance(exc, StaleError):
        return errno.ESTALE
    log.error("%s failed; answering EIO", what, exc_info=exc)
    return errno.EIO
