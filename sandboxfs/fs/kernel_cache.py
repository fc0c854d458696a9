"""``KernelCache``: the tree's changes told to the kernel, through a transport's notifier.

Its own module so that ``Operations`` (the requests) and the invalidation
that reconfiguration needs (``control.reconfig``) stay apart.
"""

from __future__ import annotations

from typing import Any

from sandboxfs.tree.nodes import Node


class KernelCache:
    """Tells the kernel to drop cached entries after the tree changed (through a transport).

    Entries under a directory the kernel does not know need no invalidation
    and are skipped; the transport's notifier does the rest off its loop.
    """

    def __init__(self, notifier: Any) -> None:
        self.notifier = notifier

    async def invalidate(self, entries: list[tuple[Node, bytes]]) -> None:
        targets = [(parent.ino, name) for parent, name in entries if parent.ino and parent.lookups]
        if targets:
            await self.notifier.invalidate_entries(targets)
