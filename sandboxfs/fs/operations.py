"""The filesystem operations: kernel requests in, tree lookups and host syscalls out.

``Operations`` implements ``interface.FsOperations`` for a ``Tree``.  Each
method is thin: it resolves inode numbers to nodes, checks that a modifying
request targets a writable mapping, calls the host, and records what the
kernel now knows.  Errors leave as OSError with the host's errno (a stale
inode or handle as ``StaleError``); the transport answers them.

Kernel contracts that bite, explained where they are kept:
* every entry reply (lookup, create, mkdir, mknod, symlink, link, and each
  readdirplus entry the kernel accepts) counts one lookup; ``forget`` gives
  them back (``inodes.InodeTable``);
* a lookup of a missing name answers inode 0 with a timeout, so the kernel
  caches the miss (compilers probe dozens of include directories per header);
* directory listings are snapshots taken at offset 0, so offsets stay valid
  while entries come and go and two handles never disturb each other.

Knows no transport: no pyfuse3, no trio, no wire format.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from typing import Any, Callable

from sandboxfs.fs import host_io
from sandboxfs.fs.access import CREATE, LIST, LOOKUP, OPEN, READ, REMOVE, WRITE, AccessTracker
from sandboxfs.fs.host_calls import on_host_object, set_attributes
from sandboxfs.fs.inode_files import InodeFiles
from sandboxfs.fs.inodes import Handle, InodeTable
from sandboxfs.fs.interface import AddEntry, Context, Entry, Opened, SetAttr
from sandboxfs.fs.shared_files import SharedFile, SharedFiles
from sandboxfs.tree.host_entries import HostEntry, renameat2
from sandboxfs.tree.content import ContentDir, VirtualSymlink
from sandboxfs.tree.lookup import list_directory, lookup, stat_of
from sandboxfs.tree.nodes import FoundNode, HostNode, Node
from sandboxfs.tree.sandboxes import Tree

NAME_MAX = 255
ENOATTR = errno.ENODATA  # Linux spells "no such attribute" ENODATA
RENAME_EXCHANGE = 2
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC
# Flags we never pass to the host: the kernel already resolved creation, and it
# computes append offsets itself (a host O_APPEND would ignore them).
_STRIP_FLAGS = os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_APPEND
_RACY_NS = 3_000_000_000


def _refuse(number: int = errno.EPERM) -> OSError:
    return OSError(number, os.strerror(number))


def _writes(flags: int) -> bool:
    return bool(flags & (os.O_WRONLY | os.O_RDWR))


class Operations:
    """Serves a ``Tree``: the filesystem as every transport sees it."""

    def __init__(self, tree: Tree, *, ttl: float = 60.0, xattrs: bool = False,
                 shared_inodes: bool = True) -> None:
        self.tree = tree
        self.inodes = InodeTable(tree.root)
        self.ttl = float(ttl)
        self.xattrs = xattrs
        self.chown_created = os.geteuid() == 0
        started = time.time_ns()
        # What a scaffold directory looks like: virtual, owned by the mounting user.
        self.scaffold_stat = os.stat_result(
            (stat.S_IFDIR | 0o555, 0, 0, 2, os.getuid(), os.getgid(), 0,
             started // 10**9, started // 10**9, started // 10**9),
            {"st_atime_ns": started, "st_mtime_ns": started, "st_ctime_ns": started,
             "st_blksize": 4096, "st_blocks": 0, "st_rdev": 0},
        )
        # Sandboxes created with track_access; every hook below first tests
        # ``if self.access.logs`` (an empty dict while no sandbox is tracked:
        # one C-level truth test per request, no Python call).
        self.access = AccessTracker()
        self.inode_files: InodeFiles | None = None  # a no-open session's (--no-open)
        # One kernel inode per read-only host file across sandboxes (fs.shared_files).
        self.shared = SharedFiles() if shared_inodes else None

    # -- attributes --------------------------------------------------------------------

    def _reply(self, node: Node, st: os.stat_result | None) -> Entry:
        """Attributes of ``node`` (no lookup counted: getattr, setattr)."""
        ttl = self.ttl
        return Entry(node.ino or self.inodes.number(node), st or self.scaffold_stat, ttl, ttl)

    def _entry(self, node: Node, st: os.stat_result | None) -> Entry:
        """An entry reply: counts one kernel lookup of ``node``."""
        ttl = self.ttl
        return Entry(self.inodes.remember(node), st or self.scaffold_stat, ttl, ttl)

    def _stat(self, node: Node) -> os.stat_result | None:
        fd = self.inodes.open_fd(node)
        if fd >= 0:
            return node.shown(os.fstat(fd))  # right even after unlink or rename
        return stat_of(node)

    # -- permission checks -------------------------------------------------------------

    def _writable_node(self, ino: int) -> HostNode:
        node = self.inodes[ino]
        if not node.writable:
            raise _refuse(node.refusal)
        return node

    def _writable_dir_entry(self, parent_ino: int, name: bytes) -> tuple[HostNode, HostEntry]:
        """Check that ``name`` in ``parent_ino`` may be created, removed or renamed.

        Returns the parent and the name's host entry (close it: ``with``).
        """
        if len(name) > NAME_MAX:
            raise _refuse(errno.ENAMETOOLONG)
        parent = self._writable_node(parent_ino)
        if parent.overlay(name) is not None:
            raise _refuse()  # a nested mapping: only the control socket may change it
        return parent, parent.child_entry(name)

    def _chown_created(self, entry: HostEntry, ctx: Context) -> None:
        if self.chown_created:
            os.chown(entry.name, ctx.uid, ctx.gid, dir_fd=entry.dir_fd, follow_symlinks=False)

    # -- lookups -----------------------------------------------------------------------

    def lookup(self, parent: int, name: bytes, ctx: Context | None = None) -> Entry:
        if len(name) > NAME_MAX:  # the kernel passes up to 1024 bytes; answer as any directory
            raise _refuse(errno.ENAMETOOLONG)
        found = lookup(self.inodes[parent], name)
        if found is None:
            if self.access.logs:
                self.access.missing(parent, name)
            # A negative entry: the kernel caches the miss for entry_timeout.
            return Entry(0, None, self.ttl, 0.0)
        node, st = found
        if self.shared is not None and not self.access.logs:
            node = self.shared.node_for(node, st)
        entry = self._entry(node, st)
        if self.access.logs:
            self.access.entry(parent, name, entry.ino, LOOKUP)
        return entry

    def forget(self, ino: int, nlookup: int) -> None:
        self.inodes.forget(ino, nlookup)
        if self.inode_files is not None:
            self.inode_files.forget(ino)

    def inode_fh(self, ino: int, writing: bool = False) -> int:
        """A no-open session's handle for reading (or writing) ``ino`` (``InodeFiles``)."""
        if self.inode_files is None:
            self.inode_files = InodeFiles(self)
        return self.inode_files.fh(ino, writing)

    def getattr(self, ino: int, fh: int | None = None, ctx: Context | None = None) -> Entry:
        node = self.inodes[ino]
        return self._reply(node, self._stat(node))

    def setattr(self, ino: int, changes: SetAttr, fh: int | None, ctx: Context | None) -> Entry:
        node = self._writable_node(ino)
        if self.access.logs:
            self.access.note(ino, WRITE)
        handle = self.inodes.handle(fh) if fh else None
        fd = handle.fd if handle is not None and handle.fd >= 0 else self.inodes.open_fd(node)
        if fd >= 0:  # an open file: right even after unlink or rename
            set_attributes(changes, fd, handle is not None and handle.writable)
        else:
            with node.entry() as entry:
                target = entry.open_path()
                try:
                    set_attributes(changes, target, False, entry)
                finally:
                    os.close(target)
        return self._reply(node, self._stat(node))

    def readlink(self, ino: int, ctx: Context | None = None) -> bytes:
        node = self.inodes[ino]
        virtual = type(node) is VirtualSymlink
        if not virtual and not isinstance(node, HostNode):
            raise _refuse(errno.EINVAL)
        if self.access.logs:
            self.access.note(ino, READ)  # following a symlink reads it
        if virtual:
            return node.target
        with node.entry() as entry:
            return os.readlink(entry.name, dir_fd=entry.dir_fd)

    # -- creating and removing names ---------------------------------------------------

    def _created(self, parent_ino: int, name: bytes, st: os.stat_result) -> tuple[FoundNode, Entry]:
        """The node and entry reply for a name just created in a writable directory."""
        node = self.inodes[parent_ino].found(name, st)
        entry = self._entry(node, st)
        if self.access.logs:
            self.access.entry(parent_ino, name, entry.ino, CREATE)
        return node, entry

    def _make(self, parent_ino: int, name: bytes, ctx: Context,
              make: Callable[[HostEntry], None]) -> Entry:
        """Create a host object through ``make(entry)`` and answer its entry, owned by the caller."""
        _parent, entry = self._writable_dir_entry(parent_ino, name)
        with entry:
            make(entry)
            self._chown_created(entry, ctx)
            return self._created(parent_ino, name, entry.lstat())[1]

    def mknod(self, parent: int, name: bytes, mode: int, rdev: int, ctx: Context) -> Entry:
        return self._make(parent, name, ctx, lambda at: os.mknod(at.name, mode, rdev, dir_fd=at.dir_fd))

    def mkdir(self, parent: int, name: bytes, mode: int, ctx: Context) -> Entry:
        return self._make(parent, name, ctx, lambda at: os.mkdir(at.name, mode, dir_fd=at.dir_fd))

    def symlink(self, parent: int, name: bytes, target: bytes, ctx: Context) -> Entry:
        return self._make(parent, name, ctx, lambda at: os.symlink(target, at.name, dir_fd=at.dir_fd))

    def link(self, ino: int, new_parent: int, new_name: bytes, ctx: Context) -> Entry:
        """Hard links go to the host: the new name is a new node backed by the same host file."""
        node = self._writable_node(ino)
        _parent, new = self._writable_dir_entry(new_parent, new_name)
        with new, node.entry() as old:
            os.link(old.name, new.name, src_dir_fd=old.dir_fd, dst_dir_fd=new.dir_fd,
                    follow_symlinks=False)
            return self._created(new_parent, new_name, new.lstat())[1]

    def unlink(self, parent: int, name: bytes, ctx: Context | None = None) -> None:
        self._remove(parent, name, os.unlink)

    def rmdir(self, parent: int, name: bytes, ctx: Context | None = None) -> None:
        self._remove(parent, name, os.rmdir)

    def _remove(self, parent: int, name: bytes, remove: Callable[..., None]) -> None:
        directory, entry = self._writable_dir_entry(parent, name)
        with entry:
            remove(entry.name, dir_fd=entry.dir_fd)
        directory.drop_known(name)
        if self.access.logs:
            self.access.note_child(parent, name, REMOVE)

    def rename(self, parent: int, name: bytes, new_parent: int, new_name: bytes, flags: int,
               ctx: Context | None = None) -> None:
        old_dir, old = self._writable_dir_entry(parent, name)
        with old:
            new_dir, new = self._writable_dir_entry(new_parent, new_name)
            with new:
                renameat2(old, new, flags)
        if flags & RENAME_EXCHANGE:
            old_dir.exchange_known(name, new_dir, new_name)
        else:
            old_dir.move_known(name, new_dir, new_name)
        if self.access.logs:
            self._note_rename(parent, name, new_parent, new_name, new_dir)

    def _note_rename(self, old_dir: int, old_name: bytes, new_dir: int, new_name: bytes,
                     new_parent: HostNode) -> None:
        """A rename is the old name removed and the new one created (and, for an
        exchange, both kept); the moved node's inode now stands for the new path."""
        self.access.note_child(old_dir, old_name, REMOVE)
        self.access.note_child(new_dir, new_name, CREATE)
        moved = new_parent.known.get(new_name) if new_parent.known else None
        if moved is not None and moved.ino:
            self.access.moved(moved.ino, new_dir, new_name)

    # -- files -------------------------------------------------------------------------

    def fetch_for(self, ino: int) -> Callable[[], None] | None:
        """What the transport must run in a thread before ``open(ino)``: fetching content
        from a remote CAS (``tree.content.CasFile``), else None."""
        node = self.inodes.get(ino)
        return None if node is None else node.pending_fetch()

    def open(self, ino: int, flags: int, ctx: Context | None = None) -> Opened:
        node = self.inodes[ino]
        writes = bool(flags & _WRITE_FLAGS)
        if not isinstance(node, HostNode) or (writes and not node.writable):
            raise _refuse(node.refusal if writes else errno.EPERM)
        with node.entry() as entry:
            fd = entry.open(flags & ~_STRIP_FLAGS)
        if self.access.logs:
            reads = (flags & os.O_ACCMODE) != os.O_WRONLY
            self.access.note(ino, (OPEN if reads else 0) | (WRITE if writes else 0))
        try:
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        fh = self.inodes.open(Handle(node, fd, writable=_writes(flags)))
        # keep_cache: a file opened only for reading keeps its page cache across
        # opens -- but only while the host file is the one those pages came
        # from.  A file replaced by rename (even with the same size and mtime,
        # as cp -p or tar leave it) gets its cache dropped at this open.
        cached_as = (st.st_dev, st.st_ino, st.st_ctime_ns)
        keep = not writes and node.cached_as == cached_as
        node.cached_as = cached_as
        # Passthrough (the kernel reads the host file itself) only for read-only
        # mappings, where every open reads, and never while a sandbox is tracked: its
        # reads would not reach the access tracker.  Nodes shared between sandboxes
        # (``passes_through``) keep small files' pages instead (docs/design.md).
        backing = (fd if not node.writable and not self.access.logs
                   and node.passes_through(st.st_size) else -1)
        return Opened(fh, keep_cache=keep, backing_fd=backing)

    def create(self, parent: int, name: bytes, mode: int, flags: int,
               ctx: Context) -> tuple[Entry, Opened]:
        _directory, entry = self._writable_dir_entry(parent, name)
        with entry:
            fd = entry.open((flags & ~(os.O_NOCTTY | os.O_APPEND)) | os.O_CREAT, mode)
        try:
            if self.chown_created:
                os.fchown(fd, ctx.uid, ctx.gid)
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        node, reply = self._created(parent, name, st)
        fh = self.inodes.open(Handle(node, fd, writable=_writes(flags)))
        return reply, Opened(fh)

    def read_nowait(self, fh: int, offset: int, size: int) -> bytes | bytearray | memoryview | None:
        handle = self.inodes.handle(fh)
        if self.access.logs:
            self.access.note(handle.node.ino, READ)
        return host_io.read_nowait(handle.fd, offset, size)

    def read(self, fh: int, offset: int, size: int) -> bytes:
        return host_io.read_full(self.inodes.handle(fh).fd, offset, size)

    def write(self, fh: int, offset: int, data: bytes | memoryview) -> int:
        handle = self.inodes.handle(fh)
        if not handle.writable:
            raise _refuse(errno.EBADF)
        if self.access.logs:
            self.access.note(handle.node.ino, WRITE)
        return os.pwrite(handle.fd, data, offset)

    def flush(self, fh: int) -> None:
        # Nothing to flush (writes go straight to the host file).  ENOSYS tells
        # the kernel to stop sending FLUSH on every close(); close() itself
        # still succeeds.  One round trip less per file a compiler opens.
        raise _refuse(errno.ENOSYS)

    def release(self, fh: int) -> None:
        os.close(self.inodes.release(fh).fd)

    def fsync(self, fh: int, datasync: bool) -> None:
        fd = self.inodes.handle(fh).fd
        (os.fdatasync if datasync else os.fsync)(fd)

    # -- directories -------------------------------------------------------------------

    def opendir(self, ino: int, ctx: Context | None = None) -> Opened:
        node = self.inodes[ino]
        cache = keep = False
        fd = -1
        if isinstance(node, HostNode):
            # The handle keeps the host directory open, as an open file keeps its
            # file: fstat, fchmod, fchown, futimens and the f*xattr calls on the
            # fd still reach it after it is removed or renamed, and listings
            # read the directory that was opened.
            fd = node.open_dir(os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                st = os.fstat(fd)
            except BaseException:
                os.close(fd)
                raise
            # The kernel may keep the listing of a read-only host directory while
            # the directory is the same one, unchanged (mtime), with no nested
            # mapping (those change through the control socket) and no tracking
            # (a tracked listing must reach us).
            cache = not node.writable and not node.overlays and not self.access.logs
            cached_as = (st.st_dev, st.st_ino, st.st_mtime_ns)
            # Two changes within one timestamp tick could hide behind an equal
            # mtime: a listing is kept only once its mtime is a few seconds old.
            keep = (cache and node.cached_as == cached_as
                    and time.time_ns() - st.st_mtime_ns > _RACY_NS)
            node.cached_as = cached_as
        elif type(node) is ContentDir:
            # An immutable listing: the kernel may keep its pages for as long as
            # the node shows the same listing (a reused slot swaps it).
            cache = not self.access.logs
            keep = cache and node.cached_as is node.listing
            node.cached_as = node.listing
        if self.access.logs:
            self.access.note(ino, LIST)
        return Opened(self.inodes.open(Handle(node, fd)), keep_cache=keep, cache_dir=cache)

    def readdir(self, fh: int, offset: int, plus: bool, add: AddEntry) -> None:
        handle = self.inodes.handle(fh)
        if offset == 0 or handle.entries is None:
            # A snapshot per listing: offsets index into it, so entries added or
            # removed meanwhile can neither be skipped nor repeated.
            handle.entries = list_directory(handle.node, handle.fd)
        self._reply_entries(handle, offset, plus, add, handle.fd)

    def _reply_entries(self, handle: Handle, start: int, plus: bool, add: AddEntry,
                       dir_fd: int) -> None:
        entries = handle.entries
        directory = handle.node
        ttl = self.ttl
        for index in range(start, len(entries)):
            name, node = entries[index]
            try:
                if node is None:
                    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    node = directory.found(name, st)
                else:
                    st = self._stat(node) or self.scaffold_stat
            except (FileNotFoundError, NotADirectoryError):
                continue  # removed since the snapshot
            except OSError as exc:
                if exc.errno == errno.EBADF:  # the directory itself went away
                    continue
                raise
            if self.shared is not None and not self.access.logs:
                node = self.shared.node_for(node, st, plus)  # a plus entry counts as a lookup
            timeout = ttl
            ino = node.ino or self.inodes.number(node)
            if plus and self.access.logs and self.access.entry(directory.ino, name, ino):
                # A tracked sandbox: the kernel must look this name up again
                # when it is used, or the first use would never reach us.
                timeout = 0.0
            if not add(name, Entry(ino, st, timeout, ttl), index + 1):
                if not node.lookups and type(node) is FoundNode and node.parent is directory:
                    directory.forget_known(node)
                elif not node.lookups and type(node) is SharedFile:
                    node.unshare()  # made for this entry, which the kernel did not take
                return
            if plus:
                self.inodes.remember(node)  # readdirplus: each accepted entry is a lookup
            elif not node.lookups and type(node) is FoundNode and node.parent is directory:
                directory.forget_known(node)  # a plain listing holds nothing

    def releasedir(self, fh: int) -> None:
        fd = self.inodes.release(fh).fd
        if fd >= 0:
            os.close(fd)

    def fsyncdir(self, fh: int, datasync: bool) -> None:
        """Make the directory's entries durable (a read-only mapping has nothing to write)."""
        handle = self.inodes.handle(fh)
        if handle.fd >= 0 and handle.node.writable:
            (os.fdatasync if datasync else os.fsync)(handle.fd)

    def statfs(self, ino: int) -> os.statvfs_result:
        """The host filesystem behind ``ino`` (the mount's first mapping for scaffolds)."""
        node = self.inodes[ino] if ino else None
        if isinstance(node, HostNode):
            try:
                return os.statvfs(node.host_path())
            except OSError:
                pass
        return os.statvfs(self.tree.first_host_path() or b"/")

    # -- extended attributes -----------------------------------------------------------

    def _xattr_node(self, ino: int) -> Node:
        if not self.xattrs:
            raise _refuse(errno.EOPNOTSUPP)
        return self.inodes[ino]

    def _on_xattr_object(self, node: HostNode, call: Callable[[Any], Any], on_symlink: int) -> Any:
        """``call`` on an open fd of the node if it has one (right after unlink or
        rename, as fgetxattr and friends are), else on its host object by path."""
        fd = self.inodes.open_fd(node)
        if fd >= 0:
            return call(fd)
        return on_host_object(node, call, on_symlink)

    def getxattr(self, ino: int, name: bytes, ctx: Context | None = None) -> bytes:
        node = self._xattr_node(ino)
        if not isinstance(node, HostNode):
            raise _refuse(ENOATTR)
        return self._on_xattr_object(node, lambda target: os.getxattr(target, name), ENOATTR)

    def listxattr(self, ino: int, ctx: Context | None = None) -> list[bytes]:
        node = self._xattr_node(ino)
        if not isinstance(node, HostNode):
            return []
        try:
            names = self._on_xattr_object(node, os.listxattr, errno.EPERM)
        except OSError as exc:
            if exc.errno == errno.EPERM:
                return []  # a symlink: nothing we may show
            raise
        return [os.fsencode(n) for n in names]

    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0,
                 ctx: Context | None = None) -> None:
        self._xattr_node(ino)
        node = self._writable_node(ino)
        self._on_xattr_object(node, lambda target: os.setxattr(target, name, value, flags),
                              errno.EPERM)

    def removexattr(self, ino: int, name: bytes, ctx: Context | None = None) -> None:
        self._xattr_node(ino)
        node = self._writable_node(ino)
        self._on_xattr_object(node, lambda target: os.removexattr(target, name), errno.EPERM)

