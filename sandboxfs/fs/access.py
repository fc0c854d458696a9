"""Access reports: what an action really touched in its sandbox.

A sandbox created with ``track_access`` gets an ``AccessLog``: for each path
inside it (relative to the sandbox, as bytes), the kinds of access the kernel
asked for -- looked up, listed, opened for reading, read, written, created,
removed -- and every name looked up that did not exist.  The report derived
from it also names the declared mappings that were never used, the
over-declared inputs that cost a build tool cache hits.

The kernel speaks in inode numbers, so the ``AccessTracker`` remembers, for
inodes of tracked sandboxes only, which log and path each stands for.  It
learns them from entry replies (lookup, readdirplus, create...), which always
come before any use of an inode.  Untracked sandboxes pay one truthiness test
of an empty dict per request.

We need the *set* of accesses, not counts, so kernel caching is fine as long
as the first access reaches us; ``ops`` answers readdirplus entries of
tracked sandboxes with an entry timeout of 0 so that a name first seen in a
listing is still looked up when it is used (docs/access.md).

Pure: no pyfuse3, no trio.
"""

from __future__ import annotations

from typing import Iterable

ROOT_INODE = 1

LOOKUP = 1
LIST = 2
OPEN = 4
READ = 8
WRITE = 16
CREATE = 32
REMOVE = 64

KINDS = (
    (LOOKUP, "lookup"),
    (LIST, "list"),
    (OPEN, "open"),
    (READ, "read"),
    (WRITE, "write"),
    (CREATE, "create"),
    (REMOVE, "remove"),
)
# Accesses that make a declared input "used": looking a name up alone does not
# (a compiler probes include directories by name), opening or listing it does.
USED = LIST | OPEN | READ | WRITE | CREATE | REMOVE


def join(base: bytes, name: bytes) -> bytes:
    """The path of ``name`` inside directory ``base`` (b"" is the sandbox root)."""
    return base + b"/" + name if base else name


class AccessLog:
    """The accesses recorded for one sandbox."""

    __slots__ = ("paths", "missing", "inodes")

    def __init__(self) -> None:
        self.paths: dict[bytes, int] = {}  # path -> OR of the kinds above
        self.missing: set[bytes] = set()
        self.inodes: set[int] = set()  # the tracker's entries for this sandbox

    def note(self, path: bytes, kinds: int) -> None:
        if path:  # the sandbox root itself: used whenever anything below it is
            paths = self.paths
            paths[path] = paths.get(path, 0) | kinds

    def report(self, declared: Iterable[bytes], name_value) -> dict:
        """The report as a msgpack-ready map; ``name_value`` turns bytes into str when UTF-8.

        ``accessed`` maps each path to its kinds; ``missing`` lists the names
        looked up but absent (and not created later); ``unused`` lists declared mappings that neither
        they nor anything below them was opened, read, listed or changed.
        """
        used: set[bytes] = set()
        for path, kinds in self.paths.items():
            if kinds & USED:
                while path not in used:
                    used.add(path)
                    path = path.rpartition(b"/")[0]
        return {
            "accessed": {
                name_value(path): [label for bit, label in KINDS if kinds & bit]
                for path, kinds in sorted(self.paths.items())
            },
            # A name looked up before the action created it is an output, not a missing input.
            "missing": [
                name_value(path)
                for path in sorted(self.missing)
                if not self.paths.get(path, 0) & CREATE
            ],
            "unused": [name_value(path) for path in sorted(declared) if path not in used],
        }


class AccessTracker:
    """Inode numbers of tracked sandboxes -> (their log, their path in the sandbox)."""

    __slots__ = ("logs", "at")

    def __init__(self) -> None:
        self.logs: dict[bytes, AccessLog] = {}  # sandbox name -> its log
        self.at: dict[int, tuple[AccessLog, bytes]] = {}

    def __bool__(self) -> bool:
        return bool(self.logs)

    def track(self, sandbox: bytes) -> AccessLog:
        log = self.logs[sandbox] = AccessLog()
        return log

    def untrack(self, sandbox: bytes) -> AccessLog | None:
        """Stop tracking ``sandbox``; returns its log (None if it was not tracked)."""
        log = self.logs.pop(sandbox, None)
        if log is not None:
            for ino in log.inodes:
                self.at.pop(ino, None)
        return log

    def child(self, parent_ino: int, name: bytes) -> tuple[AccessLog, bytes] | None:
        """The log and path of ``name`` in directory ``parent_ino``, if it is tracked."""
        if parent_ino == ROOT_INODE:
            log = self.logs.get(name)
            return (log, b"") if log is not None else None
        found = self.at.get(parent_ino)
        if found is None:
            return None
        return found[0], join(found[1], name)

    def entry(self, parent_ino: int, name: bytes, ino: int, kinds: int = 0) -> bool:
        """The kernel learned ``name`` as inode ``ino``; True if it is in a tracked sandbox."""
        found = self.child(parent_ino, name)
        if found is None:
            return False
        log, path = found
        self.at[ino] = found
        log.inodes.add(ino)
        if kinds:
            log.note(path, kinds)
        return True

    def missing(self, parent_ino: int, name: bytes) -> None:
        """A lookup of ``name`` in ``parent_ino`` found nothing."""
        found = self.child(parent_ino, name)
        if found is not None and found[1]:  # a miss at the mount root is no sandbox's
            found[0].missing.add(found[1])

    def note(self, ino: int, kinds: int) -> None:
        found = self.at.get(ino)
        if found is not None:
            found[0].note(found[1], kinds)

    def note_child(self, parent_ino: int, name: bytes, kinds: int) -> None:
        found = self.child(parent_ino, name)
        if found is not None:
            found[0].note(found[1], kinds)

    def moved(self, ino: int, parent_ino: int, name: bytes) -> None:
        """Inode ``ino`` was renamed to ``name`` in ``parent_ino``."""
        found = self.child(parent_ino, name)
        if found is not None and ino in self.at:
            self.at[ino] = found
