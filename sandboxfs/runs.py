"""Runs: neighbouring mappings that can travel as one group of relative paths.

The client's half of protocol.md §5 and §10.  A run is a stretch of the
caller's mappings that all show ``host_root/REST`` at ``inner_root/REST``
with one writability: a toolchain of 100,000 files is usually one run, sent
as ``[inner_root, host_root, writable, b"REST\\0REST..."]``.  Python pays
about a microsecond per step per mapping, so runs are found with whole-string
operations (joins, counts, replaces, one comparison) instead of a loop.

Build tools send the same toolchain with every action, so a session also
remembers its last few large runs by content (``KnownRuns``): the next
request that holds the same mappings finds them with one list comparison.

Pure: no I/O, no protocol state (prefix ids belong to the client session).
"""

from __future__ import annotations

import os
from operator import itemgetter
from typing import Any

from .mapping import Mapping

_FIRST, _SECOND, _THIRD = itemgetter(0), itemgetter(1), itemgetter(2)

# Runs of at least this many mappings are remembered, up to this many in all.
REMEMBERED_MIN = 1000
REMEMBERED_MAX = 250_000


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
    """(inner root, host root) such that ``path`` is inner_root/REST and ``host``
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
    """(inner root, host root, NUL-separated RESTs) if every mapping in
    [start, stop) shows host_root/REST at inner_root/REST with one
    writability; else None.  The roots come from the first mapping; the others
    are checked on whole joined strings, so each costs a few bytes of C-level
    copying and comparing."""
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


class KnownRuns:
    """The last few large runs one session sent, by content.

    A run is found again when a later request holds the same mappings (equal
    items, compared in C: a pointer test each when the caller reuses its
    tuples) at the start of a range, whatever follows them: an action's own
    sources after the shared toolchain do not hide it.  Equal items encode
    alike, so what was sent can be sent again as it was.
    """

    def __init__(self) -> None:
        self._by_first: dict[Any, list[tuple[list, Any]]] = {}
        self._order: list[tuple[Any, int]] = []  # (first item, size), oldest first
        self._size = 0

    def find(self, items: list, start: int, stop: int) -> tuple[int, Any] | None:
        """(end, what was remembered) of a known run that begins at ``start``, or None."""
        try:
            candidates = self._by_first.get(items[start], ())
        except TypeError:  # an unhashable item (a list): never remembered
            return None
        for run, value in candidates:
            end = start + len(run)
            if end <= stop and items[start:end] == run:
                return end, value
        return None

    def remember(self, items: list, start: int, stop: int, value: Any) -> None:
        """Keep items [start, stop) and ``value`` (what they were encoded to), if many."""
        size = stop - start
        if size < REMEMBERED_MIN or size > REMEMBERED_MAX:
            return
        first = items[start]
        try:
            hash(first)
        except TypeError:
            return
        while self._order and self._size + size > REMEMBERED_MAX:
            oldest, old_size = self._order.pop(0)
            self._by_first[oldest].pop(0)
            if not self._by_first[oldest]:
                del self._by_first[oldest]
            self._size -= old_size
        self._by_first.setdefault(first, []).append((items[start:stop], value))
        self._order.append((first, size))
        self._size += size
