"""Applying control requests: the tree changes, then the kernel forgets what changed.

The ``Reconfigurer`` is what the control server (and the 0.2 compatibility
front end) talks to.  It has one handler per op of ``requests.OPS``, named
after the op.  It sees the kernel only through a ``KernelCache`` (one method:
invalidate these entries), so it is tested against a recording fake and used
for real with ``fs.kernel_cache.KernelCache``.

Large requests are checked and built off the event loop: a 100,000-mapping
create_sandbox spends tens of milliseconds in Python, and the loop also
serves every FUSE request of every sandbox.  In a worker thread that work
only takes the GIL in turns (``sys.getswitchinterval()``, 5 ms), so other
sandboxes' I/O waits at most that long per turn.  The sandbox is attached
on the loop, in one step, and the response is sent only after the kernel has
dropped its cached entries, so nothing stale can be read after it.

Requests run concurrently (the control server overtakes a large request with
the small ones sent after it; the 0.2 front end runs ``--reconfig_threads``
workers), and there is no lock: each handler changes the tree in one
synchronous step on the loop, after every await, re-checking there what the
change needs (the name still free, the sandbox still there).  So each request
is all or nothing, and requests apply in some serial order.  Large builds take
turns in one worker thread (``_builder``): two at once would only split the
GIL between them.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from collections import Counter
from typing import Any, Callable, Protocol, Sequence

import trio

from sandboxfs import __version__
from sandboxfs.control.protocol import PrefixTable, decode_request, name_value, ping_result
from sandboxfs.control.requests import (
    OPS, AccessReport, CreateSandbox, DestroySandbox, ListSandboxes, Map, Ping, Stats, Unmap,
)
from sandboxfs.errors import InvalidRequestError, NotFoundError, SandboxfsError
from sandboxfs.fs.access import AccessTracker
from sandboxfs.gcpause import paused_gc
from sandboxfs.tree.existence import require_underlying
from sandboxfs.tree.groups import Group, GroupStore
from sandboxfs.tree.mapping import display
from sandboxfs.tree.nodes import Node
from sandboxfs.tree.sandboxes import Sandbox, Tree, declared_paths, dismantle

log = logging.getLogger(__name__)

# Requests with more mappings than this are checked and built in a worker thread.
OFF_LOOP_MAPPINGS = 512


class KernelCache(Protocol):
    async def invalidate(self, entries: Sequence[tuple[Node, bytes]]) -> None:
        """Make the kernel drop its cached (directory, name) entries (positive or negative)."""


class NoKernel:
    """For a tree that is not mounted (tests, dry runs): nothing is cached."""

    async def invalidate(self, entries: Sequence[tuple[Node, bytes]]) -> None:
        return None




class Reconfigurer:
    """Turns requests into tree changes and answers."""

    def __init__(
        self,
        tree: Tree,
        kernel: KernelCache | None = None,
        fuse_counts: Callable[[], dict[str, int]] | None = None,
        inode_counts: Callable[[], dict[str, int]] | None = None,
        mount_point: str | None = None,
        access: AccessTracker | None = None,
        groups: GroupStore | None = None,
    ) -> None:
        self.tree = tree
        self.access = access if access is not None else AccessTracker()
        self.groups = groups if groups is not None else GroupStore()
        self.mount_point = mount_point
        self.kernel = kernel or NoKernel()
        self._fuse_counts = fuse_counts or dict
        self._inode_counts = inode_counts or dict
        self.requests: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.started = time.monotonic()
        self._builder = trio.CapacityLimiter(1)

    async def decode(self, message: Any, prefixes: PrefixTable, large: bool = False):
        """The request object of one message (decoded in a worker thread when ``large``);
        a bad message's error is counted and raised."""
        op = message.get("op") if isinstance(message, dict) else None
        try:
            if large:
                with paused_gc():
                    request = await trio.to_thread.run_sync(
                        decode_request, message, prefixes, self.groups)
            else:
                request = decode_request(message, prefixes, self.groups)
        except SandboxfsError as exc:
            self._count(str(op), exc)
            raise
        return request

    async def apply(self, request) -> dict:
        """Apply a decoded request (the 0.2 JSON front end builds its own)."""
        try:
            result = await getattr(self, request.op)(request)
        except SandboxfsError as exc:
            self._count(request.op, exc)
            raise
        self._count(request.op)
        return result

    def _count(self, op: str, exc: SandboxfsError | None = None) -> None:
        self.requests[op if op in OPS else "unknown"] += 1
        if exc is not None:
            self.errors[exc.code] += 1

    # -- the handlers, one per op ------------------------------------------------------

    async def ping(self, request: Ping) -> dict:
        return ping_result(request, f"sandboxfs {__version__}")

    async def create_sandbox(self, request: CreateSandbox) -> dict:
        if request.mapping_count > OFF_LOOP_MAPPINGS:
            sandbox = await trio.to_thread.run_sync(self._check_and_build, request,
                                                    limiter=self._builder)
        else:
            sandbox = self._check_and_build(request)
        changed = self.tree.attach_sandbox(sandbox)  # checks again that the name is free
        if request.track_access:  # in the same loop turn: the kernel cannot have looked yet
            self.access.track(sandbox.name)
        await self.kernel.invalidate(changed)
        result = self._with_groups({"name": name_value(sandbox.name),
                                    "mappings": sandbox.mapping_count}, request.mappings)
        if self.mount_point is not None:
            result["path"] = name_value(os.path.join(os.fsencode(self.mount_point), sandbox.name))
        return result

    def _check_and_build(self, request: CreateSandbox) -> Sandbox:
        with paused_gc():  # building allocates per mapping: no collection is worth it
            raw = self.tree.new_sandbox_name(request.name)  # a taken name is answered first
            require_underlying(f"create_sandbox '{display(raw)}'", request.mappings)
            return self.tree.build_sandbox(raw, request.mappings)

    async def destroy_sandbox(self, request: DestroySandbox) -> dict:
        sandbox = self.tree.sandboxes.get(request.name)
        changed = self.tree.destroy_sandbox(request.name)
        access_log = self.access.untrack(request.name)
        result = {"name": name_value(request.name)}
        if access_log is not None:
            result["access_report"] = access_log.report(declared_paths(sandbox.node), name_value)
        await self.kernel.invalidate(changed)
        self._free_detached_later()
        return result

    async def access_report(self, request: AccessReport) -> dict:
        return {"name": name_value(request.name), "access_report": self._report(request.name)}

    async def map(self, request: Map) -> dict:
        label = f"map '{display(request.name)}'"
        if request.mapping_count > OFF_LOOP_MAPPINGS:
            await trio.to_thread.run_sync(require_underlying, label, request.mappings,
                                          limiter=self._builder)
        else:
            require_underlying(label, request.mappings)
        await self.kernel.invalidate(self.tree.insert_mappings(request.name, request.mappings))
        return self._with_groups({"name": name_value(request.name),
                                  "mapped": request.mapping_count}, request.mappings)

    async def unmap(self, request: Unmap) -> dict:
        before = self.tree.mapping_count
        await self.kernel.invalidate(self.tree.unmap(request.name, request.paths))
        return {"name": name_value(request.name), "unmapped": before - self.tree.mapping_count}

    async def list(self, request: ListSandboxes) -> dict:
        return {"sandboxes": [self._listing(s) for s in self.tree.sandboxes.values()]}

    async def stats(self, request: Stats) -> dict:
        return self.stats_now()

    # -- helpers -----------------------------------------------------------------------

    def _with_groups(self, result: dict, specs) -> dict:
        """Name in a result the request's groups the server now holds (protocol version 2):
        later requests may name them by digest."""
        holds = self.groups.holds
        digests = [spec.digest for spec in specs if type(spec) is Group and holds(spec.digest)]
        if digests:
            result["groups"] = digests
        return result

    def _listing(self, sandbox: Sandbox) -> dict:
        entry = {"name": name_value(sandbox.name), "mappings": sandbox.mapping_count}
        if sandbox.name in self.access.logs:
            entry["track_access"] = True
        return entry

    def _report(self, name: bytes) -> dict:
        """The access report of live sandbox ``name`` so far."""
        label = f"access_report '{display(name)}'"
        sandbox = self.tree.sandboxes.get(name)
        if sandbox is None:
            raise NotFoundError(f"{label}: no such sandbox")
        access_log = self.access.logs.get(name)
        if access_log is None:
            raise InvalidRequestError(f"{label}: the sandbox was created without track_access")
        return access_log.report(declared_paths(sandbox.node), name_value)

    def _free_detached_later(self) -> None:
        """Free destroyed sandboxes after answering, a small step per loop turn."""
        garbage, self.tree.detached = self.tree.detached, []
        if sum(s.mapping_count for s in garbage) < OFF_LOOP_MAPPINGS:
            return  # small: freeing it here costs less than scheduling it
        trio.lowlevel.spawn_system_task(_dismantle_all, [s.node for s in garbage])

    def stats_now(self) -> dict:
        return {
            "uptime_s": round(time.monotonic() - self.started, 3),
            "requests": dict(self.requests),
            "errors": dict(self.errors),
            "sandboxes": len(self.tree.sandboxes),
            "mappings": self.tree.mapping_count,
            "fuse_ops": dict(self._fuse_counts()),
            **self._inode_counts(),
            **self.groups.stats(),
            "rss_bytes": _rss_bytes(),
            "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        }


async def _dismantle_all(nodes: list[Node]) -> None:
    for node in nodes:
        for _ in dismantle(node):
            await trio.sleep(0)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
