"""The client's half of groups: finding them in a caller's mapping list, and naming them.

A group (protocol.md §5) is a stretch of the caller's mappings that all show
``host_root/REST`` at ``root/REST`` with one writability: a toolchain of
100,000 files is usually one group, sent as ``[root, host_root, writable,
b"REST\\0REST..."]``.  Python pays about a microsecond per step per mapping,
so groups are found with whole-string operations (joins, counts, replaces,
one comparison) instead of a loop, and each is named by the digest of what
it encodes to (``tree.groups.group_digest``), computed from the strings this
module builds anyway.  Two lists that encode alike get the same digest,
whoever built them and however: nothing here remembers the caller's objects.

``encode_mappings`` turns a list into ``Element``s in the caller's order;
``PreparedMappings`` is that, done once and kept by the caller (a
toolchain's mappings, encoded and digested once, then named in every
action's request).

Pure: no I/O, no protocol state (prefix ids and what the server holds
belong to the client session).
"""

from __future__ import annotations

import os
from operator import itemgetter
from typing import Any, Iterable, NamedTuple

from sandboxfs.tree.groups import group_digest
from sandboxfs.tree.mapping import Mapping

_FIRST, _SECOND, _THIRD = itemgetter(0), itemgetter(1), itemgetter(2)


class Single(NamedTuple):
    """A mapping that fits no group: it travels as ``[path, underlying, writable]``."""

    path: bytes
    underlying: bytes
    writable: bool


class EncodedGroup(NamedTuple):
    """A group as it goes on the wire, and its digest."""

    root: bytes
    host_root: bytes
    writable: bool
    names: bytes  # the RESTs, NUL-separated
    count: int
    digest: bytes


Element = Single | EncodedGroup


def _encode(path: Any) -> bytes:
    """os.fsencode without its Python-level overhead for the common str case."""
    if type(path) is str:
        return path.encode("utf-8", "surrogateescape")
    return os.fsencode(path)


def columns(items: list) -> tuple[list, list, list[bool]]:
    """The caller's mappings as three lists: inside paths, host paths, writability (bool).

    Lists of (str, str, bool) tuples, what build tools pass, are split with
    C-level steps; other element types (Mapping objects, pairs) go through
    ``normalized``, and so do paths that are not str (a join raises
    TypeError on them, and the caller starts again normalized).
    """
    try:
        paths, hosts = list(map(_FIRST, items)), list(map(_SECOND, items))
        flags = list(map(bool, map(_THIRD, items)))
    except (TypeError, IndexError, KeyError):
        return normalized(items)
    if paths and (type(paths[0]) is not str or type(hosts[0]) is not str):
        return normalized(items)
    return paths, hosts, flags


def normalized(items: list) -> tuple[list[str], list[str], list[bool]]:
    """``columns`` one mapping at a time, with every path made a str."""
    paths, hosts, flags = [], [], []
    for item in items:
        if isinstance(item, Mapping):
            path, underlying, writable = item.path, item.underlying, item.writable
        else:
            path, underlying, writable = item[0], item[1], len(item) > 2 and item[2]
        paths.append(path if type(path) is str else os.fsdecode(path))
        hosts.append(underlying if type(underlying) is str else os.fsdecode(underlying))
        flags.append(bool(writable))
    return paths, hosts, flags


def roots(path: str, host: str) -> tuple[str, str] | None:
    """(root, host root) such that ``path`` is root/REST and ``host``
    host_root/REST, with REST as long as it can be ("" stands for "/"); None
    when the two do not end alike or are not plain absolute paths."""
    if path[:1] != "/" or host[:1] != "/" or path[-1:] == "/" or host[-1:] == "/":
        return None
    shared = len(os.path.commonprefix((path[::-1], host[::-1])))
    cut = path.find("/", len(path) - shared)
    if cut < 0:
        return None
    inner, host_root = path[:cut], host[:len(host) - (len(path) - cut)]
    if "\0" in inner or "\0" in host_root:
        return None
    return inner, host_root


def subtree(paths: list[str], hosts: list[str], flags: list, start: int,
            stop: int) -> tuple[str, str, str] | None:
    """(root, host root, NUL-separated RESTs) if every mapping in [start, stop)
    shows host_root/REST at root/REST with one writability; else None.  The
    roots come from the first mapping; the others are checked on whole joined
    strings, so each costs a few bytes of C-level copying and comparing."""
    found = roots(paths[start], hosts[start])
    if found is None:
        return None
    count = stop - start
    if count > 1 and flags[start:stop].count(flags[start]) != count:
        return None
    inner, host = found
    inner_slash, host_slash = inner + "/", host + "/"
    joined = "\0".join(paths[start:stop])
    if (joined.count("\0") != count - 1 or joined.count("\0" + inner_slash) != count - 1
            or not joined.startswith(inner_slash) or "/\0" in joined or joined[-1] == "/"):
        return None
    rests = joined[len(inner_slash):].replace("\0" + inner_slash, "\0")
    if "\0".join(hosts[start:stop]) != host_slash + rests.replace("\0", "\0" + host_slash):
        return None
    return inner or "/", host or "/", rests


class _Pieces:
    """Groups being found, as (root, host root, writable, [RESTs pieces], count) and singles."""

    def __init__(self) -> None:
        self.out: list[list | Single] = []

    def group(self, root: str, host: str, writable: bool, rests: str, count: int) -> None:
        last = self.out[-1] if self.out else None
        if type(last) is list and last[0] == root and last[1] == host and last[2] == writable:
            last[3].append(rests)  # the other half of a range that was halved
            last[4] += count
        else:
            self.out.append([root, host, writable, [rests], count])

    def elements(self) -> list[Element]:
        elements: list[Element] = []
        for piece in self.out:
            if type(piece) is Single:
                elements.append(piece)
                continue
            root, host, writable, rests, count = piece
            root_b, host_b, names = _encode(root), _encode(host), _encode("\0".join(rests))
            elements.append(EncodedGroup(root_b, host_b, writable, names, count,
                                         group_digest(root_b, host_b, writable, names)))
        return elements


def _split(paths: list[str], hosts: list[str], flags: list, start: int, stop: int,
           pieces: _Pieces) -> None:
    if start == stop:
        return
    found = subtree(paths, hosts, flags, start, stop)
    if found is not None:
        pieces.group(found[0], found[1], flags[start], found[2], stop - start)
    elif stop - start == 1:
        pieces.out.append(Single(_encode(paths[start]), _encode(hosts[start]), flags[start]))
    else:
        # Where writability changes a group ends (an output directory after the inputs);
        # other ends are found by halving.
        try:
            middle = flags.index(not flags[start], start + 1, stop)
        except ValueError:
            middle = (start + stop) // 2
        _split(paths, hosts, flags, start, middle, pieces)
        _split(paths, hosts, flags, middle, stop, pieces)


def _encode_plain(items: list) -> list[Element]:
    """Elements of a list holding only mappings (no PreparedMappings)."""
    pieces = _Pieces()
    try:
        paths, hosts, flags = columns(items)
        _split(paths, hosts, flags, 0, len(items), pieces)
    except TypeError:  # a path that is not a str (bytes, PathLike) met a str one
        paths, hosts, flags = normalized(items)
        pieces = _Pieces()
        _split(paths, hosts, flags, 0, len(items), pieces)
    return pieces.elements()


class PreparedMappings:
    """A caller's mappings encoded once: immutable, and named by content.

    Build tools send the same toolchain with every action.  Prepared once
    (``prepare(mappings)``), it can be placed in any number of requests,
    alone or among other mappings, and costs each of them only a reference
    to its groups' digests when the server holds them.  Later changes to the
    objects it was made from change nothing: it keeps what they encoded to.
    """

    __slots__ = ("elements", "count", "held")

    def __init__(self, mappings: Iterable[Any]) -> None:
        self.elements: tuple[Element, ...] = tuple(encode_mappings(mappings))
        self.count = sum(e.count if type(e) is EncodedGroup else 1 for e in self.elements)
        # Digests some server said it holds: named by digest at once, even on a new
        # connection (the server's store is shared); a server that lost them says
        # missing_group and gets them in full.  Never changes what is served.
        self.held: set[bytes] = set()

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"PreparedMappings({self.count} mappings in {len(self.elements)} elements)"


def encode_mappings(mappings: Iterable[Any],
                    prepared: list[PreparedMappings] | None = None) -> list[Element]:
    """The elements of ``mappings`` in the caller's order (so error indices are the caller's).

    Groups are found as ``subtree`` allows: a range that is not one group is
    cut where writability changes, or else halved, until each part is one
    (halves of one group join up again).  A mapping that fits no group goes
    alone.  PreparedMappings in the list give their elements as they are (and
    are appended to ``prepared``).
    """
    if type(mappings) is PreparedMappings:
        if prepared is not None:
            prepared.append(mappings)
        return list(mappings.elements)
    items = mappings if type(mappings) is list else list(mappings)
    try:
        return _encode_plain(items)
    except (TypeError, AttributeError):
        if not any(type(item) is PreparedMappings for item in items):
            raise
    elements: list[Element] = []
    plain: list = []
    for item in items:  # the slow path: a list with PreparedMappings among its items
        if type(item) is PreparedMappings:
            if plain:
                elements.extend(_encode_plain(plain))
                plain = []
            elements.extend(item.elements)
            if prepared is not None:
                prepared.append(item)
        else:
            plain.append(item)
    if plain:
        elements.extend(_encode_plain(plain))
    return elements


def prepare(mappings: Iterable[Any]) -> PreparedMappings:
    """Encode ``mappings`` once, for use in many requests."""
    return PreparedMappings(mappings)
