"""One handler per FUSE opcode: parse the request's arguments, call the operation, pack the reply.

``Handlers.table`` maps an opcode to a method taking (nodeid, context, the
request bytes after the header) and returning the reply body (bytes, or a
sequence of buffers), or ``NO_REPLY`` for the requests the kernel expects no
answer to (FORGET, BATCH_FORGET, INTERRUPT).  A handler fails by raising
OSError; a request too short for its struct fails as ValueError or
struct.error and is answered EINVAL by the transport.

Synchronous and transport-free but for two things the transport supplies:
``passthrough`` (register a host fd as a backing file) and the decision to
run blocking reads and fsync off the loop (``BLOCKING``).
"""

from __future__ import annotations

import errno
import os
from typing import Callable

from sandboxfs.fs.interface import NOW, Context, Entry, FsOperations, Opened, SetAttr
from sandboxfs.fuse.kernel import wire
from sandboxfs.fuse.kernel.wire import c_string

NO_REPLY = None


class Handlers:
    """The request handlers of one session over ``ops``."""

    def __init__(self, ops: FsOperations, passthrough: Callable[[int, Opened], int] | None,
                 release_backing: Callable[[int], None] | None,
                 forgotten: Callable[[int], None] | None = None) -> None:
        self.ops = ops
        self.passthrough = passthrough
        self.release_backing = release_backing
        self.forgotten = forgotten or (lambda ino: None)
        w = wire
        self.table: dict[int, Callable] = {
            w.LOOKUP: self.lookup, w.FORGET: self.forget, w.BATCH_FORGET: self.batch_forget,
            w.GETATTR: self.getattr, w.SETATTR: self.setattr, w.READLINK: self.readlink,
            w.SYMLINK: self.symlink, w.MKNOD: self.mknod, w.MKDIR: self.mkdir,
            w.UNLINK: self.unlink, w.RMDIR: self.rmdir, w.RENAME: self.rename,
            w.RENAME2: self.rename2, w.LINK: self.link, w.OPEN: self.open,
            w.WRITE: self.write, w.STATFS: self.statfs, w.RELEASE: self.release,
            w.FLUSH: self.flush, w.SETXATTR: self.setxattr, w.GETXATTR: self.getxattr,
            w.LISTXATTR: self.listxattr, w.REMOVEXATTR: self.removexattr,
            w.OPENDIR: self.opendir, w.READDIR: self.readdir,
            w.READDIRPLUS: self.readdirplus, w.RELEASEDIR: self.releasedir,
            w.CREATE: self.create, w.DESTROY: self.destroy,
        }

    # -- replies ---------------------------------------------------------------------

    @staticmethod
    def _entry(entry: Entry) -> bytes:
        return wire.entry_out(entry.ino, entry.attr, entry.entry_timeout, entry.attr_timeout)

    def _open_out(self, ino: int, opened: Opened, directory: bool = False) -> bytes:
        flags = 0
        backing_id = 0
        if self.passthrough is not None and not directory:
            backing_id = self.passthrough(ino, opened)  # 0 for an open we serve (cached)
        if backing_id > 0:
            flags |= wire.FOPEN_PASSTHROUGH  # refused together with KEEP_CACHE
        elif opened.keep_cache:
            flags |= wire.FOPEN_KEEP_CACHE
        if opened.direct_io:
            flags |= wire.FOPEN_DIRECT_IO
        if directory and opened.cache_dir:
            flags |= wire.FOPEN_CACHE_DIR
        return wire.OPEN_OUT.pack(opened.fh, flags, backing_id)

    # -- names and attributes --------------------------------------------------------

    def lookup(self, nodeid: int, ctx: Context, data: bytes) -> bytes:
        name, _ = c_string(data, 0)
        return self._entry(self.ops.lookup(nodeid, name, ctx))

    def forget(self, nodeid: int, ctx: Context, data: bytes) -> None:
        (nlookup,) = wire.FORGET_IN.unpack_from(data)
        self.ops.forget(nodeid, nlookup)
        self.forgotten(nodeid)
        return NO_REPLY

    def batch_forget(self, nodeid: int, ctx: Context, data: bytes) -> None:
        count, _ = wire.BATCH_FORGET_IN.unpack_from(data)
        at = wire.BATCH_FORGET_IN.size
        count = min(count, (len(data) - at) // wire.FORGET_ONE.size)
        forget, forgotten = self.ops.forget, self.forgotten
        for ino, nlookup in wire.FORGET_ONE.iter_unpack(data[at:at + count * wire.FORGET_ONE.size]):
            try:
                forget(ino, nlookup)
            except KeyError:
                pass  # an inode we no longer hold: nothing to give back
            forgotten(ino)
        return NO_REPLY

    def getattr(self, nodeid: int, ctx: Context, data: bytes) -> bytes:
        fh = None
        if len(data) >= wire.GETATTR_IN.size:
            flags, _, fh_value = wire.GETATTR_IN.unpack_from(data)
            fh = fh_value if flags & wire.GETATTR_FH else None
        entry = self.ops.getattr(nodeid, fh, ctx)
        return wire.attr_out(entry.ino, entry.attr, entry.attr_timeout)

    def setattr(self, nodeid: int, ctx: Context, data: bytes) -> bytes:
        (valid, _, fh, size, _owner, atime, mtime, _ctime, atimensec, mtimensec, _ctimensec,
         mode, _, uid, gid, _) = wire.SETATTR_IN.unpack_from(data)
        if valid & wire.FATTR_ATIME_NOW:
            atime_ns = NOW
        else:
            atime_ns = atime * 1_000_000_000 + atimensec if valid & wire.FATTR_ATIME else None
        if valid & wire.FATTR_MTIME_NOW:
            mtime_ns = NOW
        else:
            mtime_ns = mtime * 1_000_000_000 + mtimensec if valid & wire.FATTR_MTIME else None
        changes = SetAttr(
            mode=mode if valid & wire.FATTR_MODE else None,
            uid=uid if valid & wire.FATTR_UID else None,
            gid=gid if valid & wire.FATTR_GID else None,
            size=size if valid & wire.FATTR_SIZE else None,
            atime_ns=atime_ns, mtime_ns=mtime_ns)
        entry = self.ops.setattr(nodeid, changes, fh if valid & wire.FATTR_FH else None, ctx)
        return wire.attr_out(entry.ino, entry.attr, entry.attr_timeout)

    def readlink(self, nodeid: int, ctx: Context, data: bytes) -> bytes:
        return self.ops.readlink(nodeid, ctx)

    # -- creating and removing names -------------------------------------------------

    def mknod(self, nodeid: int, ctx: Context, data: bytes) -> bytes:
        mode, rdev, umask, _ = wire.MKNOD_IN.unpack_from(data)
        name, _ = c_string(data, wire.MKNOD_IN.size)
        return self._entry(self.ops.mknod(nodeid, name, mode, rdev, ctx._replace(umask=umask)))

    def mkdir(self, nodeid: int, ctx: Context, data: bytes) -> bytes:
        mode, umask = wire.MKDIR_IN.unpack_from(data)
        name, _ = c_string(data, wire.MKDIR_IN.size)
        return self._entry(self.ops.mkdir(nodeid, name, mode, ctx._replace(umask=umask)))

    def symlink(self, nodeid: int, ctx: Context, data: bytes) -> bytes:
        name, at = c_string(data, 0)
        target, _ = c_string(data, at)
        return self._entry(self.ops.symlink(nodeid, name, target, ctx))

    def link(self, nodeid: int, ctx: Context, data: bytes) -> bytes:
        (old,) = wire.LINK_IN.unpack_from(data)
        name, _ = c_string(data, wire.LINK_IN.size)
        return self._entry(self.ops.link(old, nodeid, name, ctx))

    def unlink(self, nodeid: int, ctx: Context, data: bytes) -> bytes:
        self.ops.unlink(nodeid, c_string(data, 0)[0], ctx)
        return b""

    def rmdir(self, nodeid: int, ctx: Context, data: bytes) -> bytes:
        self.ops.rmdir(nodeid, c_string(data, 0)[0], ctx)
        return b""

    def rename(self, nodeid: int, ctx: Context, data: bytes) -> bytes:
        (new_dir,) = wire.RENAME_IN.unpack_from(data)
        return self._rename(nodeid, new_dir, 0, data, wire.RENAME_IN.size, ctx)

    def rename2(self, nodeid: int, ctx: Context, data: bytes) -> bytes:
        new_dir, flags, _ = wire.RENAME2_IN.unpack_from(data)
        return self._rename(nodeid, new_dir, flags, data, wire.RENAME2_IN.size, ctx)

    def _rename(self, nodeid: int, new_dir: int, flags: int, data: bytes, at: int,
                ctx: Context) -> bytes:
        name, at = c_string(data, at)
        new_name, _ = c_string(data, at)
        self.ops.rename(nodeid, name, new_dir, new_name, flags, ctx)
        return b""

    # -- files -----------------------------------------------------------------------

    def open(self, nodeid: int, ctx: Context, data: bytes) -> bytes:
        flags, _ = wire.OPEN_IN.unpack_from(data)
        return self._open_out(nodeid, self.ops.open(nodeid, flags, ctx))

    def create(self, nodeid: int, ctx: Context, data: bytes) -> bytes:
        flags, mode, umask, _ = wire.CREATE_IN.unpack_from(data)
        name, _ = c_string(data, wire.CREATE_IN.size)
        entry, opened = self.ops.create(nodeid, name, mode, flags, ctx._replace(umask=umask))
        return self._entry(entry) + self._open_out(entry.ino, opened)

    def write(self, nodeid: int, ctx: Context, data) -> bytes:
        fh, offset, size, _ = wire.WRITE_IN.unpack_from(data)
        at = wire.WRITE_IN_SIZE
        if len(data) - at < size:
            raise OSError(errno.EINVAL, "write shorter than its size")
        if not fh:  # a no-open session: by inode
            fh = self.ops.inode_fh(nodeid, writing=True)
        written = self.ops.write(fh, offset, data[at:at + size])
        return wire.WRITE_OUT.pack(written, 0)

    def flush(self, nodeid: int, ctx: Context, data: bytes) -> bytes:
        self.ops.flush(wire.RELEASE_IN.unpack_from(data)[0])
        return b""

    def release(self, nodeid: int, ctx: Context, data: bytes) -> bytes:
        fh = wire.RELEASE_IN.unpack_from(data)[0]
        if not fh:
            return b""  # the open answered ENOSYS (no-open): the inode's files stay until FORGET
        self.ops.release(fh)
        if self.release_backing is not None:
            self.release_backing(fh)
        return b""

    def statfs(self, nodeid: int, ctx: Context, data: bytes) -> bytes:
        sv = self.ops.statfs(nodeid)
        return wire.STATFS_OUT.pack(sv.f_blocks, sv.f_bfree, sv.f_bavail, sv.f_files,
                                    sv.f_ffree, sv.f_bsize, sv.f_namemax, sv.f_frsize, 0)

    # -- extended attributes ---------------------------------------------------------

    @staticmethod
    def _sized(value: bytes, size: int) -> bytes:
        """The reply to a getxattr/listxattr of buffer ``size`` (0: just the length)."""
        if size == 0:
            return wire.XATTR_SIZE_OUT.pack(len(value), 0)
        if len(value) > size:
            raise OSError(errno.ERANGE, os.strerror(errno.ERANGE))
        return value

    def getxattr(self, nodeid: int, ctx: Context, data: bytes) -> bytes:
        size, _ = wire.GETXATTR_IN.unpack_from(data)
        name, _ = c_string(data, wire.GETXATTR_IN.size)
        return self._sized(self.ops.getxattr(nodeid, name, ctx), size)

    def listxattr(self, nodeid: int, ctx: Context, data: bytes) -> bytes:
        size, _ = wire.GETXATTR_IN.unpack_from(data)
        names = b"".join(name + b"\0" for name in self.ops.listxattr(nodeid, ctx))
        return self._sized(names, size)

    def setxattr(self, nodeid: int, ctx: Context, data: bytes) -> bytes:
        size, flags = wire.SETXATTR_IN.unpack_from(data)
        name, at = c_string(data, wire.SETXATTR_IN.size)
        if len(data) - at < size:
            raise OSError(errno.EINVAL, "setxattr value shorter than its size")
        self.ops.setxattr(nodeid, name, data[at:at + size], flags, ctx)
        return b""

    def removexattr(self, nodeid: int, ctx: Context, data: bytes) -> bytes:
        self.ops.removexattr(nodeid, c_string(data, 0)[0], ctx)
        return b""

    # -- directories -----------------------------------------------------------------

    def opendir(self, nodeid: int, ctx: Context, data: bytes) -> bytes:
        return self._open_out(nodeid, self.ops.opendir(nodeid, ctx), directory=True)

    def readdir(self, nodeid: int, ctx: Context, data: bytes) -> bytes:
        return self._listing(data, False)

    def readdirplus(self, nodeid: int, ctx: Context, data: bytes) -> bytes:
        return self._listing(data, True)

    def _listing(self, data: bytes, plus: bool) -> bytes:
        fh, offset, size, _ = wire.READ_IN.unpack_from(data)
        out = bytearray()
        extend = out.extend
        room = [size]
        dirent = wire.DIRENT.pack
        entry_out = wire.entry_out

        def add(name: bytes, entry: Entry, next_offset: int) -> bool:
            length = wire.dirent_size(len(name), plus)
            if length > room[0]:
                return False
            room[0] -= length
            start = len(out)
            if plus:
                extend(entry_out(entry.ino, entry.attr, entry.entry_timeout, entry.attr_timeout))
            extend(dirent(entry.ino, next_offset, len(name), (entry.attr.st_mode >> 12) & 0xF))
            extend(name)
            extend(bytes(length - (len(out) - start)))
            return True

        self.ops.readdir(fh, offset, plus, add)
        return bytes(out)

    def releasedir(self, nodeid: int, ctx: Context, data: bytes) -> bytes:
        self.ops.releasedir(wire.RELEASE_IN.unpack_from(data)[0])
        return b""

    def destroy(self, nodeid: int, ctx: Context, data: bytes) -> bytes:
        return b""
