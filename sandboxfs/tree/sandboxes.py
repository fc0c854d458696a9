"""The whole mount as a tree: its root, its initial mappings, and the live sandboxes.

Sandboxes are whole subtrees, built detached (``build_sandbox``, safe in a
worker thread because it touches only new nodes) and attached with one dict
store (``attach_sandbox``), so a sandbox appears or disappears atomically
between two FUSE requests.  ``map`` and ``unmap`` change a live sandbox, all
or nothing.

Every change returns the entries the kernel may have cached that are now
wrong, as (parent node, name) pairs for parents the kernel knows: the caller
invalidates exactly those and nothing else.

Pure: no pyfuse3, no trio.
"""

from __future__ import annotations

import collections
import os
from typing import Iterable, Iterator, Sequence

from sandboxfs.errors import InvalidRequestError, NotFoundError, SandboxExistsError
from sandboxfs.tree.build import DetachedBuild, JournaledBuild
from sandboxfs.tree.existence import Spec, require_underlying
from sandboxfs.tree.groups import Group
from sandboxfs.tree.lookup import walk_explicit
from sandboxfs.tree.mapping import display
from sandboxfs.tree.nodes import HostNode, LazyFile, MappedNode, Node, ScaffoldDir

MAX_SANDBOX_NAME = 255

Changed = list[tuple[Node, bytes]]


def count_mappings(specs: Sequence[Spec]) -> int:
    """How many mappings the specs stand for (a group counts one per name)."""
    return sum(spec.count if type(spec) is Group else 1 for spec in specs)


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
    """The mount's root, its initial mappings, and its live sandboxes."""

    # Whether a new sandbox's "/" may be mapped to a non-directory, making
    # /name that file.  sandboxfs 0.2 allowed it, so its front end turns this
    # on; the control protocol keeps sandbox tops directories.
    file_tops = False

    def __init__(self, mappings: Sequence[Spec] = ()) -> None:
        build = DetachedBuild("mount", b"")
        if mappings:
            require_underlying("mount", mappings)
            build.insert_all(mappings)
        self.root: Node = build.top
        self.sandboxes: dict[bytes, Sandbox] = {}
        self.detached: list[Sandbox] = []  # destroyed, not yet freed (see destroy_sandbox)
        self.mapping_count = count_mappings(mappings)

    def _root_children(self) -> dict:
        contents = self.root.contents()
        if contents is None:  # a root mapping with no overlays yet
            contents = self.root.overlays = {}
        return contents

    # -- sandboxes ---------------------------------------------------------------------

    def new_sandbox_name(self, name: str | bytes) -> bytes:
        """``name`` as bytes, if it is a valid sandbox name and free; else the error to answer."""
        raw = check_sandbox_name(name)
        self._check_name_free(raw, f"create_sandbox '{display(raw)}'")
        return raw

    def build_sandbox(self, name: str | bytes, specs: Sequence[Spec]) -> Sandbox:
        """Build a sandbox detached from the tree (safe in a worker thread).

        The existence of host paths must have been checked (``require_underlying``),
        after ``new_sandbox_name`` (a taken name is the error to answer first).
        Only new nodes are touched, so the live tree keeps serving meanwhile;
        ``attach_sandbox`` then makes it visible in one step.
        """
        raw = self.new_sandbox_name(name)
        build = DetachedBuild(f"create_sandbox '{display(raw)}'", raw, file_top=self.file_tops)
        count = build.insert_all(specs)
        return Sandbox(raw, build.top, count)

    def attach_sandbox(self, sandbox: Sandbox) -> Changed:
        """Make a built sandbox visible as ``/name``."""
        self._check_name_free(sandbox.name, f"create_sandbox '{display(sandbox.name)}'")
        self._root_children()[sandbox.name] = sandbox.node
        self.sandboxes[sandbox.name] = sandbox
        self.mapping_count += sandbox.mapping_count
        return [(self.root, sandbox.name)]

    def create_sandbox(self, name: str | bytes, specs: Sequence[Spec]) -> Changed:
        """Check, build and attach ``/name`` in one call (tests, small requests)."""
        raw = self.new_sandbox_name(name)
        require_underlying(f"create_sandbox '{display(raw)}'", specs)
        return self.attach_sandbox(self.build_sandbox(raw, specs))

    def _check_name_free(self, raw: bytes, label: str) -> None:
        if raw in self.sandboxes:
            raise SandboxExistsError(f"{label}: a sandbox with this name already exists")
        if raw in self._root_children():
            raise SandboxExistsError(f"{label}: the name is taken by a mapping of the mount")

    def destroy_sandbox(self, name: str | bytes) -> Changed:
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

    def map(self, name: str | bytes, specs: Sequence[Spec]) -> Changed:
        """Check and add mappings to a live sandbox, all or nothing."""
        raw = os.fsencode(name)
        self._sandbox("map", raw)
        require_underlying(f"map '{display(raw)}'", specs)
        return self.insert_mappings(raw, specs)

    def insert_mappings(self, name: str | bytes, specs: Sequence[Spec]) -> Changed:
        """Add mappings whose host paths were checked (``require_underlying``) to a live
        sandbox, all or nothing."""
        raw = os.fsencode(name)
        sandbox = self._sandbox("map", raw)
        holder = ScaffoldDir({raw: sandbox.node})
        empty = type(sandbox.node) is ScaffoldDir and not sandbox.node.children
        build = JournaledBuild(f"map '{display(raw)}'", holder, raw, top_is_empty=empty)
        count = build.insert_all(specs)
        changed = build.changed
        if holder.children[raw] is not sandbox.node:  # the sandbox root itself got mapped
            sandbox.node = holder.children[raw]
            self._root_children()[raw] = sandbox.node
            changed.append((self.root, raw))
        sandbox.mapping_count += count
        self.mapping_count += count
        return changed

    def unmap(self, name: str | bytes, paths: Iterable[Sequence[bytes]]) -> Changed:
        """Remove mappings (given as component tuples) from a live sandbox, all or nothing.

        A removed mapping that had nested mappings below it leaves a scaffold
        holding them; scaffolds that no longer lead to any mapping are pruned.
        """
        raw = os.fsencode(name)
        sandbox = self._sandbox("unmap", raw)
        label = f"unmap '{display(raw)}'"
        requested = [tuple(comps) for comps in paths]
        for index, comps in enumerate(requested):
            chain = walk_explicit(sandbox.node, comps)
            if chain is None or not isinstance(chain[-1][2], MappedNode):
                path = display(b"/" + b"/".join(comps))
                raise NotFoundError(
                    f"{label}: mapping {index} ({path}): not mapped",
                    details={"index": index, "path": path},
                )
        changed: Changed = []
        removed = 0
        for comps in requested:
            # Walk again: an earlier removal in this request may have replaced a parent.
            chain = walk_explicit(sandbox.node, comps)
            if chain is None or not isinstance(chain[-1][2], MappedNode):
                continue  # listed twice
            parent, child_name, node = chain[-1]
            removed += 1
            replacement = ScaffoldDir(dict(node.overlays)) if node.overlays else None
            if parent is None:  # the sandbox root mapping itself
                sandbox.node = replacement or ScaffoldDir()
                self._root_children()[raw] = sandbox.node
                changed.append((self.root, raw))
                continue
            container = parent.contents()
            if replacement is not None:
                container[child_name] = replacement
            else:
                del container[child_name]
                changed.extend(self._prune(chain[:-1]))
            if parent.ino:
                changed.append((parent, child_name))
        sandbox.mapping_count -= removed
        self.mapping_count -= removed
        return changed

    def _prune(self, chain: list) -> Changed:
        """Drop scaffolds left empty by an unmap, bottom-up (never the sandbox top).

        Returns the kernel entries that named them: they must be invalidated too.
        """
        pruned: Changed = []
        for parent, name, node in reversed(chain):
            if parent is None or type(node) is not ScaffoldDir or node.children:
                break
            del parent.contents()[name]
            if parent.ino:
                pruned.append((parent, name))
        return pruned

    def _sandbox(self, verb: str, raw: bytes) -> Sandbox:
        sandbox = self.sandboxes.get(raw)
        if sandbox is None:
            raise NotFoundError(f"{verb} '{display(raw)}': no such sandbox")
        return sandbox

    def first_host_path(self) -> bytes | None:
        """A host path behind the mount, for statfs: the root mapping, else the first mapping.

        Lazy files answer with their host directory (same filesystem), so
        nothing is materialised just to answer statfs.
        """
        queue = collections.deque([self.root])
        while queue:
            node = queue.popleft()
            if isinstance(node, HostNode):
                return node.host_path()
            if isinstance(node, LazyFile):
                return node.host_dir
            queue.extend((node.contents() or {}).values())
        return None


def declared_paths(top: Node) -> list[bytes]:
    """The paths (relative to ``top``, b"" for ``top`` itself) of the explicit mappings below it."""
    paths: list[bytes] = []
    stack: list[tuple[bytes, Node]] = [(b"", top)]
    while stack:
        path, node = stack.pop()
        if node.explicit:
            paths.append(path)
        for name, child in (node.contents() or {}).items():
            stack.append((path + b"/" + name if path else name, child))
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
        container = stack.pop().contents()
        if not container:
            continue
        stack.extend(child for child in container.values() if child.contents())
        while len(container) > batch:
            for _ in range(batch):
                container.popitem()
            yield
        budget -= len(container)
        container.clear()
        if budget <= 0:
            budget = batch
            yield
