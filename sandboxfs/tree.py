"""The in-memory mapping tree: what the mount shows, and where each name comes from.

Three kinds of node make up the tree:

* ``ScaffoldDir`` -- a virtual, immutable directory that exists only because
  mappings lie below it (the mount root, a sandbox's top directory, the
  ``external/cc`` in ``external/cc/bin/clang``).
* ``MappedNode`` -- an explicit mapping: it shows one host path (file,
  directory, symlink or special file).  A mapped directory may carry
  ``overlays``: nested mappings (or scaffolds leading to them) that shadow the
  host entries of the same name.
* discovered ``MappedNode`` -- an entry found on disk inside a mapped
  directory.  It has no host path of its own; its path is its parent's plus
  its name, so renames through the mount only move one cache entry.

Discovered nodes are cached in their parent's ``known`` dict only while the
kernel holds them (lookup count > 0) so that a name keeps its inode number;
``inodes.py`` drops them when the kernel forgets them.

Sandboxes are whole subtrees, built detached and attached with one dict store,
so a sandbox appears (or disappears) atomically between two FUSE requests.

This module knows nothing of pyfuse3 or trio.  It only reads the host
filesystem (``lstat`` of backing paths; existence checks in ``underlying``).
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import stat
from typing import Any, Callable, Iterable, Iterator, Sequence

from .errors import (
    AlreadyMappedError,
    MappingError,
    NotFoundError,
    SandboxExistsError,
    InvalidRequestError,
    describe_oserror,
)
from .hostfs import HostEntry, open_below
from .mapping import Mapping, MappingGroup, display, spec_size
from . import underlying as _underlying
from .underlying import split_host_path

log = logging.getLogger(__name__)

MAX_SANDBOX_NAME = 255


class Node:
    """What every node has: the inode bookkeeping that ``inodes.InodeTable`` manages.

    ``ino`` is 0 until the kernel first learns the node; afterwards it is kept
    for the node's whole life (numbers are never reused), so a node that the
    kernel forgot and looks up again gets the same number back.
    """

    __slots__ = ("ino", "lookups")

    writable = False

    def __init__(self) -> None:
        self.ino = 0
        self.lookups = 0


class ScaffoldDir(Node):
    """A virtual directory holding explicit children only; mode 0555, immutable."""

    __slots__ = ("children",)

    def __init__(self) -> None:
        super().__init__()
        self.children: dict[bytes, Node] = {}


class MappedNode(Node):
    """A node backed by a host object: an explicit mapping or an entry found on disk.

    Exactly one of ``origin`` (explicit: absolute host path) and
    ``parent``/``name`` (discovered) is set.  ``host_ino`` remembers the host
    inode a discovered node stood for, so a name replaced behind our back gets
    a new node rather than the old identity.
    """

    __slots__ = ("origin", "parent", "name", "writable", "host_ino", "overlays", "known",
                 "cached_as")

    def __init__(
        self,
        origin: bytes | None,
        writable: bool,
        parent: "MappedNode | None" = None,
        name: bytes | None = None,
        host_ino: int = 0,
    ) -> None:
        super().__init__()
        self.origin = origin
        self.writable = writable
        self.parent = parent
        self.name = name
        self.host_ino = host_ino
        self.overlays: dict[bytes, Node] | None = None
        self.known: dict[bytes, MappedNode] | None = None
        # (st_dev, st_ino, st_ctime_ns) of the host file at its last open: the
        # file whose bytes the kernel's page cache for this node holds.
        self.cached_as: tuple[int, int, int] | None = None

    @property
    def explicit(self) -> bool:
        return self.origin is not None

    def host_path(self) -> bytes:
        """The host path behind this node now.

        An explicit node stores its host directory in ``origin`` and its host
        name in ``name`` (or the whole path in ``origin`` when ``name`` is
        None), so siblings share one directory string.  Raises
        FileNotFoundError for a discovered node that was unlinked or replaced
        (its parent link was cut); the ops layer then falls back to an open
        file descriptor if there is one.
        """
        node, parts = self._from_mapping()
        if node.name is not None:
            parts.append(node.name)
        origin = node.origin
        if not parts:
            return origin
        parts.append(origin if origin != b"/" else b"")
        parts.reverse()
        return b"/".join(parts)

    def _from_mapping(self) -> tuple["MappedNode", list[bytes]]:
        """The explicit mapping this node lies in, and the names below it (innermost first)."""
        parts = []
        node: MappedNode = self
        while node.origin is None:
            if node.parent is None:
                raise FileNotFoundError(2, "node was removed from its directory")
            parts.append(node.name)
            node = node.parent
        return node, parts

    def child_path(self, name: bytes) -> bytes:
        base = self.host_path()
        return base + name if base.endswith(b"/") else base + b"/" + name

    # -- reaching the host object without following symlinks (hostfs) --------

    def open_dir(self, flags: int = os.O_PATH | os.O_DIRECTORY) -> int:
        """An fd of this directory's host directory; no symlink below the mapping is followed."""
        node, parts = self._from_mapping()
        parts.reverse()
        return open_below(node.host_path(), b"/".join(parts), flags)

    def child_entry(self, name: bytes) -> HostEntry:
        """Entry ``name`` of this directory on the host."""
        if self.origin is not None:  # the mapping itself: only ``name`` could be swapped
            return HostEntry(None, self.child_path(name))
        return HostEntry(self.open_dir(), name)

    def lstat(self) -> os.stat_result:
        """lstat of this node's host object (a hot path: no HostEntry for explicit nodes)."""
        if self.origin is not None:
            return os.lstat(self.host_path())
        with self.entry() as entry:
            return entry.lstat()

    def lstat_child(self, name: bytes) -> os.stat_result:
        """lstat of entry ``name`` of this directory on the host."""
        if self.origin is not None:  # directly in the mapping: only ``name`` could be swapped
            return os.lstat(self.child_path(name))
        with self.child_entry(name) as entry:
            return entry.lstat()

    def entry(self) -> HostEntry:
        """This node's host object."""
        if self.origin is not None:
            return HostEntry(None, self.host_path())
        if self.parent is None:
            raise FileNotFoundError(2, "node was removed from its directory")
        return self.parent.child_entry(self.name)

    # -- discovered children -------------------------------------------------

    def overlay(self, name: bytes) -> Node | None:
        return child_of(self.overlays, name)

    def discovered(self, name: bytes, st: os.stat_result) -> "MappedNode":
        """The node for host entry ``name`` (whose lstat is ``st``), reused if unchanged."""
        known = self.known
        if known is None:
            known = self.known = {}
        node = known.get(name)
        if node is not None and node.host_ino == st.st_ino:
            return node
        if node is not None:
            node.parent = None  # replaced behind our back: the old node is orphaned
        node = MappedNode(None, self.writable, self, name, st.st_ino)
        known[name] = node
        return node

    def drop_known(self, name: bytes) -> "MappedNode | None":
        """Cut a discovered child loose (it was unlinked or renamed away)."""
        known = self.known
        node = known.pop(name, None) if known else None
        if node is not None:
            node.parent = None
        return node

    def move_known(self, name: bytes, new_parent: "MappedNode", new_name: bytes) -> None:
        """Record a rename done through the mount, keeping the node's identity."""
        node = self.known.pop(name, None) if self.known else None
        new_parent.drop_known(new_name)
        if node is None:
            return
        if new_parent.known is None:
            new_parent.known = {}
        new_parent.known[new_name] = node
        node.parent = new_parent
        node.name = new_name

    def exchange_known(self, name: bytes, other: "MappedNode", other_name: bytes) -> None:
        """Record a RENAME_EXCHANGE: the two names swap their nodes."""
        mine = self.known.pop(name, None) if self.known else None
        theirs = other.known.pop(other_name, None) if other.known else None
        for node, parent, new_name in ((mine, other, other_name), (theirs, self, name)):
            if node is not None:
                if parent.known is None:
                    parent.known = {}
                parent.known[new_name] = node
                node.parent = parent
                node.name = new_name

    def forget_known(self, node: "MappedNode") -> None:
        """The kernel forgot ``node``: stop caching it (if it is still ours)."""
        known = self.known
        if known is not None and node.name is not None and known.get(node.name) is node:
            del known[node.name]


def child_of(container: dict | None, name: bytes) -> Node | None:
    """The node stored under ``name``, turning a lazy read-only leaf into a node.

    Containers (scaffold children, overlays) hold either nodes or, for a
    read-only mapping whose host name equals its name, just the host
    directory as ``bytes``: one shared string instead of a node per mapping,
    which is what keeps 100,000-mapping sandboxes small and fast to build.
    The node is made (and stored back) the first time anyone asks for it.
    """
    if not container:
        return None
    value = container.get(name)
    if type(value) is bytes:
        value = container[name] = MappedNode(value, False, name=name)
    return value


def children_of(node: Node) -> dict:
    """The container of a directory node's explicit children: scaffold children or overlays."""
    if isinstance(node, ScaffoldDir):
        return node.children
    assert isinstance(node, MappedNode)
    if node.overlays is None:
        node.overlays = {}
    return node.overlays


def lookup(parent: Node, name: bytes) -> tuple[Node, os.stat_result | None] | None:
    """Resolve ``name`` in directory ``parent``: (node, its lstat or None), or None if absent.

    Scaffold directories answer from memory (their stat is None: the caller
    synthesises it).  Mapped directories answer overlays first, then the host.
    Raises OSError for host errors other than "not there".
    """
    if isinstance(parent, ScaffoldDir):
        child = child_of(parent.children, name)
        if child is None:
            return None
        return child, stat_of(child)
    assert isinstance(parent, MappedNode)
    child = child_of(parent.overlays, name)
    if child is not None:
        return child, stat_of(child)
    try:
        st = parent.lstat_child(name)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # our directory was swapped for a symlink
            return None
        raise
    return parent.discovered(name, st), st


def stat_of(node: Node) -> os.stat_result | None:
    """lstat of a node's host object, or None for a scaffold directory."""
    if isinstance(node, MappedNode):
        return node.lstat()
    return None


def list_directory(node: Node) -> list[tuple[bytes, Node | None]]:
    """The entries of a directory, in a fixed order: (name, node or None if on disk only).

    Overlays replace host entries of the same name and come first, then host
    entries in the order the host lists them.  Nodes are not created here for
    host-only entries: the caller does that when it needs attributes.
    """
    if isinstance(node, ScaffoldDir):
        container = node.children
        return [(name, child_of(container, name)) for name in list(container)]
    assert isinstance(node, MappedNode)
    overlays = node.overlays or {}
    entries: list[tuple[bytes, Node | None]] = [(n, child_of(overlays, n)) for n in list(overlays)]
    fd = node.open_dir(os.O_RDONLY | os.O_DIRECTORY)
    try:
        names = os.listdir(fd)  # str names (surrogate escapes) when given an fd
    finally:
        os.close(fd)
    for text in names:
        name = os.fsencode(text)
        if name not in overlays:
            entries.append((name, None))
    return entries


# -- building the tree from mappings ---------------------------------------------------

Spec = Mapping | MappingGroup


class _Batch:
    """Inserts mapping specs under one holder node, all or nothing.

    Every store into a container is journaled so that a failure half way
    undoes exactly what this batch did, unless the batch builds a ``detached``
    subtree (a new sandbox): a failure then throws the whole subtree away, and
    no node in it is known to the kernel.  Scaffolds created by this batch may
    later be turned into mappings by the same batch (so the order of mappings
    in a request does not matter); scaffolds that existed before may not.
    Directory walks are cached per batch: a group's siblings share one walk.
    """

    def __init__(self, label: str, holder: ScaffoldDir, key: bytes, detached: bool = False) -> None:
        self.label = label
        self.holder = holder
        self.key = key
        self.detached = detached
        self.journal: list[tuple[dict, Any, Any]] = []
        self.new_scaffolds: set[int] = set()
        self.changed: list[tuple[Node, bytes]] = []
        self.checked_dirs: set[int] = set()
        self._dirs: dict[tuple[bytes, ...], tuple[Node, dict]] = {}

    # -- journal ---------------------------------------------------------------------

    def store(self, container: dict, name: bytes, value: Node | bytes) -> None:
        if not self.detached:
            self.journal.append((container, name, container.get(name)))
        container[name] = value

    def undo(self) -> None:
        for container, name, previous in reversed(self.journal):
            if type(name) is list:  # a bulk store of new names
                for added in name:
                    container.pop(added, None)
            elif previous is None:
                container.pop(name, None)
            else:
                container[name] = previous
        self.journal.clear()

    def fail(self, index: int, path: bytes | Callable[[], bytes], reason: str,
             error=MappingError) -> None:
        if callable(path):  # built only when needed: most groups never fail
            path = path()
        raise error(
            f"{self.label}: mapping {index} ({display(path)}): {reason}",
            details={"index": index, "path": display(path), "reason": reason},
        )

    # -- walking ---------------------------------------------------------------------

    def directory(self, comps: tuple[bytes, ...], index: int,
                  path: bytes | Callable[[], bytes]) -> tuple[Node, dict]:
        """The node at ``comps`` (scaffolds made as needed) and its child container.

        Every directory on the way is cached, so sibling directories (one group
        each, in a toolchain) cost one step each rather than a walk from the top.
        """
        hit = self._dirs.get(comps)
        if hit is not None:
            return hit
        if comps:
            parent, container = self.directory(comps[:-1], index, path)
            part = comps[-1]
            node = container.get(part)
            if node is None:  # the common case, kept short: a new directory
                node = ScaffoldDir()
                if self.detached:
                    container[part] = node
                else:
                    self.new_scaffolds.add(id(node))
                    self.store(container, part, node)
                    self.note_change(parent, part)
                hit = self._dirs[comps] = (node, node.children)
                return hit
            if type(node) is bytes:
                node = child_of(container, part)
        else:
            node = child_of(self.holder.children, self.key)
        if isinstance(node, MappedNode):
            self.require_directory(index, path, node)
        hit = self._dirs[comps] = (node, children_of(node))
        return hit

    # -- placing ---------------------------------------------------------------------

    def insert(self, index: int, spec: Spec) -> None:
        if isinstance(spec, MappingGroup):
            self.insert_group(index, spec)
            return
        comps = spec.components
        if not comps:  # the holder's node itself ("/" of the mount or sandbox)
            self.place(self.holder, self.holder.children, self.key, index, spec.path,
                       MappedNode(spec.underlying, spec.writable))
            return
        parent, container = self.directory(comps[:-1], index, spec.path)
        directory, name = split_host_path(spec.underlying)
        if name == comps[-1] and not spec.writable:
            leaf: Node | bytes = directory
        else:
            leaf = MappedNode(directory, spec.writable, name=name or None)
            if not name:
                leaf.origin = spec.underlying
        self.place(parent, container, comps[-1], index, spec.path, leaf)

    def insert_group(self, index: int, group: MappingGroup) -> None:
        parent, container = self.directory(group.directory, index, lambda: group.path(0))
        names = group.names if type(group.names) is list else list(group.names)
        if not group.writable and (not container or container.keys().isdisjoint(names)):
            # The bulk path: none of the names is taken.
            before = len(container)
            container.update(dict.fromkeys(names, group.host_dir))
            if len(container) == before + len(names):
                if not self.detached:
                    self.journal.append((container, names, None))
                if parent.ino:
                    self.changed.extend((parent, name) for name in names)
                return
            for name in names:  # a name listed twice: the loop below says which
                container.pop(name, None)
        for offset, name in enumerate(names):
            leaf = group.host_dir if not group.writable else MappedNode(
                group.host_dir, True, name=name)
            self.place(parent, container, name, index + offset,
                       lambda offset=offset: group.path(offset), leaf)

    def place(self, parent: Node, container: dict, name: bytes, index: int, path: bytes,
              leaf: Node | bytes) -> None:
        existing = container.get(name)
        if existing is not None:
            if not isinstance(existing, ScaffoldDir):
                self.fail(index, path, "already mapped", AlreadyMappedError)
            if not self.detached and id(existing) not in self.new_scaffolds:
                self.fail(index, path,
                          "is a scaffold directory of other mappings; map it before them or not at all",
                          AlreadyMappedError)
            # Made by this batch for deeper mappings: they become overlays of
            # the new mapping (the same dict, so cached walks stay valid).
            if type(leaf) is bytes:
                leaf = MappedNode(leaf, False, name=name)
            leaf.overlays = existing.children
            why = "cannot nest below" if existing.children else \
                "the top of a mount or sandbox must be a directory:"
            self.require_directory(index, path, leaf, why)
        self.store(container, name, leaf)
        self.note_change(parent, name)

    def require_directory(self, index: int, path: bytes | Callable[[], bytes], node: MappedNode,
                          why: str = "cannot nest below") -> None:
        if id(node) in self.checked_dirs:
            return
        host = node.host_path()
        try:
            st = os.lstat(host)
        except OSError as exc:
            self.fail(index, path, f"{why} {display(host)}: {describe_oserror(exc)}")
        if not stat.S_ISDIR(st.st_mode):
            self.fail(index, path, f"{why} {display(host)}: ENOTDIR (Not a directory)")
        self.checked_dirs.add(id(node))

    def note_change(self, parent: Node, name: bytes) -> None:
        if parent.ino:
            self.changed.append((parent, name))


def _host_entries(specs: Sequence[Spec]):
    for spec in specs:
        if isinstance(spec, MappingGroup):
            yield spec.host_dir, spec.names
        else:
            directory, name = split_host_path(spec.underlying)
            yield directory, (name,)


def _spec_at(specs: Sequence[Spec], index: int) -> tuple[bytes, bytes]:
    """(path inside, underlying) of the mapping with flat index ``index``."""
    for spec in specs:
        size = spec_size(spec)
        if index < size:
            if isinstance(spec, MappingGroup):
                name = spec.names[index]
                return spec.path(index), spec.host_dir.rstrip(b"/") + b"/" + name
            return spec.path, spec.underlying
        index -= size
    raise IndexError(index)


def require_underlying(label: str, specs: Sequence[Spec]) -> None:
    """Raise MappingError naming the first mapping whose underlying path is missing."""
    missing = _underlying.find_missing(_host_entries(specs))
    if missing:
        index = min(missing)
        path, host = _spec_at(specs, index)
        reason = f"underlying path {display(host)} does not exist: {missing[index]}"
        raise MappingError(
            f"{label}: mapping {index} ({display(path)}): {reason}",
            details={"index": index, "path": display(path), "reason": reason,
                     "missing": sorted(missing)[:100]},
        )


def check_sandbox_name(name: str | bytes) -> bytes:
    """Validate a sandbox name: non-empty, no '/', not '.' or '..', no NUL, bounded length."""
    raw = os.fsencode(name)
    if not raw:
        raise InvalidRequestError("sandbox name is empty")
    if raw in (b".", b".."):
        raise InvalidRequestError(f"sandbox name '{display(raw)}' is not allowed")
    if b"/" in raw or b"\0" in raw:
        raise InvalidRequestError(f"sandbox name '{display(raw)}' contains '/' or NUL")
    if len(raw) > MAX_SANDBOX_NAME:
        raise InvalidRequestError(
            f"sandbox name of {len(raw)} bytes is longer than {MAX_SANDBOX_NAME}"
        )
    return raw


class Sandbox:
    """A live sandbox: its top node (attached at ``/name``) and its mapping count."""

    __slots__ = ("name", "node", "mapping_count")

    def __init__(self, name: bytes, node: Node, mapping_count: int) -> None:
        self.name = name
        self.node = node
        self.mapping_count = mapping_count


class Tree:
    """The whole mount: a root node, the initial mappings, and the live sandboxes.

    Every change returns the entries the kernel may have cached that are now
    wrong, as (parent node, name) pairs for parents the kernel knows: the
    caller invalidates exactly those and nothing else.
    """

    def __init__(self, mappings: Sequence[Mapping] = ()) -> None:
        self._holder = ScaffoldDir()
        self._holder.children[b""] = ScaffoldDir()
        self.sandboxes: dict[bytes, Sandbox] = {}
        self.detached: list[Sandbox] = []  # destroyed, not yet freed (see destroy_sandbox)
        self.mapping_count = 0
        if mappings:
            self._apply("mount", self._holder, b"", mappings, fresh=True, detached=True)

    @property
    def root(self) -> Node:
        return self._holder.children[b""]

    def _apply(
        self,
        label: str,
        holder: ScaffoldDir,
        key: bytes,
        mappings: Sequence[Mapping],
        fresh: bool,
        count: bool = True,
        checked: bool = False,
        detached: bool = False,
    ) -> list:
        """Insert ``mappings`` below ``holder.children[key]``; ``fresh`` if that node is new.

        ``checked`` skips the existence check when the caller already ran
        ``require_underlying`` (off the event loop); ``detached`` when a
        failure throws the whole holder away (nothing to undo).
        """
        if not checked:
            require_underlying(label, mappings)
        batch = _Batch(label, holder, key, detached)
        if fresh:  # an empty new top may itself be mapped ("/" in the request)
            batch.new_scaffolds.add(id(holder.children[key]))
        index = 0
        try:
            for spec in mappings:
                if type(spec) is MappingGroup:  # most of a large request: skip a call
                    batch.insert_group(index, spec)
                    index += len(spec.names)
                else:
                    batch.insert(index, spec)
                    index += 1
        except BaseException:
            batch.undo()
            raise
        if count:
            self.mapping_count += index
        return batch.changed

    # -- sandboxes -------------------------------------------------------------------

    def _root_children(self) -> dict:
        return children_of(self.root)

    def build_sandbox(self, name: str | bytes, mappings: Sequence[Mapping]) -> Sandbox:
        """Build a sandbox detached from the tree (safe to run in a worker thread).

        Only new nodes are touched, so the live tree keeps serving meanwhile;
        ``attach_sandbox`` then makes it visible in one step.
        """
        raw = check_sandbox_name(name)
        label = f"create_sandbox '{display(raw)}'"
        self._check_name_free(raw, label)
        holder = ScaffoldDir()
        holder.children[raw] = ScaffoldDir()
        self._apply(label, holder, raw, mappings, fresh=True, count=False, detached=True)
        return Sandbox(raw, holder.children[raw], count_mappings(mappings))

    def attach_sandbox(self, sandbox: Sandbox) -> list:
        """Make a built sandbox visible as ``/name``."""
        self._check_name_free(sandbox.name, f"create_sandbox '{display(sandbox.name)}'")
        self._root_children()[sandbox.name] = sandbox.node
        self.sandboxes[sandbox.name] = sandbox
        self.mapping_count += sandbox.mapping_count
        return [(self.root, sandbox.name)]

    def create_sandbox(self, name: str | bytes, mappings: Sequence[Mapping]) -> list:
        """Build and attach ``/name``; returns the kernel entries to invalidate."""
        return self.attach_sandbox(self.build_sandbox(name, mappings))

    def _check_name_free(self, raw: bytes, label: str) -> None:
        if raw in self.sandboxes:
            raise SandboxExistsError(f"{label}: a sandbox with this name already exists")
        if raw in self._root_children():
            raise SandboxExistsError(f"{label}: the name is taken by a mapping of the mount")

    def destroy_sandbox(self, name: str | bytes) -> list:
        """Detach ``/name``; its nodes live on only as long as the kernel holds them.

        The detached sandbox is kept in ``detached`` for the caller to free:
        freeing 100,000 entries takes milliseconds the answer need not wait for.
        """
        raw = os.fsencode(name)
        sandbox = self.sandboxes.pop(raw, None)
        if sandbox is None:
            raise NotFoundError(f"destroy_sandbox '{display(raw)}': no such sandbox")
        del self._root_children()[raw]
        self.mapping_count -= sandbox.mapping_count
        self.detached.append(sandbox)
        return [(self.root, raw)]

    def map(self, name: str | bytes, mappings: Sequence[Mapping], checked: bool = False) -> list:
        """Add mappings to a live sandbox, all or nothing."""
        raw = os.fsencode(name)
        sandbox = self._sandbox("map", raw)
        holder = ScaffoldDir()
        holder.children[raw] = sandbox.node
        # An empty sandbox top holds no other mappings: "/" may be mapped onto it.
        empty = isinstance(sandbox.node, ScaffoldDir) and not sandbox.node.children
        changed = self._apply(
            f"map '{display(raw)}'", holder, raw, mappings, fresh=empty, checked=checked
        )
        if holder.children[raw] is not sandbox.node:  # the sandbox root itself got mapped
            sandbox.node = holder.children[raw]
            self._root_children()[raw] = sandbox.node
            changed.append((self.root, raw))
        sandbox.mapping_count += count_mappings(mappings)
        return changed

    def unmap(self, name: str | bytes, paths: Iterable[Sequence[bytes]]) -> list:
        """Remove mappings (given as component tuples) from a live sandbox, all or nothing.

        A removed mapping that had nested mappings below it leaves a scaffold
        holding them; scaffolds that no longer lead to any mapping are pruned.
        """
        raw = os.fsencode(name)
        sandbox = self._sandbox("unmap", raw)
        label = f"unmap '{display(raw)}'"
        requested = [tuple(comps) for comps in paths]
        for index, comps in enumerate(requested):
            chain = self._walk(sandbox.node, comps)
            path = display(b"/" + b"/".join(comps))
            if chain is None or not isinstance(chain[-1][2], MappedNode) or not chain[-1][2].explicit:
                raise NotFoundError(
                    f"{label}: mapping {index} ({path}): not mapped",
                    details={"index": index, "path": path},
                )
        changed = []
        removed = 0
        for comps in requested:
            # Walk again: an earlier removal in this request may have replaced a parent.
            chain = self._walk(sandbox.node, comps)
            if chain is None or not isinstance(chain[-1][2], MappedNode):
                continue  # listed twice
            parent, name_, node = chain[-1]
            if parent is None:  # the sandbox root mapping itself
                replacement = ScaffoldDir()
                replacement.children = dict(node.overlays or {})
                sandbox.node = replacement
                self._root_children()[raw] = replacement
                changed.append((self.root, raw))
                removed += 1
                continue
            container = children_of(parent)
            if node.overlays:
                replacement = ScaffoldDir()
                replacement.children = dict(node.overlays)
                container[name_] = replacement
            else:
                del container[name_]
                changed.extend(self._prune(chain[:-1]))
            removed += 1
            if parent.ino:
                changed.append((parent, name_))
        sandbox.mapping_count -= removed
        self.mapping_count -= removed
        return changed

    def _prune(self, chain: list) -> list:
        """Drop scaffolds left empty by an unmap, bottom-up (never the sandbox top).

        Returns the kernel entries that named them: they must be invalidated too.
        """
        pruned = []
        for parent, name, node in reversed(chain):
            if parent is None or not isinstance(node, ScaffoldDir) or node.children:
                break
            container = children_of(parent)
            del container[name]
            if parent.ino:
                pruned.append((parent, name))
        return pruned

    @staticmethod
    def _walk(top: Node, comps: Sequence[bytes]) -> list | None:
        chain: list = [(None, b"", top)]
        node = top
        for part in comps:
            if isinstance(node, ScaffoldDir):
                child = child_of(node.children, part)
            elif isinstance(node, MappedNode):
                child = node.overlay(part)
            else:  # pragma: no cover
                child = None
            if child is None:
                return None
            chain.append((node, part, child))
            node = child
        return chain

    def _sandbox(self, verb: str, raw: bytes) -> Sandbox:
        sandbox = self.sandboxes.get(raw)
        if sandbox is None:
            raise NotFoundError(f"{verb} '{display(raw)}': no such sandbox")
        return sandbox

    def first_host_path(self) -> bytes | None:
        """A host path behind the mount, for statfs: the root mapping, else the first mapping.

        Lazy leaves answer with their host directory (same filesystem), so
        nothing is materialised just to answer statfs.
        """
        queue = collections.deque([self.root])
        while queue:
            node = queue.popleft()
            if isinstance(node, MappedNode):
                return node.host_path()
            assert isinstance(node, ScaffoldDir)
            for child in node.children.values():
                if type(child) is bytes:
                    return child
                queue.append(child)
        return None


def declared_paths(top: Node) -> list[bytes]:
    """The paths (relative to ``top``, b"" for ``top`` itself) of the explicit mappings below it."""
    paths: list[bytes] = []
    stack: list[tuple[bytes, Node]] = [(b"", top)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, ScaffoldDir):
            container = node.children
        else:
            assert isinstance(node, MappedNode)
            if node.explicit:
                paths.append(path)
            container = node.overlays or {}
        for name, child in container.items():
            child_path = path + b"/" + name if path else name
            if type(child) is bytes:
                paths.append(child_path)  # a lazy read-only leaf: always a mapping
            else:
                stack.append((child_path, child))
    return paths


def dismantle(node: Node, batch: int = 2048) -> Iterator[None]:
    """Free a detached subtree in small steps, yielding between them.

    Dropping a 100,000-entry sandbox at once is one long C call (~10 ms)
    during which nothing else runs.  The caller drives this generator with a
    checkpoint per step, so FUSE requests and answers interleave with the
    freeing.  Nodes the kernel still holds stay alive through the inode
    table; only their links into the destroyed sandbox are cut.
    """
    stack = [node]
    budget = batch
    while stack:
        current = stack.pop()
        if isinstance(current, ScaffoldDir):
            container = current.children
        elif isinstance(current, MappedNode):
            container = current.overlays
        else:
            continue
        if not container:
            continue
        stack.extend(child for child in container.values() if type(child) is not bytes)
        while len(container) > batch:
            for _ in range(batch):
                container.popitem()
            yield
        budget -= len(container)
        container.clear()
        if budget <= 0:
            budget = batch
            yield


def count_mappings(specs: Sequence[Spec]) -> int:
    return sum(spec_size(spec) for spec in specs)
