"""Checking that mappings' host paths exist, with as few syscalls as we can.

Creating a sandbox must say which underlying path is missing, but one
``lstat`` per mapping (what the old Rust sandboxfs did) is the dominant cost
of a 100,000-mapping request.  Build tools map whole toolchains whose files
share directories, so we group paths by their host parent directory: a group
of a few paths gets one ``lstat`` each, a larger group one ``listdir`` of the
parent, which answers for all of them at once.  The node's type is not needed
here: it is read with ``lstat`` on first lookup, when attributes are needed
anyway.

Owns: existence checks of host paths.  Touches nothing but the host
filesystem, read-only.
"""

from __future__ import annotations

import os
from typing import Sequence

from .errors import describe_oserror

# A group of this many paths under one host directory is checked with one
# listdir() of the directory instead of one lstat() each.
LISTDIR_THRESHOLD = 4


def find_missing(paths: Sequence[bytes]) -> dict[int, str]:
    """Return ``{index: reason}`` for each path that does not exist (lstat semantics).

    An empty result means every path exists.  A symlink counts as existing
    even when dangling: it is mapped as the symlink itself.
    """
    groups: dict[bytes, list[tuple[int, bytes]]] = {}
    for index, path in enumerate(paths):
        parent, _, name = path.rpartition(b"/")
        if not name:  # "/" itself
            continue
        groups.setdefault(parent or b"/", []).append((index, name))

    missing: dict[int, str] = {}
    for parent, members in groups.items():
        names = None
        if len(members) >= LISTDIR_THRESHOLD:
            try:
                names = set(os.listdir(parent))
            except OSError:
                names = None  # fall back to per-path lstat for an exact reason
        for index, name in members:
            if names is not None and name in names:
                continue
            try:
                os.lstat(paths[index])
            except OSError as exc:
                missing[index] = describe_oserror(exc)
    return missing
