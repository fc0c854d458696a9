"""The pyfuse3 Operations adapter: kernel requests in, tree lookups and host syscalls out.

Each handler is thin: it resolves inode numbers to nodes, checks that a
modifying request targets a writable mapping, calls the host, and records what
the kernel now knows.  ``_fuse_op`` is the one error boundary: OSError becomes
FUSEError with the same errno, an unknown inode number ESTALE, our own bugs
EIO (logged with a traceback) -- pyfuse3 stops its main loop on any other
exception, which would wedge every sandbox at once.

Kernel contracts that bite, explained where they are kept:
* every entry reply (lookup, create, mkdir, mknod, symlink, link, and each
  readdirplus entry the kernel accepts) counts one lookup; ``forget`` gives
  them back (``inodes.InodeTable``);
* a lookup of a missing name answers inode 0 with a timeout, so the kernel
  caches the miss (compilers probe dozens of include directories per header);
* directory listings are snapshots taken at offset 0, so offsets stay valid
  while entries come and go and two handles never disturb each other.
"""

from __future__ import annotations

import collections
import errno
import functools
import logging
import os
import stat
import time
from typing import Any, Callable

import pyfuse3
import trio
from pyfuse3 import FUSEError

from . import hostio
from .hostfs import HostEntry, proc_path, renameat2
from .access import CREATE, LIST, LOOKUP, OPEN, READ, REMOVE, WRITE, AccessTracker
from .inodes import Handle, InodeTable, StaleError
from .tree import MappedNode, Node, Tree, list_directory, lookup, stat_of

log = logging.getLogger(__name__)

NAME_MAX = 255
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC
# Flags we never pass to the host: the kernel already resolved creation, and it
# computes append offsets itself (a host O_APPEND would ignore them).
_STRIP_FLAGS = os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_APPEND


def _fuse_op(handler: Callable) -> Callable:
    """The error boundary and request counter every handler goes through."""
    name = handler.__name__

    @functools.wraps(handler)
    async def boundary(self: "Operations", *args: Any) -> Any:
        self.op_counts[name] += 1
        try:
            return await handler(self, *args)
        except FUSEError:
            raise
        except OSError as exc:
            raise FUSEError(exc.errno or errno.EIO) from None
        except StaleError:
            raise FUSEError(errno.ESTALE) from None
        except Exception:
            log.exception("%s%r failed; answering EIO", name, args[:3])
            raise FUSEError(errno.EIO) from None

    return boundary


def _refuse(number: int = errno.EPERM) -> FUSEError:
    return FUSEError(number)


class Operations(pyfuse3.Operations):
    """Serves a ``Tree`` to the kernel."""

    supports_dot_lookup = False  # no NFS export: '.'/'..' lookups never come
    enable_writeback_cache = False  # writes go straight to the host file

    def __init__(self, tree: Tree, *, ttl: float = 60.0, xattrs: bool = False) -> None:
        super().__init__()
        self.tree = tree
        self.inodes = InodeTable(tree.root)
        self.ttl = float(ttl)
        self.xattrs = xattrs
        self.uid = os.getuid()
        self.gid = os.getgid()
        self.chown_created = os.geteuid() == 0
        self.started_ns = time.time_ns()
        self.op_counts: collections.Counter[str] = collections.Counter()
        # Sandboxes created with track_access; every hook below first tests
        # ``if self.access.logs`` (an empty dict while no sandbox is tracked:
        # one C-level truth test per request, no Python call).
        self.access = AccessTracker()

    # -- attributes --------------------------------------------------------------------

    def _attributes(self, node: Node, st: os.stat_result | None) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = node.ino or self.inodes.number(node)
        entry.entry_timeout = self.ttl
        entry.attr_timeout = self.ttl
        if st is None:  # scaffold directory: virtual, owned by the mounting user
            entry.st_mode = stat.S_IFDIR | 0o555
            entry.st_nlink = 2
            entry.st_uid = self.uid
            entry.st_gid = self.gid
            entry.st_blksize = 4096
            entry.st_atime_ns = entry.st_mtime_ns = entry.st_ctime_ns = self.started_ns
            return entry
        entry.st_mode = st.st_mode
        entry.st_nlink = st.st_nlink
        entry.st_uid = st.st_uid
        entry.st_gid = st.st_gid
        entry.st_rdev = st.st_rdev
        entry.st_size = st.st_size
        entry.st_blksize = st.st_blksize
        entry.st_blocks = st.st_blocks
        entry.st_atime_ns = st.st_atime_ns
        entry.st_mtime_ns = st.st_mtime_ns
        entry.st_ctime_ns = st.st_ctime_ns
        return entry

    def _entry(self, node: Node, st: os.stat_result | None) -> pyfuse3.EntryAttributes:
        """Attributes for an entry reply: counts one kernel lookup of ``node``."""
        self.inodes.remember(node)
        return self._attributes(node, st)

    def _stat(self, node: Node) -> os.stat_result | None:
        fd = self.inodes.open_fd(node)
        if fd >= 0:
            return os.fstat(fd)  # right even after unlink or rename
        return stat_of(node)

    # -- permission checks -------------------------------------------------------------

    def _writable_node(self, ino: int) -> MappedNode:
        node = self.inodes[ino]
        if not isinstance(node, MappedNode) or not node.writable:
            raise _refuse()
        return node

    def _writable_dir_entry(self, parent_ino: int, name: bytes) -> tuple[MappedNode, HostEntry]:
        """Check that ``name`` in ``parent_ino`` may be created, removed or renamed.

        Returns the parent and the name's host entry (close it: ``with``).
        """
        parent = self._writable_node(parent_ino)
        if parent.overlay(name) is not None:
            raise _refuse()  # a nested mapping: only the control socket may change it
        return parent, parent.child_entry(name)

    def _chown_created(self, entry: HostEntry, ctx: pyfuse3.RequestContext) -> None:
        if self.chown_created:
            os.chown(entry.name, ctx.uid, ctx.gid, dir_fd=entry.dir_fd, follow_symlinks=False)

    # -- lookups -----------------------------------------------------------------------

    @_fuse_op
    async def lookup(self, parent_inode: int, name: bytes, ctx=None) -> pyfuse3.EntryAttributes:
        if len(name) > NAME_MAX:  # the kernel passes up to 1024 bytes; answer as any directory
            raise FUSEError(errno.ENAMETOOLONG)
        found = lookup(self.inodes[parent_inode], name)
        if found is None:
            if self.access.logs:
                self.access.missing(parent_inode, name)
            miss = pyfuse3.EntryAttributes()
            miss.st_ino = 0  # negative entry: the kernel caches the miss for entry_timeout
            miss.entry_timeout = self.ttl
            return miss
        node, st = found
        entry = self._entry(node, st)
        if self.access.logs:
            self.access.entry(parent_inode, name, entry.st_ino, LOOKUP)
        return entry

    @_fuse_op
    async def forget(self, inode_list) -> None:
        for ino, count in inode_list:
            self.inodes.forget(ino, count)

    @_fuse_op
    async def getattr(self, inode: int, ctx=None) -> pyfuse3.EntryAttributes:
        node = self.inodes[inode]
        return self._attributes(node, self._stat(node))

    @_fuse_op
    async def setattr(self, inode, attr, fields, fh, ctx) -> pyfuse3.EntryAttributes:
        node = self._writable_node(inode)
        if self.access.logs:
            self.access.note(inode, WRITE)
        handle = self.inodes.handle(fh) if fh is not None else None
        fd = handle.fd if handle is not None else self.inodes.open_fd(node)
        if fd >= 0:  # an open file: right even after unlink or rename
            _set_attributes(attr, fields, fd, handle is not None and handle.writable)
        else:
            with node.entry() as entry:
                target = entry.open_path()
                try:
                    _set_attributes(attr, fields, target, False, entry)
                finally:
                    os.close(target)
        return self._attributes(node, self._stat(node))

    @_fuse_op
    async def readlink(self, inode: int, ctx=None) -> bytes:
        node = self.inodes[inode]
        if not isinstance(node, MappedNode):
            raise _refuse(errno.EINVAL)
        if self.access.logs:
            self.access.note(inode, READ)  # following a symlink reads it
        with node.entry() as entry:
            return os.readlink(entry.name, dir_fd=entry.dir_fd)

    # -- creating and removing names ---------------------------------------------------

    def _new_entry(self, parent_inode: int, name: bytes, entry: HostEntry) -> pyfuse3.EntryAttributes:
        return self._created(parent_inode, name, entry.lstat())[1]

    def _created(self, parent_inode: int, name: bytes, st: os.stat_result):
        """The node and entry reply for a name just created in a writable directory."""
        node = self.inodes[parent_inode].discovered(name, st)
        entry = self._entry(node, st)
        if self.access.logs:
            self.access.entry(parent_inode, name, entry.st_ino, CREATE)
        return node, entry

    def _make(self, parent_inode: int, name: bytes, ctx, make: Callable[[HostEntry], None]):
        """Create a host object through ``make(entry)`` and answer its entry, owned by the caller."""
        _parent, entry = self._writable_dir_entry(parent_inode, name)
        with entry:
            make(entry)
            self._chown_created(entry, ctx)
            return self._new_entry(parent_inode, name, entry)

    @_fuse_op
    async def mknod(self, parent_inode, name, mode, rdev, ctx) -> pyfuse3.EntryAttributes:
        return self._make(parent_inode, name, ctx,
                          lambda at: os.mknod(at.name, mode, rdev, dir_fd=at.dir_fd))

    @_fuse_op
    async def mkdir(self, parent_inode, name, mode, ctx) -> pyfuse3.EntryAttributes:
        return self._make(parent_inode, name, ctx, lambda at: os.mkdir(at.name, mode, dir_fd=at.dir_fd))

    @_fuse_op
    async def symlink(self, parent_inode, name, target, ctx) -> pyfuse3.EntryAttributes:
        return self._make(parent_inode, name, ctx,
                          lambda at: os.symlink(target, at.name, dir_fd=at.dir_fd))

    @_fuse_op
    async def link(self, inode, new_parent_inode, new_name, ctx) -> pyfuse3.EntryAttributes:
        """Hard links go to the host: the new name is a new node backed by the same host file."""
        node = self._writable_node(inode)
        _parent, new = self._writable_dir_entry(new_parent_inode, new_name)
        with new, node.entry() as old:
            os.link(old.name, new.name, src_dir_fd=old.dir_fd, dst_dir_fd=new.dir_fd,
                    follow_symlinks=False)
            return self._new_entry(new_parent_inode, new_name, new)

    @_fuse_op
    async def unlink(self, parent_inode, name, ctx) -> None:
        parent, entry = self._writable_dir_entry(parent_inode, name)
        with entry:
            os.unlink(entry.name, dir_fd=entry.dir_fd)
        parent.drop_known(name)
        if self.access.logs:
            self.access.note_child(parent_inode, name, REMOVE)

    @_fuse_op
    async def rmdir(self, parent_inode, name, ctx) -> None:
        parent, entry = self._writable_dir_entry(parent_inode, name)
        with entry:
            os.rmdir(entry.name, dir_fd=entry.dir_fd)
        parent.drop_known(name)
        if self.access.logs:
            self.access.note_child(parent_inode, name, REMOVE)

    @_fuse_op
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx) -> None:
        old_parent, old = self._writable_dir_entry(parent_inode_old, name_old)
        with old:
            new_parent, new = self._writable_dir_entry(parent_inode_new, name_new)
            with new:
                renameat2(old, new, flags)
        if flags & pyfuse3.RENAME_EXCHANGE:
            old_parent.exchange_known(name_old, new_parent, name_new)
        else:
            old_parent.move_known(name_old, new_parent, name_new)
        if self.access.logs:
            self._note_rename(parent_inode_old, name_old, parent_inode_new, name_new, new_parent)

    def _note_rename(self, old_dir: int, old_name: bytes, new_dir: int, new_name: bytes,
                     new_parent: MappedNode) -> None:
        """A rename is the old name removed and the new one created (and, for an
        exchange, both kept); the moved node's inode now stands for the new path."""
        self.access.note_child(old_dir, old_name, REMOVE)
        self.access.note_child(new_dir, new_name, CREATE)
        moved = new_parent.known.get(new_name) if new_parent.known else None
        if moved is not None and moved.ino:
            self.access.moved(moved.ino, new_dir, new_name)

    # -- files -------------------------------------------------------------------------

    @_fuse_op
    async def open(self, inode: int, flags: int, ctx) -> pyfuse3.FileInfo:
        node = self.inodes[inode]
        writes = bool(flags & _WRITE_FLAGS)
        if not isinstance(node, MappedNode) or (writes and not node.writable):
            raise _refuse()
        with node.entry() as entry:
            fd = entry.open(flags & ~_STRIP_FLAGS)
        if self.access.logs:
            reads = (flags & os.O_ACCMODE) != os.O_WRONLY
            self.access.note(inode, (OPEN if reads else 0) | (WRITE if writes else 0))
        try:
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        fh = self.inodes.open(Handle(node, fd, writable=bool(flags & (os.O_WRONLY | os.O_RDWR))))
        # keep_cache: a file opened only for reading keeps its page cache across
        # opens -- but only while the host file is the one those pages came
        # from.  A file replaced by rename (even with the same size and mtime,
        # as cp -p or tar leave it) gets its cache dropped at this open.
        cached_as = (st.st_dev, st.st_ino, st.st_ctime_ns)
        keep = not writes and node.cached_as == cached_as
        node.cached_as = cached_as
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep)

    @_fuse_op
    async def create(self, parent_inode, name, mode, flags, ctx):
        _parent, entry = self._writable_dir_entry(parent_inode, name)
        with entry:
            fd = entry.open((flags & ~(os.O_NOCTTY | os.O_APPEND)) | os.O_CREAT, mode)
        try:
            if self.chown_created:
                os.fchown(fd, ctx.uid, ctx.gid)
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        node, entry = self._created(parent_inode, name, st)
        fh = self.inodes.open(Handle(node, fd, writable=bool(flags & (os.O_WRONLY | os.O_RDWR))))
        return pyfuse3.FileInfo(fh=fh, keep_cache=False), entry

    @_fuse_op
    async def read(self, fh: int, off: int, size: int):
        handle = self.inodes.handle(fh)
        if self.access.logs:
            self.access.note(handle.node.ino, READ)
        return await hostio.read(handle.fd, off, size)

    @_fuse_op
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self.inodes.handle(fh)
        if not handle.writable:
            raise _refuse(errno.EBADF)
        if self.access.logs:
            self.access.note(handle.node.ino, WRITE)
        return os.pwrite(handle.fd, buf, off)

    @_fuse_op
    async def flush(self, fh: int) -> None:
        # Nothing to flush (writes go straight to the host file).  ENOSYS tells
        # the kernel to stop sending FLUSH on every close(); close() itself
        # still succeeds.  One round trip less per file a compiler opens.
        raise FUSEError(errno.ENOSYS)

    @_fuse_op
    async def release(self, fh: int) -> None:
        os.close(self.inodes.release(fh).fd)

    @_fuse_op
    async def fsync(self, fh: int, datasync: bool) -> None:
        await hostio.fsync(self.inodes.handle(fh).fd, datasync)

    # -- directories -------------------------------------------------------------------

    @_fuse_op
    async def opendir(self, inode: int, ctx) -> int:
        node = self.inodes[inode]
        if isinstance(node, MappedNode) and not stat.S_ISDIR(self._stat(node).st_mode):
            raise _refuse(errno.ENOTDIR)
        if self.access.logs:
            self.access.note(inode, LIST)
        return self.inodes.open(Handle(node))

    @_fuse_op
    async def readdir(self, fh: int, start_id: int, token) -> None:
        handle = self.inodes.handle(fh)
        if start_id == 0 or handle.entries is None:
            # A snapshot per listing: offsets index into it, so entries added or
            # removed meanwhile can neither be skipped nor repeated.
            handle.entries = list_directory(handle.node)
        directory = handle.node
        dir_fd = _open_listed_dir(directory)  # once per call, not per entry
        try:
            self._reply_entries(handle, start_id, token, dir_fd)
        finally:
            if dir_fd >= 0:
                os.close(dir_fd)

    def _reply_entries(self, handle: Handle, start_id: int, token, dir_fd: int) -> None:
        entries = handle.entries
        directory = handle.node
        for index in range(start_id, len(entries)):
            name, node = entries[index]
            try:
                if node is None:
                    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    node = directory.discovered(name, st)
                else:
                    st = self._stat(node)
            except (FileNotFoundError, NotADirectoryError):
                continue  # removed since the snapshot
            except OSError as exc:
                if exc.errno == errno.EBADF:  # the directory itself went away
                    continue
                raise
            attributes = self._attributes(node, st)
            if self.access.logs and self.access.entry(directory.ino, name, attributes.st_ino):
                # A tracked sandbox: the kernel must look this name up again
                # when it is used, or the first use would never reach us.
                attributes.entry_timeout = 0
            if not pyfuse3.readdir_reply(token, name, attributes, index + 1):
                if not node.lookups and isinstance(node, MappedNode) and node.parent is directory:
                    directory.forget_known(node)
                return
            self.inodes.remember(node)  # readdirplus: each accepted entry is a lookup

    @_fuse_op
    async def releasedir(self, fh: int) -> None:
        self.inodes.release(fh)

    @_fuse_op
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None

    @_fuse_op
    async def statfs(self, ctx) -> pyfuse3.StatvfsData:
        # pyfuse3 does not pass the inode to statfs, so the mount reports the
        # host filesystem of its root mapping (or of its first mapping).
        sv = os.statvfs(self.tree.first_host_path() or b"/")
        data = pyfuse3.StatvfsData()
        for field in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                      "f_files", "f_ffree", "f_favail", "f_namemax"):
            setattr(data, field, getattr(sv, field))
        return data

    # -- extended attributes -----------------------------------------------------------

    def _xattr_node(self, inode: int) -> Node:
        if not self.xattrs:
            raise _refuse(errno.EOPNOTSUPP)
        return self.inodes[inode]

    @_fuse_op
    async def getxattr(self, inode: int, name: bytes, ctx) -> bytes:
        node = self._xattr_node(inode)
        if not isinstance(node, MappedNode):
            raise _refuse(pyfuse3.ENOATTR)
        return _on_host_object(node, lambda path: os.getxattr(path, name), pyfuse3.ENOATTR)

    @_fuse_op
    async def listxattr(self, inode: int, ctx) -> list[bytes]:
        node = self._xattr_node(inode)
        if not isinstance(node, MappedNode):
            return []
        try:
            names = _on_host_object(node, os.listxattr, errno.EPERM)
        except OSError as exc:
            if exc.errno == errno.EPERM:
                return []  # a symlink: nothing we may show
            raise
        return [os.fsencode(n) for n in names]

    @_fuse_op
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx) -> None:
        self._xattr_node(inode)
        node = self._writable_node(inode)
        _on_host_object(node, lambda path: os.setxattr(path, name, value), errno.EPERM)

    @_fuse_op
    async def removexattr(self, inode: int, name: bytes, ctx) -> None:
        self._xattr_node(inode)
        node = self._writable_node(inode)
        _on_host_object(node, lambda path: os.removexattr(path, name), errno.EPERM)


def _on_host_object(node: MappedNode, call: Callable[[str], Any], on_symlink: int) -> Any:
    """``call(path)`` with a path that reaches exactly the node's host object.

    For calls with no ``*at`` form (xattrs): an O_PATH fd of the object,
    reached without following symlinks, then ``/proc/self/fd/N``.  A symlink
    would be followed from there, so symlinks answer ``on_symlink`` instead
    (Linux allows no user xattrs on them anyway).
    """
    with node.entry() as entry:
        fd = entry.open_path()
    try:
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            raise OSError(on_symlink, os.strerror(on_symlink))
        return call(proc_path(fd))
    finally:
        os.close(fd)


def _open_listed_dir(directory: Node) -> int:
    """An fd of a mapped directory being listed, or -1 (scaffold, or gone)."""
    if not isinstance(directory, MappedNode):
        return -1
    try:
        return directory.open_dir()
    except OSError:
        return -1


def _set_attributes(attr, fields, fd: int, fd_writable: bool, entry: HostEntry | None = None) -> None:
    """Apply a setattr to the object behind ``fd``, never through a symlink.

    ``fd`` is an open file of the node, or (``entry`` given) an O_PATH fd of
    its host object, which ``entry`` names relative to a safe directory fd.
    Calls that take no fd go through ``/proc/self/fd/N``, which reaches
    exactly the object behind ``fd``.  A symlink's mode cannot change on
    Linux, and a size change never reaches a symlink (the kernel follows it).
    """
    st = os.fstat(fd)
    link = stat.S_ISLNK(st.st_mode)
    if fields.update_size:
        if fd_writable:
            os.ftruncate(fd, attr.st_size)
        elif link:
            raise OSError(errno.EINVAL, "a symlink has no size to set")
        else:
            os.truncate(proc_path(fd), attr.st_size)
    if fields.update_mode and not link:
        os.chmod(proc_path(fd), stat.S_IMODE(attr.st_mode))
    if fields.update_uid or fields.update_gid:
        uid = attr.st_uid if fields.update_uid else -1
        gid = attr.st_gid if fields.update_gid else -1
        if entry is None:
            os.fchown(fd, uid, gid)
        else:
            os.chown(entry.name, uid, gid, dir_fd=entry.dir_fd, follow_symlinks=False)
    if fields.update_atime or fields.update_mtime:
        times = (
            attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
            attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns,
        )
        if entry is None:
            os.utime(fd, ns=times)
        else:
            os.utime(entry.name, ns=times, dir_fd=entry.dir_fd, follow_symlinks=False)


class KernelCache:
    """Tells the kernel to drop cached directory entries after the tree changed.

    ``pyfuse3.invalidate_entry`` writes a notification to /dev/fuse and the
    kernel handles it synchronously; it may wait for a lookup in progress in
    that directory, which only this process's event loop can answer.  So the
    calls run in a worker thread while the loop keeps serving (S3QL takes the
    same care).  Entries under a directory the kernel does not know need no
    invalidation and are skipped; ENOENT means the kernel had nothing cached.
    """

    def __init__(self, inodes: InodeTable) -> None:
        self.inodes = inodes

    async def invalidate(self, entries) -> None:
        targets = [(parent.ino, name) for parent, name in entries if parent.ino and parent.lookups]
        if targets:
            await trio.to_thread.run_sync(_invalidate_entries, targets)


def _invalidate_entries(targets: list[tuple[int, bytes]]) -> None:
    for parent_ino, name in targets:
        try:
            pyfuse3.invalidate_entry(parent_ino, name)
        except FileNotFoundError:
            pass  # the kernel had nothing cached under that name
        except OSError as exc:
            log.warning("invalidating entry %r in inode %d: %s", name, parent_ino, exc)
