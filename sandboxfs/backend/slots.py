"""Backend sandboxes as slots of the mount: made from trees, reused by Merkle diff, collected.

A sandbox of the protocol is shown at ``<mount>/<slot>``, a directory of
the mount whose root node (a ``tree.content.ContentDir``) outlives the
sandbox.  Destroying a sandbox leaves its slot idle with its tree; the next
Create with the same exec root takes the most recently idle slot and swaps
only the subtrees whose digests changed (``rebind``).  Every node below an
unchanged subtree stays as it was, with its inode number, so the kernel's
cached entries, attributes and pages for it stay valid: the next action's
compiler finds its toolchain warm.  An idle slot shows the inputs of the
sandbox that last used it (never its outputs: those are removed with it);
past ``max_idle`` idle slots the oldest is removed from the mount.

Leaves are served from the content store when it holds their digest, else
from ``exec_root/<tree path>``, where Bazel staged them (no copy).

Outputs and writable directories are the only writable places
(``backend.writable`` places them, and moves outputs at Collect).

Pure: no pyfuse3, no trio; changes return the (directory, name) entries the
kernel must forget.
"""

from __future__ import annotations

import collections
import os
from typing import Callable
import stat
import weakref

import attrs

from sandboxfs.backend.digests import require_sha256
from sandboxfs.backend.merkle import DirectoryStore, MerkleDir, SymlinkLeaf, file_digests
from sandboxfs.backend.store import ContentStore
from sandboxfs.backend.writable import Changed, join, mkdirs, move_output, parse_outputs, place_writable
from sandboxfs.errors import InvalidRequestError, NotFoundError, describe_oserror
from sandboxfs.tree.content import ContentDir, ContentFile, VirtualSymlink
from sandboxfs.tree.mapping import display
from sandboxfs.tree.nodes import Node
from sandboxfs.tree.sandboxes import Sandbox, Tree

MAX_IDLE_SLOTS = 32
_DIGEST_CACHE = 64  # roots whose file digests are remembered


class LeafSource:
    """Where a slot's leaves come from: the content store, else its exec root."""

    __slots__ = ("store", "exec_root", "missing", "files")

    def __init__(self, store: ContentStore, exec_root: bytes,
                 files: weakref.WeakValueDictionary | None = None) -> None:
        self.store = store
        self.exec_root = exec_root
        # (host path, digest, executable) -> its node, shared by every slot: one kernel
        # inode per input file, so its attributes, pages and passthrough backing stay
        # warm from one sandbox to the next (hard links, as the kernel sees them).
        self.files = files if files is not None else weakref.WeakValueDictionary()
        self.missing = 0  # staged leaves that were not there when looked up

    def node_for(self, directory: ContentDir, name: bytes, leaf) -> Node | None:
        kind = type(leaf)
        if kind is MerkleDir:
            return ContentDir(leaf, directory.child_path(name), self)
        if kind is SymlinkLeaf:
            return VirtualSymlink(leaf.target)
        held = self.store.path(leaf.digest)
        if held is not None:
            host = os.fsencode(held)
        else:
            host = self.exec_root + b"/" + directory.child_path(name)
            try:
                st = os.lstat(host)
            except OSError:
                self.missing += 1
                return None  # not staged: absent, as an undeclared name is
            if stat.S_ISLNK(st.st_mode):  # staged as a symlink: show the file it names
                host = os.fsencode(os.path.realpath(host))
        key = (host, leaf.digest, leaf.is_executable)
        node = self.files.get(key)
        if node is None:
            node = self.files[key] = ContentFile(host, leaf.is_executable)
        return node


@attrs.define
class Slot:
    """One ``<mount>/<name>`` directory and the sandbox using it (None while idle)."""

    name: bytes
    node: ContentDir
    source: LeafSource
    sandbox_id: str | None = None
    scratch: bytes = b""
    overrides: list = attrs.Factory(list)  # (container node, name) added for the sandbox
    outputs: list = attrs.Factory(list)  # (Output, host path)


class Slots:
    """The live backend sandboxes and the idle slots, in a ``Tree``."""

    def __init__(self, tree: Tree, directories: DirectoryStore, store: ContentStore,
                 mount_point: str, scratch_root: str, max_idle: int = MAX_IDLE_SLOTS,
                 source_factory: Callable[[bytes, weakref.WeakValueDictionary], LeafSource]
                 | None = None) -> None:
        """``source_factory(exec_root, shared_files)`` makes each slot's LeafSource; a
        factory (``sandboxfs.worker``) whose sources fetch what the store lacks makes
        evicted content no reason to answer MissingContent."""
        self.tree = tree
        self.directories = directories
        self.store = store
        self.mount_point = os.fsencode(mount_point)
        self.scratch_root = os.fsencode(scratch_root)
        self.max_idle = max_idle
        self.lazy = source_factory is not None
        self.make_source = source_factory or (lambda root, files: LeafSource(store, root, files))
        self.live: dict[str, Slot] = {}
        self.idle: collections.OrderedDict[bytes, Slot] = collections.OrderedDict()
        self._names = 0
        self._files: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._digests: collections.OrderedDict[str, set[str]] = collections.OrderedDict()
        self.counts = collections.Counter()

    # -- create ---------------------------------------------------------------------------

    def create(self, sandbox_id: str, manifest) -> tuple[str, object, Changed]:
        """("ok", path, changed) or ("missing", digests, []); InvalidRequestError on bad input.

        Nothing changes unless the answer is "ok".
        """
        label = f"Create {sandbox_id!r}"
        if not sandbox_id:
            raise InvalidRequestError("Create: the request has no sandbox_id")
        if sandbox_id in self.live:
            raise InvalidRequestError(f"{label}: a sandbox with this id exists")
        try:
            require_sha256(manifest.hash_function)
        except InvalidRequestError as exc:
            raise InvalidRequestError(f"{label}: {exc.message}") from None
        if not manifest.HasField("input_root_digest"):
            raise InvalidRequestError(f"{label}: the manifest has no input_root_digest")
        exec_root = manifest.exec_root
        if not exec_root or not os.path.isabs(exec_root):
            raise InvalidRequestError(f"{label}: exec_root {exec_root!r} is not an absolute path")
        outputs, writable = parse_outputs(label, manifest.outputs, manifest.writable_dirs)
        digest = manifest.input_root_digest
        try:
            resolution = self.directories.resolve(digest.hash, digest.size_bytes)
        except InvalidRequestError as exc:
            raise InvalidRequestError(f"{label}: {exc.message}", details=exc.details) from None
        if resolution.root is None:
            return "missing", list(resolution.missing), []
        root = resolution.root
        store = self.store
        held, evicted, refused = store.classify(self.file_digests(root))
        for d in sorted(refused):
            if d not in held:
                raise InvalidRequestError(f"{label}: the tree needs content {d}, refused when "
                                          f"pushed: {refused[d]}", details={"digest": d})
        if evicted and not self.lazy:
            return "missing", sorted(evicted), []
        lost = store.pin(sandbox_id, held)
        while lost and self.lazy:  # fetched again when opened: pin only what is still held
            held -= set(lost)
            lost = store.pin(sandbox_id, held)
        if lost:  # dropped between the two looks
            return "missing", lost, []
        try:
            slot, changed = self._take_slot(os.fsencode(exec_root), root)
            try:
                changed += place_writable(slot, label, outputs, writable)
            except BaseException:
                changed += self._clear_overrides(slot)
                self._park(slot)
                raise
        except BaseException:
            store.unpin(sandbox_id)
            raise
        slot.sandbox_id = sandbox_id
        self.live[sandbox_id] = slot
        return "ok", os.fsdecode(join(self.mount_point, slot.name)), changed

    def file_digests(self, root: MerkleDir) -> set[str]:
        """The digests of every file in tree ``root`` (remembered for the last few roots)."""
        cached = self._digests.get(root.digest)
        if cached is None:
            cached = self._digests[root.digest] = file_digests([root])
            if len(self._digests) > _DIGEST_CACHE:
                self._digests.popitem(last=False)
        else:
            self._digests.move_to_end(root.digest)
        return cached

    def _take_slot(self, exec_root: bytes, root: MerkleDir) -> tuple[Slot, Changed]:
        for name in reversed(self.idle):
            slot = self.idle[name]
            if slot.source.exec_root == exec_root:
                del self.idle[name]
                self.counts["reused"] += 1
                changed: Changed = []
                rebind(slot.node, root, changed)
                slot.scratch = self._new_scratch(slot.name)
                return slot, changed
        self._names += 1
        name = b"%d" % self._names
        source = self.make_source(exec_root, self._files)
        slot = Slot(name, ContentDir(root, b"", source), source, scratch=self._new_scratch(name))
        changed = self.tree.attach_sandbox(Sandbox(name, slot.node, 1))
        self.counts["new"] += 1
        return slot, changed

    def _new_scratch(self, name: bytes) -> bytes:
        path = join(self.scratch_root, name)
        mkdirs(path)
        return path

    def _clear_overrides(self, slot: Slot) -> Changed:
        changed: Changed = []
        for container, name in slot.overrides:
            overrides = container.overrides
            if overrides and overrides.pop(name, None) is not None:
                changed.append((container, name))
        slot.overrides.clear()
        slot.outputs.clear()
        return changed

    # -- destroy and collect --------------------------------------------------------------

    def destroy(self, sandbox_id: str) -> tuple[Changed, bytes]:
        """End a sandbox: its slot goes idle.  Returns the entries to forget and the scratch
        directory to delete (the caller deletes it off the loop)."""
        slot = self._live(f"Destroy {sandbox_id!r}", sandbox_id)
        del self.live[sandbox_id]
        self.store.unpin(sandbox_id)
        changed = self._clear_overrides(slot)
        scratch, slot.scratch = slot.scratch, b""
        self.counts["destroyed"] += 1
        trash = scratch + b".destroyed.%d" % self.counts["destroyed"]
        try:
            os.rename(scratch, trash)
        except FileNotFoundError:
            trash = b""
        changed += self._park(slot)
        return changed, trash

    def _park(self, slot: Slot) -> Changed:
        slot.sandbox_id = None
        self.idle[slot.name] = slot
        changed: Changed = []
        while len(self.idle) > self.max_idle:
            _name, oldest = self.idle.popitem(last=False)
            changed += self.tree.destroy_sandbox(oldest.name)
            self.tree.detached.clear()
            self.counts["dropped"] += 1
        return changed

    def collect(self, sandbox_id: str, exec_root: str) -> list[str]:
        """Move the sandbox's outputs under ``exec_root``; returns the ones not produced.

        Runs in a worker thread (renames and copies); errors name the output.
        """
        label = f"Collect {sandbox_id!r}"
        slot = self._live(label, sandbox_id)
        if not exec_root or not os.path.isabs(exec_root):
            raise InvalidRequestError(f"{label}: exec_root {exec_root!r} is not an absolute path")
        absent = []
        for output, host in list(slot.outputs):
            dest = join(os.fsencode(exec_root), output.dest)
            try:
                if not move_output(host, dest, output.kind):
                    absent.append(os.fsdecode(output.dest))
            except OSError as exc:
                raise InvalidRequestError(
                    f"{label}: output '/{display(b'/'.join(output.components))}' -> "
                    f"{display(dest)}: {describe_oserror(exc)}") from None
        return absent

    def _live(self, label: str, sandbox_id: str) -> Slot:
        slot = self.live.get(sandbox_id)
        if slot is None:
            raise NotFoundError(f"{label}: no such sandbox")
        return slot

    def stats(self) -> dict[str, int]:
        """Sandboxes live and idle, slots made, reused and dropped, and staged leaves that
        were missing when looked up (logged when the server ends)."""
        slots = [*self.live.values(), *self.idle.values()]
        return {"live": len(self.live), "idle": len(self.idle), **self.counts,
                "unstaged_leaves": sum(slot.source.missing for slot in slots)}


def rebind(node: ContentDir, new: MerkleDir, changed: Changed) -> None:
    """Show tree ``new`` at ``node``, keeping every node whose entry did not change.

    Walks only directories that differ (equal digests are skipped, as in
    ``merkle.diff``) and only the children made so far; each dropped or
    added name is reported so that the kernel forgets its entry (positive or
    negative).
    """
    stack = [(node, new)]
    while stack:
        directory, listing = stack.pop()
        old = directory.listing
        if old is listing or old.digest == listing.digest:
            directory.listing = listing
            continue
        directory.listing = listing
        known = directory.ino != 0
        entries, old_entries = listing.entries, old.entries
        children = directory.children
        for name in [name for name in children]:
            child = children[name]
            after = entries.get(name)
            before = old_entries.get(name)
            if type(after) is MerkleDir and type(child) is ContentDir:
                stack.append((child, after))
                continue
            # An equal leaf keeps its node: a stored file it names is still held, since
            # a Create whose content was evicted answers MissingContent before this.
            if after is not None and after == before:
                continue
            del children[name]
            if known:
                changed.append((directory, name))
        if known:  # names added since: the kernel may hold them as negative entries
            changed.extend((directory, name) for name in entries
                           if name not in old_entries and name not in children)

