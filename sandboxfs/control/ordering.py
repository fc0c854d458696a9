"""Requests about the same sandbox apply in the order they were sent.

Both front ends run requests concurrently (the control server beside each
connection's reader, the 0.2 stream on ``--reconfig_threads`` workers), so a
``destroy`` pipelined right behind its ``create`` could otherwise overtake
it.  Each request enters under its sandbox's key before it is handed on, in
input order; one that finds an earlier request of the same key in flight
waits for it to leave.
"""

from __future__ import annotations

from typing import Hashable

import trio


class KeyedOrder:
    """The last request in flight per key: later ones of that key wait for it."""

    def __init__(self) -> None:
        self._last: dict[Hashable, trio.Event] = {}

    def busy(self, key: Hashable | None) -> bool:
        return key is not None and key in self._last

    def enter(self, key: Hashable | None) -> tuple[trio.Event | None, trio.Event]:
        """(the event to wait for first, or None; this request's own event). Call in input order."""
        done = trio.Event()
        if key is None:
            return None, done
        before = self._last.get(key)
        self._last[key] = done
        return before, done

    def leave(self, key: Hashable | None, done: trio.Event) -> None:
        """This request is over (answered or failed): the next one of its key may run."""
        done.set()
        if key is not None and self._last.get(key) is done:
            del self._last[key]
