"""Inode numbers, the kernel's lookup counts, and open file handles.

The kernel refers to nodes by number.  A node gets its number the first time
the kernel learns of it (lookup, readdirplus, create) and keeps it for life:
numbers come from a counter and are never reused, so a stale number can never
name another node.  The table holds a node only while the kernel does
(lookup count > 0) or while a handle is open; when the kernel forgets a
discovered node we also drop it from its parent's cache, which is what keeps
memory bounded by what the kernel caches rather than by what was ever seen.

Open handles keep a host file descriptor.  While a file is open its
attributes come from ``fstat`` on that descriptor, so an open file keeps
working after it is unlinked or renamed (what POSIX promises and compilers
rely on for temporary files).

Knows no transport: they answer StaleError with ESTALE (``interface.errno_of``).
"""

from __future__ import annotations

from typing import Iterator

from sandboxfs.fs.interface import ROOT_INODE, StaleError
from sandboxfs.fs.shared_files import SharedFile
from sandboxfs.tree.nodes import FoundNode, Node



class Handle:
    """An open file or directory: the node, and a host fd or a directory snapshot."""

    __slots__ = ("node", "fd", "entries", "writable")

    def __init__(self, node: Node, fd: int = -1, entries: list | None = None, writable: bool = False):
        self.node = node
        self.fd = fd
        self.entries = entries
        self.writable = writable


class InodeTable:
    """Maps inode numbers to nodes and file handle numbers to handles."""

    def __init__(self, root: Node) -> None:
        self._next_ino = ROOT_INODE + 1
        self._nodes: dict[int, Node] = {}
        self._next_fh = 1
        self._handles: dict[int, Handle] = {}
        self._open_by_ino: dict[int, list[Handle]] = {}
        self.set_root(root)

    def set_root(self, root: Node) -> None:
        root.ino = ROOT_INODE
        root.lookups = 1  # the kernel never looks the root up; it is never forgotten
        self._nodes[ROOT_INODE] = root

    # -- nodes -----------------------------------------------------------------------

    def __getitem__(self, ino: int) -> Node:
        try:
            return self._nodes[ino]
        except KeyError:
            raise StaleError(f"inode {ino}") from None

    def get(self, ino: int) -> Node | None:
        return self._nodes.get(ino)

    def __len__(self) -> int:
        return len(self._nodes)

    def number(self, node: Node) -> int:
        """The node's inode number, without counting a lookup (for readdir offsets, logs)."""
        if not node.ino:
            node.ino = self._next_ino
            self._next_ino += 1
        return node.ino

    def remember(self, node: Node) -> int:
        """Count one kernel lookup of ``node`` (an entry reply) and return its number."""
        ino = node.ino or self.number(node)
        if not node.lookups:
            self._nodes[ino] = node
        node.lookups += 1
        return ino

    def forget(self, ino: int, count: int) -> None:
        """The kernel dropped ``count`` references to ``ino``."""
        node = self._nodes.get(ino)
        if node is None or ino == ROOT_INODE:
            return
        node.lookups -= count
        if node.lookups > 0:
            return
        node.lookups = 0
        if ino in self._open_by_ino:
            return  # release() finishes the job
        self._drop(node)

    def _drop(self, node: Node) -> None:
        del self._nodes[node.ino]
        kind = type(node)
        if kind is FoundNode and node.parent is not None:
            node.parent.forget_known(node)
        elif kind is SharedFile:
            node.unshare()

    # -- handles ---------------------------------------------------------------------

    def open(self, handle: Handle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = handle
        if handle.fd >= 0:
            self._open_by_ino.setdefault(handle.node.ino, []).append(handle)
        return fh

    def handle(self, fh: int) -> Handle:
        try:
            return self._handles[fh]
        except KeyError:
            raise StaleError(f"file handle {fh}") from None

    def release(self, fh: int) -> Handle:
        handle = self._handles.pop(fh)
        node = handle.node
        if handle.fd >= 0:
            handles = self._open_by_ino.get(node.ino)
            if handles is not None:
                handles.remove(handle)
                if not handles:
                    del self._open_by_ino[node.ino]
            if not node.lookups and node.ino not in self._open_by_ino and self._nodes.get(node.ino) is node:
                self._drop(node)
        return handle

    def open_fd(self, node: Node) -> int:
        """A host fd open on ``node``, or -1: lets fstat/fchmod work after unlink."""
        handles = self._open_by_ino.get(node.ino)
        return handles[0].fd if handles else -1

    def handles(self) -> Iterator[Handle]:
        return iter(list(self._handles.values()))

    def stats(self) -> dict[str, int]:
        return {"inodes": len(self._nodes), "handles": len(self._handles)}
