"""Node kinds for trees named by content: read-only directories made into nodes on demand.

A sandbox of the sandbox-backend protocol (``sandboxfs.backend``) is a REAPI
Merkle tree: immutable directory listings shared by every sandbox that
holds their digest.  Building one node per entry at create time would cost
the whole tree per sandbox (16,000 entries for a toolchain); instead:

* ``ContentDir``: a read-only directory whose entries come from an
  immutable ``listing`` (anything with an ``entries`` dict: the backend's
  ``MerkleDir``).  A name becomes a node on its first lookup, through the
  directory's ``source`` (which knows where leaf bytes live), and is kept in
  ``children`` so that it keeps its inode number.  ``overrides`` holds the
  sandbox's own explicit entries (writable outputs), which shadow or add to
  the listing.  The listing may be swapped for another (a reused sandbox
  slot, ``backend.slots``): the caller then drops the children that changed.
* ``ContentFile``: a read-only host file shown with the mode the tree says
  (0555 or 0444), whatever the host file's own mode: one stored file serves
  a digest that is executable in one directory and not in another.
* ``CasFile``: a ``ContentFile`` whose bytes may not be on this machine yet
  (``sandboxfs.worker``): its attributes come from the tree (digest size,
  mode), and its first open fetches the content into the local store
  (``pending_fetch``, run by the transport in a worker thread).
* ``VirtualSymlink``: a symlink the tree declares; its target lives in memory.

Writes to any of them fail with EROFS (``refusal``).

Pure: no pyfuse3, no trio.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from typing import Any, Protocol

from sandboxfs.tree.nodes import MappedNode, Node

_STARTED_NS = time.time_ns()


class LeafSource(Protocol):
    """Turns one entry of a listing into its node (the backend decides where bytes live)."""

    def node_for(self, directory: "ContentDir", name: bytes, leaf: Any) -> Node | None:
        """The node for ``leaf`` (entry ``name`` of ``directory``), or None if it cannot be shown."""


class ContentDir(Node):
    """A read-only directory over an immutable listing; its nodes are made when looked up.

    ``path`` is the directory's path in the tree (b"" for the root,
    '/'-joined names), which the source needs for leaves read from an exec
    root.  ``cached_as`` is the listing the kernel's cached directory pages
    came from (``Operations.opendir`` keeps them only while it is the same).
    """

    __slots__ = ("listing", "path", "source", "children", "overrides", "cached_as")

    refusal = errno.EROFS

    def __init__(self, listing: Any, path: bytes, source: LeafSource) -> None:
        super().__init__()
        self.listing = listing
        self.path = path
        self.source = source
        self.children: dict[bytes, Node] = {}
        self.overrides: dict[bytes, Node] | None = None
        self.cached_as: Any = None

    def contents(self) -> dict | None:
        return self.overrides

    def child(self, name: bytes) -> Node | None:
        """The node for ``name``: an override, a node made earlier, or one made now."""
        overrides = self.overrides
        if overrides:
            node = overrides.get(name)
            if node is not None:
                return node.resolve(overrides, name)
        node = self.children.get(name)
        if node is not None:
            return node
        leaf = self.listing.entries.get(name)
        if leaf is None:
            return None
        node = self.source.node_for(self, name, leaf)
        if node is not None:
            self.children[name] = node
        return node

    def names(self) -> list[bytes]:
        """Every name, in the listing's (sorted) order, then the overrides it lacks."""
        names = list(self.listing.entries)
        if self.overrides:
            entries = self.listing.entries
            names.extend(name for name in self.overrides if name not in entries)
        return names

    def child_path(self, name: bytes) -> bytes:
        return self.path + b"/" + name if self.path else name

    def set_override(self, name: bytes, node: Node) -> None:
        if self.overrides is None:
            self.overrides = {}
        self.overrides[name] = node


def _with_mode(st: os.stat_result, mode: int) -> os.stat_result:
    fields = list(st)
    fields[0] = mode
    return os.stat_result(fields, {
        "st_atime_ns": st.st_atime_ns, "st_mtime_ns": st.st_mtime_ns,
        "st_ctime_ns": st.st_ctime_ns, "st_blksize": st.st_blksize,
        "st_blocks": st.st_blocks, "st_rdev": st.st_rdev,
    })


class ContentFile(MappedNode):
    """A read-only host file shown as a regular file with the tree's executable bit."""

    __slots__ = ("mode", "__weakref__")  # weakly shared between sandboxes (backend.slots)

    refusal = errno.EROFS
    # One node serves every sandbox, so a small file read once stays in the page cache
    # for all of them; through passthrough each open+fstat would cost a GETATTR instead
    # (a passthrough read makes the kernel drop the atime).  Big files still pass through.
    passthrough_min = 1 << 20

    def __init__(self, host_path: bytes, executable: bool) -> None:
        directory, _, name = host_path.rpartition(b"/")
        super().__init__(directory or b"/", name, False)
        self.mode = stat.S_IFREG | (0o555 if executable else 0o444)

    def shown(self, st: os.stat_result) -> os.stat_result:
        return _with_mode(st, self.mode) if st.st_mode != self.mode else st

    def lstat(self) -> os.stat_result:
        return self.shown(os.lstat(self.host_path()))


class Fetcher(Protocol):
    """Brings content into the local store (``sandboxfs.worker.fetch``)."""

    def held_path(self, digest: str) -> str | None:
        """Where the store holds ``digest`` now, or None."""

    def fetch(self, digest: str, size: int) -> None:
        """Put ``digest`` into the store (blocking); OSError (EIO) if it cannot be had."""


def _file_stat(mode: int, size: int) -> os.stat_result:
    seconds = _STARTED_NS // 10**9
    return os.stat_result(
        (mode, 0, 0, 1, os.getuid(), os.getgid(), size, seconds, seconds, seconds),
        {"st_atime_ns": _STARTED_NS, "st_mtime_ns": _STARTED_NS, "st_ctime_ns": _STARTED_NS,
         "st_blksize": 4096, "st_blocks": (size + 511) // 512, "st_rdev": 0},
    )


class CasFile(ContentFile):
    """An input file named by digest, fetched into the local store on its first open.

    Its attributes never touch the disk: size from the digest, mode from the
    tree, times fixed at server start, the same before and after the fetch
    (a changing mtime would make the kernel drop the pages it keeps).  The
    host path is where the store keeps the digest; while the store does not
    hold it, ``pending_fetch`` returns what fetches it.
    """

    __slots__ = ("digest", "size", "fetcher", "_stat", "opened_before")

    def __init__(self, store_path: bytes, digest: str, size: int, executable: bool,
                 fetcher: Fetcher) -> None:
        super().__init__(store_path, executable)
        self.digest = digest
        self.size = size
        self.fetcher = fetcher
        self._stat = _file_stat(self.mode, size)
        self.opened_before = False

    def passes_through(self, size: int) -> bool:
        # The first open passes through: content new to the worker is mostly an action's
        # own input, read once, and passthrough saves its READ round trip (a 10,000-file
        # root read whole: 2.1 s instead of 2.6-3.3 s).  Later opens -- a toolchain's
        # headers, action after action -- keep the node's pages: a reopen then costs no
        # READ and no GETATTR (a passthrough read makes the kernel drop the atime).
        first = not self.opened_before
        self.opened_before = True
        return first or size >= self.passthrough_min

    def shown(self, st: os.stat_result) -> os.stat_result:
        return self._stat

    def lstat(self) -> os.stat_result:
        return self._stat

    def pending_fetch(self):
        if self.fetcher.held_path(self.digest) is not None:
            return None
        return self._fetch

    def _fetch(self) -> None:
        self.fetcher.fetch(self.digest, self.size)


class VirtualSymlink(Node):
    """A symlink declared by the tree: readlink answers ``target`` from memory."""

    __slots__ = ("target", "_stat")

    refusal = errno.EROFS

    def __init__(self, target: bytes) -> None:
        super().__init__()
        self.target = target
        self._stat: os.stat_result | None = None

    def synthetic_stat(self) -> os.stat_result:
        st = self._stat
        if st is None:
            seconds = _STARTED_NS // 10**9
            st = self._stat = os.stat_result(
                (stat.S_IFLNK | 0o777, 0, 0, 1, os.getuid(), os.getgid(), len(self.target),
                 seconds, seconds, seconds),
                {"st_atime_ns": _STARTED_NS, "st_mtime_ns": _STARTED_NS,
                 "st_ctime_ns": _STARTED_NS, "st_blksize": 4096, "st_blocks": 0, "st_rdev": 0},
            )
        return st
