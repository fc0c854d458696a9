"""Checking that mappings' host paths exist, with as few syscalls as we can.

Creating a sandbox must say which underlying path is missing, but one
``lstat`` per mapping (what the old Rust sandboxfs did) is the dominant cost
of a 100,000-mapping request.  Build tools map whole toolchains whose files
share directories, so paths are grouped by host directory: a group of a few
names gets one ``lstat`` each; a larger group is checked against one listing
of the directory.  Listings are cached and revalidated with one ``stat`` of
the directory (its mtime changes whenever an entry is added or removed), so
creating the same toolchain sandbox again costs one ``stat`` per directory.
A listing is cached only once the directory's mtime is a few seconds old, so
two changes within one timestamp tick cannot hide behind an unchanged mtime.

The node's type is not needed here: it is read with ``lstat`` on first
lookup, when attributes are needed anyway.

Owns: existence checks of host paths.  Reads the host filesystem, never writes.
"""

from __future__ import annotations

import os
import time
from typing import Iterable, Sequence

from .errors import describe_oserror

# A group of this many names under one host directory is checked against a
# listing of the directory instead of one lstat() each.
LISTING_THRESHOLD = 4
_RACY_NS = 3_000_000_000
_MAX_CACHED_LISTINGS = 50_000
_listings: dict[bytes, tuple[int, frozenset[bytes]]] = {}


def _listing(directory: bytes) -> frozenset[bytes] | None:
    try:
        mtime = os.stat(directory).st_mtime_ns
        cached = _listings.get(directory)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        names = frozenset(os.listdir(directory))
    except OSError:
        return None  # the per-name lstat says exactly why
    if time.time_ns() - mtime > _RACY_NS:
        if len(_listings) >= _MAX_CACHED_LISTINGS:
            _listings.clear()
        _listings[directory] = (mtime, names)
    return names


def _join(directory: bytes, name: bytes) -> bytes:
    return directory + name if directory.endswith(b"/") else directory + b"/" + name


def find_missing(entries: Iterable[tuple[bytes, Sequence[bytes]]]) -> dict[int, str]:
    """Return ``{index: reason}`` for each missing path (lstat semantics).

    ``entries`` are (host directory, names) in request order; indices count
    names across all entries.  An empty name stands for the directory itself.
    A symlink counts as existing even when dangling: it is mapped as itself.
    """
    by_directory: dict[bytes, list[tuple[int, Sequence[bytes]]]] = {}
    index = 0
    for directory, names in entries:
        by_directory.setdefault(directory, []).append((index, names))
        index += len(names)

    missing: dict[int, str] = {}
    for directory, parts in by_directory.items():
        count = sum(len(names) for _, names in parts)
        listing = _listing(directory) if count >= LISTING_THRESHOLD else None
        for base, names in parts:
            if listing is not None and listing.issuperset(names):
                continue
            for offset, name in enumerate(names):
                if listing is not None and name in listing:
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
