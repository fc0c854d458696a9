"""Inserting mappings into the tree, all or nothing.

A build inserts the mappings of one request (the mount's initial mappings,
one ``create_sandbox``, one ``map``) below one holder node.  Two variants:

* ``DetachedBuild``: a new subtree (a new sandbox, the mount's first tree).
  Nothing in it is known to the kernel or to anyone else, so a failure throws
  the whole subtree away and nothing needs undoing.  Safe in a worker thread.
* ``JournaledBuild``: mappings added to a live sandbox.  Every store is
  journaled, so a failure half way undoes exactly what the build did, and
  the entries the kernel may have cached are collected for invalidation.

Scaffolds created by a build may later be turned into mappings by the same
build (so the order of mappings in a request does not matter); scaffolds
that existed before may not.  Directory walks are cached per build: a group's
sibling directories share one walk.  Existence of host paths is checked
before a build (``existence.require_underlying``), never inside it; a build
only ``lstat``s host directories that other mappings nest below.

Pure: no pyfuse3, no trio.
"""

from __future__ import annotations

import os
import stat
from typing import Callable, Sequence

from sandboxfs.errors import AlreadyMappedError, MappingError, describe_oserror
from sandboxfs.tree.existence import Spec, split_host_path
from sandboxfs.tree.groups import DirectoryGroup, Group
from sandboxfs.tree.mapping import Mapping, display
from sandboxfs.tree.nodes import HostNode, LazyFile, MappedNode, Node, ScaffoldDir

PathOrMaker = bytes | Callable[[], bytes]


class Build:
    """What both variants share: walking, placing, failing with the mapping named."""

    journaled = False
    file_top = False  # the top may be mapped to a non-directory (Tree.file_tops)

    def __init__(self, label: str, holder: ScaffoldDir, key: bytes) -> None:
        self.label = label
        self.holder = holder
        self.key = key
        self.changed: list[tuple[Node, bytes]] = []
        self.new_scaffolds: set[int] = set()
        self._checked_dirs: set[int] = set()
        self._dirs: dict[tuple[bytes, ...], tuple[Node, dict]] = {}

    def store(self, container: dict, name: bytes, value: Node) -> None:
        container[name] = value

    def store_many(self, container: dict, template: dict, names: Sequence[bytes]) -> None:
        container.update(template)

    def undo(self) -> None:
        """Nothing to undo in a detached subtree: the caller drops it."""

    def fail(self, index: int, path: PathOrMaker, reason: str, error=MappingError) -> None:
        if callable(path):  # built only when needed: most groups never fail
            path = path()
        raise error(
            f"{self.label}: mapping {index} ({display(path)}): {reason}",
            details={"index": index, "path": display(path), "reason": reason},
        )

    def note_change(self, parent: Node, name: bytes) -> None:
        if parent.ino:
            self.changed.append((parent, name))

    # -- inserting ---------------------------------------------------------------------

    def insert_all(self, specs: Sequence[Spec]) -> int:
        """Insert every spec, all or nothing; returns how many mappings they stand for."""
        index = 0
        try:
            for spec in specs:
                if type(spec) is Group:  # most of a large request
                    for part in spec.parts:
                        self.insert_part(index, part)
                        index += len(part.names)
                else:
                    self.insert(index, spec)
                    index += 1
        except BaseException:
            self.undo()
            raise
        return index

    def insert(self, index: int, mapping: Mapping) -> None:
        comps = mapping.components
        if not comps:  # the holder's node itself ("/" of the mount or sandbox)
            self.place(self.holder, self.holder.children, self.key, index, mapping.path,
                       MappedNode(mapping.underlying, None, mapping.writable))
            return
        parent, container = self.directory(comps[:-1], index, mapping.path)
        directory, name = split_host_path(mapping.underlying)
        if name == comps[-1] and not mapping.writable:
            leaf: Node = LazyFile(directory)
        else:
            leaf = MappedNode.of_path(mapping.underlying, mapping.writable)
        self.place(parent, container, comps[-1], index, mapping.path, leaf)

    def insert_part(self, index: int, part: DirectoryGroup) -> None:
        """Insert one directory's members of a group: in bulk when no name is taken."""
        parent, container = self.directory(part.directory, index, lambda: part.path(0))
        names = part.names
        template = part.template
        if (template is not None and len(template) == len(names)
                and (not container or container.keys().isdisjoint(template))):
            self.store_many(container, template, names)
            if parent.ino:
                self.changed.extend((parent, name) for name in names)
            return
        for offset, name in enumerate(names):  # a name taken or listed twice, or writable
            leaf = template[name] if template is not None else MappedNode(part.host_dir, name, True)
            self.place(parent, container, name, index + offset,
                       lambda offset=offset: part.path(offset), leaf)

    def directory(self, comps: tuple[bytes, ...], index: int,
                  path: PathOrMaker) -> tuple[Node, dict]:
        """The node at ``comps`` (scaffolds made as needed) and its child container.

        Every directory on the way is cached, so sibling directories (one
        group part each, in a toolchain) cost one step each, not a walk.
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
                self.new_scaffolds.add(id(node))
                self.store(container, part, node)
                self.note_change(parent, part)
                hit = self._dirs[comps] = (node, node.children)
                return hit
            node = node.resolve(container, part)
        else:
            node = self.holder.children[self.key].resolve(self.holder.children, self.key)
        if isinstance(node, HostNode):
            self.require_directory(index, path, node)
            if node.overlays is None:
                node.overlays = {}
        hit = self._dirs[comps] = (node, node.contents())
        return hit

    def place(self, parent: Node, container: dict, name: bytes, index: int, path: PathOrMaker,
              leaf: Node) -> None:
        existing = container.get(name)
        if existing is not None:
            if type(existing) is not ScaffoldDir:
                self.fail(index, path, "already mapped", AlreadyMappedError)
            if id(existing) not in self.new_scaffolds:
                self.fail(index, path,
                          "is a scaffold directory of other mappings; map it before them or not at all",
                          AlreadyMappedError)
            # Made by this build for deeper mappings: they become overlays of
            # the new mapping (the same dict, so cached walks stay valid).
            leaf = leaf.as_node(name)
            assert isinstance(leaf, HostNode)
            if existing.children or not self.may_be_file(container, name, leaf):
                leaf.overlays = existing.children
                why = "cannot nest below" if existing.children else \
                    "the top of a mount or sandbox must be a directory:"
                self.require_directory(index, path, leaf, why)
        self.store(container, name, leaf)
        self.note_change(parent, name)

    def may_be_file(self, container: dict, name: bytes, leaf: HostNode) -> bool:
        """Whether ``leaf``, mapped onto the top, may stay a non-directory (``file_top``)."""
        if not self.file_top or container is not self.holder.children or name != self.key:
            return False
        try:
            return not stat.S_ISDIR(os.lstat(leaf.host_path()).st_mode)
        except OSError:
            return False  # require_directory says why

    def require_directory(self, index: int, path: PathOrMaker, node: HostNode,
                          why: str = "cannot nest below") -> None:
        if id(node) in self._checked_dirs:
            return
        host = node.host_path()
        try:
            st = os.lstat(host)
        except OSError as exc:
            self.fail(index, path, f"{why} {display(host)}: {describe_oserror(exc)}")
        if not stat.S_ISDIR(st.st_mode):
            self.fail(index, path, f"{why} {display(host)}: ENOTDIR (Not a directory)")
        self._checked_dirs.add(id(node))


class DetachedBuild(Build):
    """Builds a new subtree: ``holder.children[key]`` is a new, empty ScaffoldDir."""

    def __init__(self, label: str, key: bytes, *, file_top: bool = False) -> None:
        top = ScaffoldDir()
        super().__init__(label, ScaffoldDir({key: top}), key)
        self.new_scaffolds.add(id(top))  # an empty new top may itself be mapped ("/")
        self.file_top = file_top

    @property
    def top(self) -> Node:
        """The subtree built (the top may have become a mapping of "/")."""
        return self.holder.children[self.key]


class JournaledBuild(Build):
    """Adds mappings to the live node ``holder.children[key]``; undone on failure."""

    journaled = True

    def __init__(self, label: str, holder: ScaffoldDir, key: bytes, top_is_empty: bool) -> None:
        super().__init__(label, holder, key)
        # (container, name, previous value) or (container, None, names stored in bulk)
        self.journal: list[tuple[dict, bytes | None, object]] = []
        if top_is_empty:  # an empty sandbox top holds no other mappings: "/" may be mapped onto it
            self.new_scaffolds.add(id(holder.children[key]))

    def store(self, container: dict, name: bytes, value: Node) -> None:
        self.journal.append((container, name, container.get(name)))
        container[name] = value

    def store_many(self, container: dict, template: dict, names: Sequence[bytes]) -> None:
        self.journal.append((container, None, names))
        container.update(template)

    def undo(self) -> None:
        for container, name, previous in reversed(self.journal):
            if name is None:
                for added in previous:
                    container.pop(added, None)
            elif previous is None:
                container.pop(name, None)
            else:
                container[name] = previous
        self.journal.clear()
