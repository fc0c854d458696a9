"""Open O_PATH descriptors of the found directories in use, so that a name in
one is reached with one ``*at`` syscall.

Reaching ``mapping/a/b/name`` safely (``host_entries.open_below``) opens the
mapping root, resolves ``a/b`` with ``openat2(RESOLVE_NO_SYMLINKS)`` and
closes both again: five syscalls and a ctypes call, most of a LOOKUP's cost.
A directory's fd, once opened that way, stays as safe as it was (it is the
directory, not a path), so the fds of the directories in use are kept,
least recently used first out, at most ``LIMIT`` of them.

The fd names the directory that was found, as a process's working directory
does: when the host renames or replaces it, the kernel's next lookup of its
name gets a new node (``HostNode.found`` compares inode numbers), hence a new
fd.  A node cut loose (unlinked, replaced, forgotten) gives its fd back.

Only the event loop's thread uses these fds (every tree access is on it), so
an fd is never closed under a call in another thread.  One operation uses at
most two directories (rename), and the one just fetched is the most recent,
so eviction never closes an fd in use.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # pragma: no cover
    from sandboxfs.tree.nodes import FoundNode

LIMIT = 4096


class DirFds:
    """Up to ``limit`` kept directory fds, keyed by node."""

    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self._fds: OrderedDict[FoundNode, int] = OrderedDict()

    def get(self, node: "FoundNode", open_dir: Callable[[], int]) -> int:
        """The node's kept fd, opened with ``open_dir()`` the first time."""
        fds = self._fds
        fd = fds.get(node)
        if fd is not None:
            fds.move_to_end(node)
            return fd
        fd = fds[node] = open_dir()
        if len(fds) > self.limit:
            os.close(fds.popitem(last=False)[1])
        return fd

    def discard(self, node: "FoundNode") -> None:
        fd = self._fds.pop(node, None)
        if fd is not None:
            os.close(fd)

    def __len__(self) -> int:
        return len(self._fds)


DIR_FDS = DirFds()
