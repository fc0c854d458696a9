"""The node kinds of the mapping tree, and what each knows about its host object.

* ``ScaffoldDir``: a virtual, immutable directory that exists only because
  mappings lie below it (the mount root, a sandbox's top directory, the
  ``external/cc`` in ``external/cc/bin/clang``).  Its ``children`` are the
  explicit entries below it.
* ``MappedNode``: an explicit mapping.  It shows one host object (file,
  directory, symlink or special file) at ``host_dir/host_name``.  A mapped
  directory may carry ``overlays``: nested mappings (or scaffolds leading to
  them) that shadow the host entries of the same name.
* ``FoundNode``: an entry found on disk inside a mapped directory.  It has no
  host path of its own: its path is its parent's plus its ``name``, so a rename
  through the mount moves one cache entry and the subtree follows.
* ``LazyFile``: a read-only file mapping that has no node yet.  One LazyFile
  stands for every sibling mapped from the same host directory under its own
  name (a toolchain's headers): a container maps each name to the same
  LazyFile, and the first lookup of a name replaces it with that name's
  ``MappedNode`` (``resolve``).  This keeps a 100,000-mapping sandbox at one
  dict entry per mapping.

Every kind answers ``resolve`` (the node a container entry stands for),
``contents`` (the container of its explicit children, if it has one) and
``explicit`` (declared by a mapping), so code that walks containers never
asks which kind it holds.

Found nodes are kept in their parent's ``known`` dict only while the kernel
holds them (``sandboxfs.fs.inodes`` drops them when it forgets them), so a
name keeps its inode number while it is in use and memory follows what the
kernel caches.  ``host_ino`` remembers which host object a found node stood
for: a name replaced behind our back gets a new node, never the old identity.

Pure: no pyfuse3, no trio.  Host access goes through ``host_entries`` so that
nothing below a mapping is reached through a symlink.
"""

from __future__ import annotations

import errno
import os

from sandboxfs.tree.dir_fds import DIR_FDS
from sandboxfs.tree.host_entries import HostEntry, open_below


class Node:
    """What every node has: the kernel bookkeeping that ``fs.inodes.InodeTable`` manages.

    ``ino`` is 0 until the kernel first learns the node; afterwards it is kept
    for the node's whole life (numbers are never reused), so a node that the
    kernel forgot and looks up again gets the same number back.
    """

    __slots__ = ("ino", "lookups")

    writable = False
    explicit = False  # declared by a mapping (or standing for one)
    refusal = errno.EPERM  # the errno of a change refused because the node is read-only

    def __init__(self) -> None:
        self.ino = 0
        self.lookups = 0

    def resolve(self, container: dict, name: bytes) -> "Node":
        """The node that entry ``name`` of ``container`` stands for (itself, but for LazyFile)."""
        return self

    def as_node(self, name: bytes) -> "Node":
        """The node this value is under ``name``, without storing it anywhere."""
        return self

    def contents(self) -> dict | None:
        """The container of explicit children (scaffold children, overlays), or None."""
        return None

    def synthetic_stat(self) -> os.stat_result | None:
        """The attributes of a node with no host object (None: a scaffold's, made by the caller)."""
        return None

    def pending_fetch(self):
        """What must run (blocking, off the loop) before this node can be opened, or None.

        Only ``tree.content.CasFile`` has one: content still in a remote CAS.
        """
        return None


class ScaffoldDir(Node):
    """A virtual directory holding explicit children only; mode 0555, immutable."""

    __slots__ = ("children",)

    def __init__(self, children: dict | None = None) -> None:
        super().__init__()
        self.children: dict[bytes, Node] = {} if children is None else children

    def contents(self) -> dict:
        return self.children


class LazyFile(Node):
    """Read-only file mappings of one host directory, each under its host name, not yet nodes.

    Shared: the same object is the value of every such name, in every
    container (and sandbox) built from one group.  It never gets an inode
    number itself; ``resolve`` makes the name's own ``MappedNode``.
    """

    __slots__ = ("host_dir",)

    explicit = True

    def __init__(self, host_dir: bytes) -> None:
        super().__init__()
        self.host_dir = host_dir

    def resolve(self, container: dict, name: bytes) -> "MappedNode":
        node = container[name] = MappedNode(self.host_dir, name, False)
        return node

    def as_node(self, name: bytes) -> "MappedNode":
        return MappedNode(self.host_dir, name, False)

    def host_path_of(self, name: bytes) -> bytes:
        return join_host(self.host_dir, name)


def join_host(directory: bytes, name: bytes) -> bytes:
    return directory + name if directory.endswith(b"/") else directory + b"/" + name


class HostNode(Node):
    """A node backed by a host object: the host access both MappedNode and FoundNode share.

    Directories among them hold ``overlays`` (explicit children shadowing
    host entries) and ``known`` (found children the kernel holds).
    ``cached_as`` is (st_dev, st_ino, st_ctime_ns) of the host file at its
    last open: the file whose bytes the kernel's page cache for this node holds.
    """

    __slots__ = ("writable", "overlays", "known", "cached_as")

    passthrough_min = 0  # smallest read-only file opened through FUSE passthrough

    def passes_through(self, size: int) -> bool:
        """Whether this open of the (read-only) file should be FUSE passthrough."""
        return size >= self.passthrough_min

    def __init__(self, writable: bool) -> None:
        super().__init__()
        self.writable = writable
        self.overlays: dict[bytes, Node] | None = None
        self.known: dict[bytes, FoundNode] | None = None
        self.cached_as: tuple[int, int, int] | None = None

    def contents(self) -> dict | None:
        return self.overlays

    def shown(self, st: os.stat_result) -> os.stat_result:
        """The attributes the mount shows for host attributes ``st`` (``tree.content`` changes the mode)."""
        return st

    def host_path(self) -> bytes:  # pragma: no cover - both kinds override it
        raise NotImplementedError

    def mapping_and_rest(self) -> tuple["MappedNode", list[bytes]]:
        """The explicit mapping this node lies in, and the names below it (innermost first)."""
        raise NotImplementedError  # pragma: no cover

    def child_path(self, name: bytes) -> bytes:
        return join_host(self.host_path(), name)

    # -- reaching the host object without following symlinks (host_entries) -----------

    def open_dir(self, flags: int = os.O_PATH | os.O_DIRECTORY) -> int:
        """An fd of this directory's host directory; no symlink below the mapping is followed."""
        mapping, rest = self.mapping_and_rest()
        rest.reverse()
        return open_below(mapping.host_path(), b"/".join(rest), flags)

    def child_entry(self, name: bytes) -> HostEntry:
        """Entry ``name`` of this directory on the host."""
        raise NotImplementedError  # pragma: no cover

    def entry(self) -> HostEntry:
        """This node's host object."""
        raise NotImplementedError  # pragma: no cover

    def lstat(self) -> os.stat_result:
        with self.entry() as entry:
            return entry.lstat()

    def lstat_child(self, name: bytes) -> os.stat_result:
        """lstat of entry ``name`` of this directory on the host."""
        with self.child_entry(name) as entry:
            return entry.lstat()

    # -- children --------------------------------------------------------------------

    def overlay(self, name: bytes) -> Node | None:
        overlays = self.overlays
        if not overlays:
            return None
        child = overlays.get(name)
        return child.resolve(overlays, name) if child is not None else None

    def found(self, name: bytes, st: os.stat_result) -> "FoundNode":
        """The node for host entry ``name`` (whose lstat is ``st``), reused if unchanged."""
        known = self.known
        if known is None:
            known = self.known = {}
        node = known.get(name)
        if node is not None and node.host_ino == st.st_ino:
            return node
        if node is not None:
            node.parent = None  # replaced behind our back: the old node is orphaned
            DIR_FDS.discard(node)
        node = known[name] = FoundNode(self, name, st.st_ino, self.writable)
        return node

    def drop_known(self, name: bytes) -> "FoundNode | None":
        """Cut a found child loose (it was unlinked or renamed away)."""
        known = self.known
        node = known.pop(name, None) if known else None
        if node is not None:
            node.parent = None
            DIR_FDS.discard(node)
        return node

    def adopt(self, name: bytes, node: "FoundNode") -> None:
        """Keep ``node`` as found child ``name`` (after a rename through the mount)."""
        if self.known is None:
            self.known = {}
        self.known[name] = node
        node.parent = self
        node.name = name

    def move_known(self, name: bytes, new_parent: "HostNode", new_name: bytes) -> None:
        """Record a rename done through the mount, keeping the node's identity."""
        node = self.known.pop(name, None) if self.known else None
        new_parent.drop_known(new_name)
        if node is not None:
            new_parent.adopt(new_name, node)

    def exchange_known(self, name: bytes, other: "HostNode", other_name: bytes) -> None:
        """Record a RENAME_EXCHANGE: the two names swap their nodes."""
        mine = self.known.pop(name, None) if self.known else None
        theirs = other.known.pop(other_name, None) if other.known else None
        if mine is not None:
            other.adopt(other_name, mine)
        if theirs is not None:
            self.adopt(name, theirs)

    def forget_known(self, node: "FoundNode") -> None:
        """The kernel forgot ``node``: stop caching it (if it is still ours)."""
        known = self.known
        if known is not None and known.get(node.name) is node:
            del known[node.name]
        DIR_FDS.discard(node)


class MappedNode(HostNode):
    """An explicit mapping: it shows the host object ``host_dir/host_name``.

    Siblings mapped from one host directory share the ``host_dir`` string.
    ``host_name`` is None when the host path is ``host_dir`` itself (the host
    root ``/``, or a path given with a trailing slash).
    """

    __slots__ = ("host_dir", "host_name")

    explicit = True

    def __init__(self, host_dir: bytes, host_name: bytes | None, writable: bool) -> None:
        super().__init__(writable)
        self.host_dir = host_dir
        self.host_name = host_name

    @classmethod
    def of_path(cls, host_path: bytes, writable: bool) -> "MappedNode":
        directory, _, name = host_path.rpartition(b"/")
        if not name:
            return cls(host_path, None, writable)
        return cls(directory or b"/", name, writable)

    def host_path(self) -> bytes:
        name = self.host_name
        return self.host_dir if name is None else join_host(self.host_dir, name)

    def mapping_and_rest(self) -> tuple["MappedNode", list[bytes]]:
        return self, []

    def entry(self) -> HostEntry:
        return HostEntry(None, self.host_path())

    def child_entry(self, name: bytes) -> HostEntry:
        # Directly in the mapping: only ``name`` could be swapped, and it is not followed.
        return HostEntry(None, self.child_path(name))

    def lstat(self) -> os.stat_result:  # a hot path: no HostEntry
        return os.lstat(self.host_path())

    def lstat_child(self, name: bytes) -> os.stat_result:
        return os.lstat(self.child_path(name))


class FoundNode(HostNode):
    """An entry found on disk inside a mapped directory: ``parent`` plus ``name``.

    ``parent`` is None once the entry was unlinked or replaced: host access
    then raises FileNotFoundError, and the operations fall back to an open
    file descriptor if there is one.
    """

    __slots__ = ("parent", "name", "host_ino")

    def __init__(self, parent: HostNode, name: bytes, host_ino: int, writable: bool) -> None:
        super().__init__(writable)
        self.parent: HostNode | None = parent
        self.name = name
        self.host_ino = host_ino

    def mapping_and_rest(self) -> tuple[MappedNode, list[bytes]]:
        rest = []
        node: HostNode = self
        while not node.explicit:
            parent = node.parent
            if parent is None:
                raise FileNotFoundError(2, "node was removed from its directory")
            rest.append(node.name)
            node = parent
        return node, rest

    def host_path(self) -> bytes:
        """The host path behind this node now (for messages and statfs; I/O uses ``entry``)."""
        mapping, rest = self.mapping_and_rest()
        rest.reverse()
        return join_host(mapping.host_path(), b"/".join(rest))

    def entry(self) -> HostEntry:
        if self.parent is None:
            raise FileNotFoundError(2, "node was removed from its directory")
        return self.parent.child_entry(self.name)

    def child_entry(self, name: bytes) -> HostEntry:
        return HostEntry(DIR_FDS.get(self, self.open_dir), name, owned=False)

    def lstat(self) -> os.stat_result:  # hot paths (lookup, getattr): no HostEntry
        parent = self.parent
        if parent is None:
            raise FileNotFoundError(2, "node was removed from its directory")
        return parent.lstat_child(self.name)

    def lstat_child(self, name: bytes) -> os.stat_result:
        return os.stat(name, dir_fd=DIR_FDS.get(self, self.open_dir), follow_symlinks=False)
