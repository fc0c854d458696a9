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

import logging
import os
import stat
from typing import Iterable, Sequence

from .errors import (
    AlreadyMappedError,
    MappingError,
    NotFoundError,
    SandboxExistsError,
    InvalidRequestError,
)
from .mapping import Mapping, display
from . import underlying as _underlying

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

    __slots__ = ("origin", "parent", "name", "writable", "host_ino", "overlays", "known")

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

    @property
    def explicit(self) -> bool:
        return self.origin is not None

    def host_path(self) -> bytes:
        """The host path behind this node now.

        Raises FileNotFoundError for a discovered node that was unlinked or
        replaced (its parent link was cut); the ops layer then falls back to
        an open file descriptor if there is one.
        """
        if self.origin is not None:
            return self.origin
        parts = []
        node: MappedNode | None = self
        while node is not None and node.origin is None:
            if node.parent is None:
                raise FileNotFoundError(2, "node was removed from its directory")
            parts.append(node.name)
            node = node.parent
        if node is None:  # pragma: no cover - a discovered chain always ends explicitly
            raise FileNotFoundError(2, "node has no mapped ancestor")
        parts.append(node.origin)
        parts.reverse()
        return b"/".join(parts)

    def child_path(self, name: bytes) -> bytes:
        base = self.host_path()
        return base + name if base.endswith(b"/") else base + b"/" + name

    # -- discovered children -------------------------------------------------

    def overlay(self, name: bytes) -> Node | None:
        overlays = self.overlays
        return overlays.get(name) if overlays else None

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


def lookup(parent: Node, name: bytes) -> tuple[Node, os.stat_result | None] | None:
    """Resolve ``name`` in directory ``parent``: (node, its lstat or None), or None if absent.

    Scaffold directories answer from memory (their stat is None: the caller
    synthesises it).  Mapped directories answer overlays first, then the host.
    Raises OSError for host errors other than "not there".
    """
    if isinstance(parent, ScaffoldDir):
        child = parent.children.get(name)
        if child is None:
            return None
        return child, stat_of(child)
    assert isinstance(parent, MappedNode)
    child = parent.overlay(name)
    if child is not None:
        return child, stat_of(child)
    try:
        st = os.lstat(parent.child_path(name))
    except (FileNotFoundError, NotADirectoryError):
        return None
    return parent.discovered(name, st), st


def stat_of(node: Node) -> os.stat_result | None:
    """lstat of a node's host object, or None for a scaffold directory."""
    if isinstance(node, MappedNode):
        return os.lstat(node.host_path())
    return None


def list_directory(node: Node) -> list[tuple[bytes, Node | None]]:
    """The entries of a directory, in a fixed order: (name, node or None if on disk only).

    Overlays replace host entries of the same name and come first, then host
    entries in the order the host lists them.  Nodes are not created here for
    host-only entries: the caller does that when it needs attributes.
    """
    if isinstance(node, ScaffoldDir):
        return list(node.children.items())
    assert isinstance(node, MappedNode)
    overlays = node.overlays or {}
    entries: list[tuple[bytes, Node | None]] = list(overlays.items())
    for name in os.listdir(node.host_path()):
        if name not in overlays:
            entries.append((name, None))
    return entries


# -- building the tree from mappings ---------------------------------------------------


class _Batch:
    """Inserts a list of mappings under one holder node, all or nothing.

    Every dict store is journaled so that a failure half way undoes exactly
    what this batch did.  Scaffolds created by this batch may later be turned
    into mappings by the same batch (so the order of mappings in a request does
    not matter); scaffolds that existed before may not.
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self.journal: list[tuple[dict, bytes, Node | None]] = []
        self.new_scaffolds: set[int] = set()
        self.changed: list[tuple[Node, bytes]] = []
        self.checked_dirs: set[int] = set()

    def store(self, container: dict, name: bytes, node: Node) -> None:
        self.journal.append((container, name, container.get(name)))
        container[name] = node

    def undo(self) -> None:
        for container, name, previous in reversed(self.journal):
            if previous is None:
                container.pop(name, None)
            else:
                container[name] = previous
        self.journal.clear()

    def fail(self, index: int, mapping: Mapping, reason: str, error=MappingError) -> None:
        raise error(
            f"{self.label}: mapping {index} ({display(mapping.path)}): {reason}",
            details={"index": index, "path": display(mapping.path), "reason": reason},
        )

    def children_of(self, node: Node, create: bool) -> dict | None:
        if isinstance(node, ScaffoldDir):
            return node.children
        assert isinstance(node, MappedNode)
        if node.overlays is None and create:
            node.overlays = {}
        return node.overlays

    def insert(self, holder: ScaffoldDir, key: bytes, index: int, mapping: Mapping) -> None:
        container: dict = holder.children
        name = key
        parent: Node = holder
        for part in mapping.components:
            node = container[name]
            if isinstance(node, MappedNode):
                self.require_directory(index, mapping, node)
            children = self.children_of(node, create=True)
            assert children is not None
            if part not in children:
                scaffold = ScaffoldDir()
                self.new_scaffolds.add(id(scaffold))
                self.store(children, part, scaffold)
                self.note_change(node, part)
            parent, container, name = node, children, part
        self.place(parent, container, name, index, mapping)

    def place(self, parent: Node, container: dict, name: bytes, index: int, mapping: Mapping) -> None:
        existing = container.get(name)
        leaf = MappedNode(mapping.underlying, mapping.writable)
        if isinstance(existing, MappedNode):
            self.fail(index, mapping, "already mapped", AlreadyMappedError)
        if isinstance(existing, ScaffoldDir):
            if id(existing) not in self.new_scaffolds:
                self.fail(
                    index,
                    mapping,
                    "is a scaffold directory of other mappings; map it before them or not at all",
                    AlreadyMappedError,
                )
            # Created by this batch for deeper mappings: those become overlays.
            if existing.children:
                leaf.overlays = dict(existing.children)
        self.store(container, name, leaf)
        self.note_change(parent, name)

    def require_directory(self, index: int, mapping: Mapping, node: MappedNode) -> None:
        if id(node) in self.checked_dirs:
            return
        try:
            st = os.lstat(node.host_path())
        except OSError as exc:
            self.fail(index, mapping, f"cannot nest below {display(node.host_path())}: {exc.strerror}")
        if not stat.S_ISDIR(st.st_mode):
            self.fail(index, mapping, f"cannot nest below {display(node.host_path())}: not a directory")
        self.checked_dirs.add(id(node))

    def note_change(self, parent: Node, name: bytes) -> None:
        if parent.ino:
            self.changed.append((parent, name))


def require_underlying(label: str, mappings: Sequence[Mapping]) -> None:
    """Raise MappingError naming the first mapping whose underlying path is missing."""
    missing = _underlying.find_missing([m.underlying for m in mappings])
    if missing:
        index = min(missing)
        m = mappings[index]
        reason = f"underlying path {display(m.underlying)} does not exist: {missing[index]}"
        raise MappingError(
            f"{label}: mapping {index} ({display(m.path)}): {reason}",
            details={"index": index, "path": display(m.path), "reason": reason,
                     "missing": sorted(missing)},
        )


def check_sandbox_name(name: str | bytes) -> bytes:
    """Validate a sandbox name: non-empty, no '/', not '.' or '..', no NUL, bounded length."""
    raw = os.fsencode(name)
    if not raw:
        raise InvalidRequestError("sandbox name is empty")
    if raw in (b".", b".."):
        raise InvalidRequestError(f"sandbox name {display(raw)!r} is not allowed")
    if b"/" in raw or b"\0" in raw:
        raise InvalidRequestError(f"sandbox name {display(raw)!r} contains '/' or NUL")
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
        self.mapping_count = 0
        if mappings:
            self._apply("mount", self._holder, b"", mappings, fresh=True)

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
    ) -> list:
        """Insert ``mappings`` below ``holder.children[key]``; ``fresh`` if that node is new.

        ``checked`` skips the existence check when the caller already ran
        ``require_underlying`` (off the event loop).
        """
        if not checked:
            require_underlying(label, mappings)
        batch = _Batch(label)
        if fresh:  # an empty new top may itself be mapped ("/" in the request)
            batch.new_scaffolds.add(id(holder.children[key]))
        try:
            for index, mapping in enumerate(mappings):
                batch.insert(holder, key, index, mapping)
        except BaseException:
            batch.undo()
            raise
        if count:
            self.mapping_count += len(mappings)
        return batch.changed

    # -- sandboxes -------------------------------------------------------------------

    def _root_children(self) -> dict:
        root = self.root
        if isinstance(root, ScaffoldDir):
            return root.children
        assert isinstance(root, MappedNode)
        if root.overlays is None:
            root.overlays = {}
        return root.overlays

    def build_sandbox(self, name: str | bytes, mappings: Sequence[Mapping]) -> Sandbox:
        """Build a sandbox detached from the tree (safe to run in a worker thread).

        Only new nodes are touched, so the live tree keeps serving meanwhile;
        ``attach_sandbox`` then makes it visible in one step.
        """
        raw = check_sandbox_name(name)
        label = f"create_sandbox {display(raw)!r}"
        self._check_name_free(raw, label)
        holder = ScaffoldDir()
        holder.children[raw] = ScaffoldDir()
        self._apply(label, holder, raw, mappings, fresh=True, count=False)
        return Sandbox(raw, holder.children[raw], len(mappings))

    def attach_sandbox(self, sandbox: Sandbox) -> list:
        """Make a built sandbox visible as ``/name``."""
        self._check_name_free(sandbox.name, f"create_sandbox {display(sandbox.name)!r}")
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
        """Detach ``/name``; its nodes live on only as long as the kernel holds them."""
        raw = os.fsencode(name)
        sandbox = self.sandboxes.pop(raw, None)
        if sandbox is None:
            raise NotFoundError(f"destroy_sandbox {display(raw)!r}: no such sandbox")
        del self._root_children()[raw]
        self.mapping_count -= sandbox.mapping_count
        return [(self.root, raw)]

    def map(self, name: str | bytes, mappings: Sequence[Mapping], checked: bool = False) -> list:
        """Add mappings to a live sandbox, all or nothing."""
        raw = os.fsencode(name)
        sandbox = self._sandbox("map", raw)
        holder = ScaffoldDir()
        holder.children[raw] = sandbox.node
        changed = self._apply(
            f"map {display(raw)!r}", holder, raw, mappings, fresh=False, checked=checked
        )
        if holder.children[raw] is not sandbox.node:  # the sandbox root itself got mapped
            sandbox.node = holder.children[raw]
            self._root_children()[raw] = sandbox.node
            changed.append((self.root, raw))
        sandbox.mapping_count += len(mappings)
        return changed

    def unmap(self, name: str | bytes, paths: Iterable[Sequence[bytes]]) -> list:
        """Remove mappings (given as component tuples) from a live sandbox, all or nothing.

        A removed mapping that had nested mappings below it leaves a scaffold
        holding them; scaffolds that no longer lead to any mapping are pruned.
        """
        raw = os.fsencode(name)
        sandbox = self._sandbox("unmap", raw)
        label = f"unmap {display(raw)!r}"
        targets = []
        for index, comps in enumerate(paths):
            chain = self._walk(sandbox.node, comps)
            path = display(b"/" + b"/".join(comps))
            if chain is None or not isinstance(chain[-1][2], MappedNode) or not chain[-1][2].explicit:
                raise NotFoundError(
                    f"{label}: mapping {index} ({path}): not mapped",
                    details={"index": index, "path": path},
                )
            targets.append(chain)
        changed = []
        removed = 0
        for chain in targets:
            parent, name_, node = chain[-1]
            if parent is None:  # the sandbox root mapping itself
                replacement = ScaffoldDir()
                replacement.children = dict(node.overlays or {})
                sandbox.node = replacement
                self._root_children()[raw] = replacement
                changed.append((self.root, raw))
                removed += 1
                continue
            container = parent.children if isinstance(parent, ScaffoldDir) else parent.overlays
            if container.get(name_) is not node:
                continue  # listed twice
            if node.overlays:
                replacement = ScaffoldDir()
                replacement.children = dict(node.overlays)
                container[name_] = replacement
            else:
                del container[name_]
                self._prune(chain[:-1])
            removed += 1
            if parent.ino:
                changed.append((parent, name_))
        sandbox.mapping_count -= removed
        self.mapping_count -= removed
        return changed

    def _prune(self, chain: list) -> None:
        """Drop scaffolds left empty by an unmap, bottom-up (never the sandbox top)."""
        for parent, name, node in reversed(chain):
            if parent is None or not isinstance(node, ScaffoldDir) or node.children:
                return
            container = parent.children if isinstance(parent, ScaffoldDir) else parent.overlays
            del container[name]

    @staticmethod
    def _walk(top: Node, comps: Sequence[bytes]) -> list | None:
        chain: list = [(None, b"", top)]
        node = top
        for part in comps:
            if isinstance(node, ScaffoldDir):
                child = node.children.get(part)
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
            raise NotFoundError(f"{verb} {display(raw)!r}: no such sandbox")
        return sandbox

    def first_host_path(self) -> bytes | None:
        """A host path behind the mount, for statfs: the root mapping, else the first mapping."""
        stack = [self.root]
        while stack:
            node = stack.pop(0)
            if isinstance(node, MappedNode):
                return node.host_path()
            if isinstance(node, ScaffoldDir):
                stack.extend(node.children.values())
        return None
