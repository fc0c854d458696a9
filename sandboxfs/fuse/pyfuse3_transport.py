"""The pyfuse3 transport: libfuse speaks to the kernel, we adapt its calls to ``fs.Operations``.

Kept for kernels or setups where our own transport (``fuse.kernel``) cannot
run.  Each handler converts pyfuse3's arguments, calls the operation, and
converts the plain result back.  ``_boundary`` is the one error boundary:
errors become FUSEError with ``interface.errno_of`` -- pyfuse3 stops its main
loop on any other exception, which would wedge every sandbox at once.

pyfuse3 keeps its state in module globals: one mount per process.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
from typing import Any, Callable

import pyfuse3
import trio
from pyfuse3 import FUSEError

from sandboxfs.fs.interface import Context, Entry, SetAttr, errno_of
from sandboxfs.fs.operations import Operations

log = logging.getLogger(__name__)

READ_THREADS = trio.CapacityLimiter(16)  # bounded: slow disks cannot spawn unbounded threads
FETCH_THREADS = trio.CapacityLimiter(32)  # opens waiting for a remote CAS (sandboxfs.worker)


def _attributes(entry: Entry) -> pyfuse3.EntryAttributes:
    out = pyfuse3.EntryAttributes()
    out.st_ino = entry.ino
    out.entry_timeout = entry.entry_timeout
    out.attr_timeout = entry.attr_timeout
    st = entry.attr
    if st is None:
        return out
    out.st_mode = st.st_mode
    out.st_nlink = st.st_nlink
    out.st_uid = st.st_uid
    out.st_gid = st.st_gid
    out.st_rdev = st.st_rdev
    out.st_size = st.st_size
    out.st_blksize = st.st_blksize
    out.st_blocks = st.st_blocks
    out.st_atime_ns = st.st_atime_ns
    out.st_mtime_ns = st.st_mtime_ns
    out.st_ctime_ns = st.st_ctime_ns
    return out


def _context(ctx: Any) -> Context:
    if ctx is None:
        return Context(os.getuid(), os.getgid(), 0, 0)
    return Context(ctx.uid, ctx.gid, ctx.pid, ctx.umask)


def _boundary(handler: Callable) -> Callable:
    """The error boundary and request counter every handler goes through."""
    name = handler.__name__

    @functools.wraps(handler)
    async def boundary(self: "Pyfuse3Operations", *args: Any) -> Any:
        self.counts[name] += 1
        try:
            return await handler(self, *args)
        except FUSEError:
            raise
        except Exception as exc:  # trio's Cancelled is a BaseException: it passes
            raise FUSEError(errno_of(exc, f"{name}{args[:3]!r}")) from None

    return boundary


class Pyfuse3Operations(pyfuse3.Operations):
    """pyfuse3's handlers, each a conversion around one ``Operations`` call."""

    supports_dot_lookup = False  # no NFS export: '.'/'..' lookups never come
    enable_writeback_cache = False  # writes go straight to the host file

    def __init__(self, ops: Operations) -> None:
        super().__init__()
        self.ops = ops
        self.counts: collections.Counter[str] = collections.Counter()

    @_boundary
    async def lookup(self, parent_inode: int, name: bytes, ctx=None) -> pyfuse3.EntryAttributes:
        return _attributes(self.ops.lookup(parent_inode, name, _context(ctx)))

    @_boundary
    async def forget(self, inode_list) -> None:
        for ino, count in inode_list:
            self.ops.forget(ino, count)

    @_boundary
    async def getattr(self, inode: int, ctx=None) -> pyfuse3.EntryAttributes:
        return _attributes(self.ops.getattr(inode, None, _context(ctx)))

    @_boundary
    async def setattr(self, inode, attr, fields, fh, ctx) -> pyfuse3.EntryAttributes:
        changes = SetAttr(
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
        )
        return _attributes(self.ops.setattr(inode, changes, fh, _context(ctx)))

    @_boundary
    async def readlink(self, inode: int, ctx=None) -> bytes:
        return self.ops.readlink(inode, _context(ctx))

    @_boundary
    async def mknod(self, parent_inode, name, mode, rdev, ctx) -> pyfuse3.EntryAttributes:
        return _attributes(self.ops.mknod(parent_inode, name, mode, rdev, _context(ctx)))

    @_boundary
    async def mkdir(self, parent_inode, name, mode, ctx) -> pyfuse3.EntryAttributes:
        return _attributes(self.ops.mkdir(parent_inode, name, mode, _context(ctx)))

    @_boundary
    async def symlink(self, parent_inode, name, target, ctx) -> pyfuse3.EntryAttributes:
        return _attributes(self.ops.symlink(parent_inode, name, target, _context(ctx)))

    @_boundary
    async def link(self, inode, new_parent_inode, new_name, ctx) -> pyfuse3.EntryAttributes:
        return _attributes(self.ops.link(inode, new_parent_inode, new_name, _context(ctx)))

    @_boundary
    async def unlink(self, parent_inode, name, ctx) -> None:
        self.ops.unlink(parent_inode, name, _context(ctx))

    @_boundary
    async def rmdir(self, parent_inode, name, ctx) -> None:
        self.ops.rmdir(parent_inode, name, _context(ctx))

    @_boundary
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        self.ops.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags,
                        _context(ctx))

    @_boundary
    async def open(self, inode: int, flags: int, ctx) -> pyfuse3.FileInfo:
        fetch = self.ops.fetch_for(inode)
        if fetch is not None:
            await trio.to_thread.run_sync(fetch, limiter=FETCH_THREADS, abandon_on_cancel=True)
        opened = self.ops.open(inode, flags, _context(ctx))
        return pyfuse3.FileInfo(fh=opened.fh, keep_cache=opened.keep_cache,
                                direct_io=opened.direct_io)

    @_boundary
    async def create(self, parent_inode, name, mode, flags, ctx):
        entry, opened = self.ops.create(parent_inode, name, mode, flags, _context(ctx))
        return pyfuse3.FileInfo(fh=opened.fh, keep_cache=False), _attributes(entry)

    @_boundary
    async def read(self, fh: int, off: int, size: int):
        data = self.ops.read_nowait(fh, off, size)
        if data is None:
            # abandon_on_cancel: a host read stalled on a hung filesystem must not
            # hold the unmount at shutdown (the only time requests are cancelled).
            data = await trio.to_thread.run_sync(self.ops.read, fh, off, size,
                                                 limiter=READ_THREADS, abandon_on_cancel=True)
        return data

    @_boundary
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return self.ops.write(fh, off, buf)

    @_boundary
    async def flush(self, fh: int) -> None:
        self.ops.flush(fh)

    @_boundary
    async def release(self, fh: int) -> None:
        self.ops.release(fh)

    @_boundary
    async def fsync(self, fh: int, datasync: bool) -> None:
        await trio.to_thread.run_sync(self.ops.fsync, fh, datasync, limiter=READ_THREADS,
                                      abandon_on_cancel=True)

    @_boundary
    async def opendir(self, inode: int, ctx) -> int:
        return self.ops.opendir(inode, _context(ctx)).fh

    @_boundary
    async def readdir(self, fh: int, start_id: int, token) -> None:
        def add(name: bytes, entry: Entry, next_offset: int) -> bool:
            return pyfuse3.readdir_reply(token, name, _attributes(entry), next_offset)

        # pyfuse3 answers with readdirplus entries: each one it sends counts a lookup.
        self.ops.readdir(fh, start_id, True, add)

    @_boundary
    async def releasedir(self, fh: int) -> None:
        self.ops.releasedir(fh)

    @_boundary
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await trio.to_thread.run_sync(self.ops.fsyncdir, fh, datasync, limiter=READ_THREADS,
                                      abandon_on_cancel=True)

    @_boundary
    async def statfs(self, ctx) -> pyfuse3.StatvfsData:
        # pyfuse3 does not pass the inode to statfs: the root's answer serves all.
        sv = self.ops.statfs(0)
        data = pyfuse3.StatvfsData()
        for field in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                      "f_files", "f_ffree", "f_favail", "f_namemax"):
            setattr(data, field, getattr(sv, field))
        return data

    @_boundary
    async def getxattr(self, inode: int, name: bytes, ctx) -> bytes:
        return self.ops.getxattr(inode, name, _context(ctx))

    @_boundary
    async def listxattr(self, inode: int, ctx) -> list[bytes]:
        return self.ops.listxattr(inode, _context(ctx))

    @_boundary
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx) -> None:
        self.ops.setxattr(inode, name, value, 0, _context(ctx))

    @_boundary
    async def removexattr(self, inode: int, name: bytes, ctx) -> None:
        self.ops.removexattr(inode, name, _context(ctx))


class Pyfuse3Notifier:
    """``interface.KernelNotifier`` through ``pyfuse3.invalidate_entry``.

    The kernel handles a notification synchronously and may wait for a lookup
    in progress in that directory, which only this process's event loop can
    answer: so the calls run in a worker thread while the loop keeps serving
    (S3QL takes the same care).  ENOENT means the kernel had nothing cached.
    """

    async def invalidate_entries(self, entries: list[tuple[int, bytes]]) -> None:
        await trio.to_thread.run_sync(_invalidate_entries, entries)


def _invalidate_entries(targets: list[tuple[int, bytes]]) -> None:
    for parent_ino, name in targets:
        try:
            pyfuse3.invalidate_entry(parent_ino, name)
        except FileNotFoundError:
            pass  # the kernel had nothing cached under that name
        except OSError as exc:
            log.warning("invalidating entry %r in inode %d: %s", name, parent_ino, exc)


class Pyfuse3Transport:
    """Mounting, serving and unmounting through pyfuse3 (one per process).

    ``mount`` happens before trio starts (pyfuse3.init), ``serve`` runs in the
    trio loop until the kernel ends the session, ``unmount`` in ``finally``:
    libfuse detaches lazily (``umount2(MNT_DETACH)``, or ``fusermount3 -u -z``
    when not root), so a signal while files are open never hangs.
    """

    name = "pyfuse3"

    def __init__(self, ops: Operations) -> None:
        self.handlers = Pyfuse3Operations(ops)
        self.notifier = Pyfuse3Notifier()

    def mount(self, mount_point: str, options: set[str]) -> None:
        """Mount; raises RuntimeError when the kernel refuses."""
        pyfuse3.init(self.handlers, mount_point, options)

    async def serve(self) -> None:
        await pyfuse3.main(min_tasks=2, max_tasks=64)

    def unmount(self) -> None:
        pyfuse3.close(unmount=True)

    def counts(self) -> dict[str, int]:
        return dict(self.handlers.counts)
