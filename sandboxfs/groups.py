"""A group's names, split into one MappingGroup per directory, and the last few splits.

A group (protocol.md §5) carries names that may be relative paths: a whole
toolchain of 100,000 files travels as one group of ``dir/sub/name`` entries.
The tree wants them per directory.  Splitting costs a few C-level steps per
name (``split``, ``rpartition``, ``groupby``), some 40 ms for 100,000 names
on a slow machine, and build tools send the *same* toolchain group in every
action's sandbox.  So the last few large
splits are kept, keyed by the group's exact bytes: a repeat costs one hash
and one comparison of the bytes, and its names come back as the very bytes
objects of last time, whose hashes are cached, which makes the existence
checks and the tree's dict inserts that follow cheaper too.

The cached values are shared between requests and sandboxes, so nothing may
change them: MappingGroups are tuples, and no one mutates their ``names``.

No I/O; owns the cache.  The protocol decoder turns ``None`` (some name is
unusable) into an error naming the culprit.
"""

from __future__ import annotations

import threading
from itertools import groupby, repeat
from operator import itemgetter

from .mapping import BAD_COMPONENTS, MappingGroup

# Groups with fewer names are split each time (cheap); a cache entry holds a
# few bytes per name plus the names themselves (shared with live sandboxes).
CACHED_MIN_NAMES = 1000
CACHE_MAX_NAMES = 250_000

_DIRECTORY, _SEPARATOR, _NAME = itemgetter(0), itemgetter(1), itemgetter(2)

_Key = tuple[tuple[bytes, ...], bytes, bool, bytes]
_cache: dict[_Key, tuple[MappingGroup, ...]] = {}
_cached_names = 0
_lock = threading.Lock()  # decoding runs in worker threads, several at once


def split_group(directory: tuple[bytes, ...], host_dir: bytes, writable: bool, blob: bytes,
                count: int) -> tuple[MappingGroup, ...] | None:
    """The ``count`` NUL-separated names of ``blob`` as groups per directory, in
    order (a directory that comes back later makes another group); None if a
    name is unusable: empty, '.', '..', or with such a component or a NUL."""
    if count < 1 or blob.count(b"\0") != count - 1:
        return None
    if count < CACHED_MIN_NAMES:
        return _split(directory, host_dir, writable, blob)
    key = (directory, host_dir, writable, blob)
    with _lock:
        groups = _cache.pop(key, None)
        if groups is not None:
            _cache[key] = groups  # now the most recent
            return groups
    groups = _split(directory, host_dir, writable, blob)
    if groups is not None:
        _remember(key, groups, count)
    return groups


def _split(directory: tuple[bytes, ...], host_dir: bytes, writable: bool,
           blob: bytes) -> tuple[MappingGroup, ...] | None:
    names = blob.split(b"\0")
    if b"/" not in blob:
        if not BAD_COMPONENTS.isdisjoint(names):
            return None
        return (tuple.__new__(MappingGroup, (directory, host_dir, writable, names)),)
    host_base = host_dir if host_dir != b"/" else b""
    groups = []
    add, new, bad = groups.append, tuple.__new__, BAD_COMPONENTS.isdisjoint  # once per directory
    for sub, run in groupby(map(bytes.rpartition, names, repeat(b"/")), _DIRECTORY):
        if sub:
            run_names = list(map(_NAME, run))
            comps = sub.split(b"/")
            if not bad(comps) or not bad(run_names):
                return None
            add(new(MappingGroup, (directory + tuple(comps), host_base + b"/" + sub, writable,
                                   run_names)))
        else:  # top-level names, and "/name", which rpartition also puts here
            members = list(run)
            run_names = list(map(_NAME, members))
            if any(map(_SEPARATOR, members)) or not bad(run_names):
                return None
            add(new(MappingGroup, (directory, host_dir, writable, run_names)))
    return tuple(groups)


def _remember(key: _Key, groups: tuple[MappingGroup, ...], count: int) -> None:
    global _cached_names
    if count > CACHE_MAX_NAMES:
        return
    with _lock:
        if key in _cache:  # another thread split it meanwhile
            return
        while _cache and _cached_names + count > CACHE_MAX_NAMES:
            oldest = next(iter(_cache))
            _cached_names -= _size(_cache.pop(oldest))
        _cache[key] = groups
        _cached_names += count


def _size(groups: tuple[MappingGroup, ...]) -> int:
    return sum(len(group.names) for group in groups)


def clear_cache() -> None:
    """Forget every cached split (tests)."""
    global _cached_names
    with _lock:
        _cache.clear()
        _cached_names = 0
