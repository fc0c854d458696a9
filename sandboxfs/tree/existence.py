"""Checking that mappings' host paths exist, with as few syscalls as we can.

Creating a sandbox must say which underlying path is missing, but one
``lstat`` per mapping (what the old Rust sandboxfs did) is the dominant cost
of a 100,000-mapping request.  Build tools map whole toolchains whose files
share directories, and requests carry them grouped by host directory: a group
of a few names gets one ``lstat`` each; a larger group is checked against one
listing of the directory.  Listings are cached and revalidated with one ``stat`` of
the directory (its mtime changes whenever an entry is added or removed), so
creating the same toolchain sandbox again costs one ``stat`` per directory.
A listing is cached only once the directory's mtime is a few seconds old, so
two changes within one timestamp tick cannot hide behind an unchanged mtime.

The node's type is not needed here: it is read with ``lstat`` on first
lookup, when attributes are needed anyway.

Owns: existence checks of host paths.  Reads the host filesystem, never writes.
Pure: no pyfuse3, no trio.
"""

from __future__ import annotations

import os
import time
from typing import Iterable, Iterator, Sequence

from sandboxfs.errors import MappingError, describe_oserror
from sandboxfs.tree.groups import Group
from sandboxfs.tree.mapping import Mapping, display

# A group of this many names under one host directory is checked against a
# listing of the directory instead of one lstat() each.
LISTING_THRESHOLD = 4
_RACY_NS = 3_000_000_000
_MAX_CACHED_LISTINGS = 50_000
# A directory whose names were found in its listing keeps that list of names
# (a toolchain's, sent again with each sandbox): the next check of the same
# list against the same listing is one identity test, not one lookup per name.
_MAX_COVERED = 4


class _Listing:
    """A directory's entry names (at modification time ``mtime``)."""

    __slots__ = ("mtime", "names", "covered")

    def __init__(self, mtime: int, names: frozenset[bytes]) -> None:
        self.mtime = mtime
        self.names = names
        self.covered: list[Sequence[bytes]] = []  # never changed once built (MappingGroup)

    def covers(self, names: Sequence[bytes]) -> bool:
        """Whether every one of ``names`` is an entry."""
        for known in self.covered:
            if known is names:
                return True
        if not self.names.issuperset(names):
            return False
        if len(self.covered) < _MAX_COVERED:
            self.covered.append(names)
        return True


_listings: dict[bytes, _Listing] = {}


def _listing(directory: bytes) -> _Listing | None:
    try:
        mtime = os.stat(directory).st_mtime_ns
        cached = _listings.get(directory)
        if cached is not None and cached.mtime == mtime:
            return cached
        listing = _Listing(mtime, frozenset(os.listdir(directory)))
    except OSError:
        return None  # the per-name lstat says exactly why
    if time.time_ns() - mtime > _RACY_NS:
        if len(_listings) >= _MAX_CACHED_LISTINGS:
            _listings.clear()
        _listings[directory] = listing
    return listing


def _join(directory: bytes, name: bytes) -> bytes:
    return directory + name if directory.endswith(b"/") else directory + b"/" + name


def find_missing(entries: Iterable[tuple[bytes, Sequence[bytes]]]) -> dict[int, str]:
    """Return ``{index: reason}`` for each missing path (lstat semantics).

    ``entries`` are (host directory, names) in request order; indices count
    names across all entries, and entries of one directory share its listing.
    An empty name stands for the directory itself.  A symlink counts as
    existing even when dangling: it is mapped as itself.  A 100,000-mapping
    request has thousands of entries, so each costs a few dict steps.
    """
    # directory -> [name count, index, names, index, names, ...]
    by_directory: dict[bytes, list] = {}
    index = 0
    for directory, names in entries:
        found = by_directory.get(directory)
        if found is None:
            by_directory[directory] = [len(names), index, names]
        else:
            found[0] += len(names)
            found += (index, names)
        index += len(names)

    missing: dict[int, str] = {}
    for directory, found in by_directory.items():
        listing = _listing(directory) if found[0] >= LISTING_THRESHOLD else None
        for at in range(1, len(found), 2):
            base, names = found[at], found[at + 1]
            if listing is not None and listing.covers(names):
                continue
            for offset, name in enumerate(names):
                if listing is not None and name in listing.names:
                    continue
                try:
                    os.lstat(_join(directory, name) if name else directory)
                except OSError as exc:
                    missing[base + offset] = describe_oserror(exc)
    return missing


def split_host_path(path: bytes) -> tuple[bytes, bytes]:
    """(directory, name) of a host path; ("/", "") for the root."""
    directory, _, name = path.rpartition(b"/")
    return directory or b"/", name


Spec = Mapping | Group


def _host_entries(specs: Sequence[Spec]) -> Iterator[tuple[bytes, Sequence[bytes]]]:
    for spec in specs:
        if type(spec) is Group:
            for part in spec.parts:
                yield part.host_dir, part.names
        else:
            directory, name = split_host_path(spec.underlying)
            yield directory, (name,)


def _spec_at(specs: Sequence[Spec], index: int) -> tuple[bytes, bytes]:
    """(path inside, underlying) of the mapping with flat index ``index``."""
    for spec in specs:
        if type(spec) is not Group:
            if index == 0:
                return spec.path, spec.underlying
            index -= 1
            continue
        if index < spec.count:
            for part in spec.parts:
                if index < len(part.names):
                    return part.path(index), _join(part.host_dir, part.names[index])
                index -= len(part.names)
        index -= spec.count
    raise IndexError(index)


def require_underlying(label: str, specs: Sequence[Spec]) -> None:
    """Raise MappingError naming the first mapping whose underlying path is missing."""
    missing = find_missing(_host_entries(specs))
    if missing:
        index = min(missing)
        path, host = _spec_at(specs, index)
        reason = f"underlying path {display(host)} does not exist: {missing[index]}"
        raise MappingError(
            f"{label}: mapping {index} ({display(path)}): {reason}",
            details={"index": index, "path": display(path), "reason": reason,
                     "missing": sorted(missing)[:100]},
        )
