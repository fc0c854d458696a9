"""Groups: many mappings below one pair of roots, named by their content.

A *group* (protocol.md §5) is ``root/NAME`` showing ``host_root/NAME`` for
each of its names, with one writability; a name may be a relative path, so a
whole 100,000-file toolchain travels as one group.  Its **digest** is the
SHA-256 of its canonical encoding (``group_digest``), which the client and
the server compute alike: a request may then name a group the server holds
by digest instead of sending it again, and what is served is always what the
digest encodes, never what some earlier caller's objects happened to say.

The server keeps recent groups in a ``GroupStore`` (least recently used
first out, bounded by an estimate of their memory, shared by every
connection).  What it keeps is a group already split per directory
(``DirectoryGroup``) with, for read-only members, a ready-made container
template per directory: building a sandbox from a stored group copies those
dicts (C-level copies) instead of inserting 100,000 names one by one.

Stored values are shared between requests and sandboxes, so nothing may
change them: DirectoryGroups are tuples, and templates are only ever copied.

Pure: no I/O.  Thread-safe: requests are decoded in worker threads.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from itertools import groupby, repeat
from operator import itemgetter
from typing import NamedTuple

import msgpack

from sandboxfs.tree.mapping import BAD_COMPONENTS
from sandboxfs.tree.nodes import LazyFile

DIGEST_SIZE = 32
# A stored name costs its bytes object, a list slot and a template dict entry.
BYTES_PER_NAME = 120
DEFAULT_BUDGET_BYTES = 64 << 20


class DirectoryGroup(NamedTuple):
    """Mappings of one directory: ``directory/NAME`` shows ``host_dir/NAME`` for each NAME.

    ``template`` (read-only groups only) maps each name to one shared
    ``LazyFile``: the container entries a sandbox gets, ready to copy.  A
    NamedTuple, not an attrs class: a group builds thousands of them, and
    tuples build in C.
    """

    directory: tuple[bytes, ...]
    host_dir: bytes
    writable: bool
    names: list[bytes] | tuple[bytes, ...]
    template: dict | None = None

    def path(self, offset: int) -> bytes:
        return b"/" + b"/".join(self.directory + (self.names[offset],))


def directory_group(directory: tuple[bytes, ...], host_dir: bytes, writable: bool,
                    names: list[bytes] | tuple[bytes, ...]) -> DirectoryGroup:
    """A DirectoryGroup with its template (for read-only names)."""
    template = None if writable else dict.fromkeys(names, LazyFile(host_dir))
    return DirectoryGroup(directory, host_dir, writable, names, template)


def group_digest(root: bytes, host_root: bytes, writable: bool, blob: bytes) -> bytes:
    """The digest that names a group: SHA-256 of its canonical encoding.

    The encoding is the msgpack array ``[root, host_root, writable]`` (absolute
    paths as bin, ``writable`` as a bool) followed by the names' bytes, joined
    with NUL: protocol.md §5.  The array is self-delimiting, so no two groups
    share an encoding.
    """
    digest = hashlib.sha256(msgpack.packb([root, host_root, bool(writable)], use_bin_type=True))
    digest.update(blob)
    return digest.digest()


class Group:
    """A whole group, split per directory; immutable once made (shared by sandboxes)."""

    __slots__ = ("digest", "root", "host_root", "writable", "parts", "count", "cost")

    def __init__(self, digest: bytes, root: tuple[bytes, ...], host_root: bytes, writable: bool,
                 parts: tuple[DirectoryGroup, ...], count: int, cost: int) -> None:
        self.digest = digest
        self.root = root
        self.host_root = host_root
        self.writable = writable
        self.parts = parts
        self.count = count
        self.cost = cost  # estimated bytes held while stored

    def path(self, offset: int) -> bytes:
        """The path inside the sandbox of member ``offset``."""
        for part in self.parts:
            if offset < len(part.names):
                return part.path(offset)
            offset -= len(part.names)
        raise IndexError(offset)


_DIRECTORY, _SEPARATOR, _NAME = itemgetter(0), itemgetter(1), itemgetter(2)


def split_names(root: tuple[bytes, ...], host_root: bytes, writable: bool,
                blob: bytes) -> tuple[DirectoryGroup, ...] | None:
    """The NUL-separated names of ``blob`` as DirectoryGroups, in order (a directory that
    comes back later makes another); None if a name is unusable: empty, '.', '..', with
    such a component, or holding NUL (the caller says which, on its slow path).

    A few C-level steps per name (``split``, ``rpartition``, ``groupby``) and
    set checks per directory: no Python step per name.
    """
    names = blob.split(b"\0")
    if b"/" not in blob:
        if not BAD_COMPONENTS.isdisjoint(names):
            return None
        return (directory_group(root, host_root, writable, names),)
    host_base = host_root if host_root != b"/" else b""
    parts = []
    add, bad = parts.append, BAD_COMPONENTS.isdisjoint  # looked up once, used per directory
    for sub, run in groupby(map(bytes.rpartition, names, repeat(b"/")), _DIRECTORY):
        if sub:
            run_names = list(map(_NAME, run))
            comps = sub.split(b"/")
            if not bad(comps) or not bad(run_names):
                return None
            add(directory_group(root + tuple(comps), host_base + b"/" + sub, writable, run_names))
        else:  # top-level names, and "/name", which rpartition also puts here
            members = list(run)
            run_names = list(map(_NAME, members))
            if any(map(_SEPARATOR, members)) or not bad(run_names):
                return None
            add(directory_group(root, host_root, writable, run_names))
    return tuple(parts)


def make_group(root: tuple[bytes, ...], host_root: bytes, writable: bool, blob: bytes,
               count: int, digest: bytes | None = None) -> Group | None:
    """The Group of ``count`` names in ``blob``; None if a name is unusable."""
    if count < 1 or blob.count(b"\0") != count - 1:
        return None
    parts = split_names(root, host_root, writable, blob)
    if parts is None:
        return None
    if digest is None:
        digest = group_digest(b"/" + b"/".join(root), host_root, writable, blob)
    return Group(digest, root, host_root, writable, parts, count,
                 len(blob) + BYTES_PER_NAME * count)


def group_of(root: tuple[bytes, ...], host_root: bytes, writable: bool,
             names: list[bytes] | tuple[bytes, ...]) -> Group:
    """The Group of ``names`` (relative paths below ``root`` and ``host_root``).

    For callers that hold a list of names rather than a wire blob (the 0.2
    front end, tests); raises ValueError naming the rule a name breaks.
    """
    group = make_group(root, host_root, writable, b"\0".join(names), len(names))
    if group is None:
        raise ValueError(f"a name of {names[:3]!r}... is empty, '.', '..', has such a component or NUL")
    return group


class GroupStore:
    """The groups the server holds, by digest, least recently used first out.

    Bounded by ``budget_bytes`` of estimated memory.  A group that sandboxes
    still use stays alive in them when it leaves the store; only its digest is
    forgotten, and a request naming it then gets ``missing_group``.
    """

    def __init__(self, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        self.budget_bytes = budget_bytes
        self._groups: OrderedDict[bytes, Group] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, digest: bytes) -> Group | None:
        """The group named ``digest`` (now the most recent), or None."""
        with self._lock:
            group = self._groups.get(digest)
            if group is None:
                self.misses += 1
                return None
            self._groups.move_to_end(digest)
            self.hits += 1
            return group

    def add(self, group: Group) -> Group:
        """Keep ``group``; returns the stored one (an equal group kept earlier wins)."""
        with self._lock:
            known = self._groups.get(group.digest)
            if known is not None:
                self._groups.move_to_end(group.digest)
                return known
            if group.cost > self.budget_bytes:
                return group  # too big to keep: used once
            while self._groups and self._held + group.cost > self.budget_bytes:
                _, oldest = self._groups.popitem(last=False)
                self._held -= oldest.cost
            self._groups[group.digest] = group
            self._held += group.cost
            return group

    def holds(self, digest: bytes) -> bool:
        """Whether a request may name ``digest`` now (no recency change)."""
        return digest in self._groups

    def discard(self, digest: bytes) -> None:
        with self._lock:
            group = self._groups.pop(digest, None)
            if group is not None:
                self._held -= group.cost

    def clear(self) -> None:
        with self._lock:
            self._groups.clear()
            self._held = 0

    def __len__(self) -> int:
        return len(self._groups)

    def stats(self) -> dict[str, int]:
        return {"groups": len(self._groups), "group_bytes": self._held,
                "group_hits": self.hits, "group_misses": self.misses}
