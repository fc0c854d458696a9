"""Applying control requests: the tree changes, then the kernel forgets what changed.

The ``Reconfigurer`` is what the control server (and the 0.2 compatibility
front end) talks to.  It sees the kernel only through a ``KernelCache``
(one method: invalidate these entries), so it is tested against a recording
fake and used for real with ``ops.KernelCache``.

Large requests are decoded and built off the event loop: a 100,000-mapping
create_sandbox spends ~100 ms in Python, and the loop also serves every FUSE
request of every sandbox.  In a worker thread that work only takes the GIL
in turns (``sys.getswitchinterval()``, 5 ms), so other sandboxes' I/O waits
at most that long per turn.  The sandbox is attached on the loop, in one
step, and the response is sent only after the kernel has dropped its cached
entries, so nothing stale can be read after it.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from collections import Counter
from typing import Any, Callable, Protocol, Sequence

import trio

from . import __version__
from .access import AccessTracker
from .errors import InvalidRequestError, NotFoundError, SandboxfsError
from .gcpause import paused_gc
from .mapping import display
from .protocol import OPS, PROTOCOL_VERSION, PrefixTable, Request, decode_request, name_value
from .tree import Node, Tree, count_mappings, declared_paths, dismantle, require_underlying

log = logging.getLogger(__name__)

# Requests with more mappings than this are decoded and built in a worker thread.
OFF_LOOP_MAPPINGS = 512
# A group whose names take more bytes than this is large without counting them:
# counting the names of a 4 MB group would itself hold the event loop.
LARGE_GROUP_BYTES = 1 << 16


class KernelCache(Protocol):
    async def invalidate(self, entries: Sequence[tuple[Node, bytes]]) -> None:
        """Make the kernel drop its cached (directory, name) entries (positive or negative)."""


class NoKernel:
    """For a tree that is not mounted (tests, dry runs): nothing is cached."""

    async def invalidate(self, entries: Sequence[tuple[Node, bytes]]) -> None:
        return None


def _large(message: Any) -> bool:
    """More than OFF_LOOP_MAPPINGS mappings, counting each name of a group."""
    if not isinstance(message, dict):
        return False
    items = message.get("mappings")
    if not isinstance(items, list):
        return False
    if len(items) > OFF_LOOP_MAPPINGS:
        return True
    total = 0
    for item in items:
        if isinstance(item, list) and len(item) == 4 and isinstance(item[3], list):
            total += len(item[3])
        elif isinstance(item, list) and len(item) == 4 and isinstance(item[3], bytes):
            names = item[3]
            total += (OFF_LOOP_MAPPINGS + 1 if len(names) > LARGE_GROUP_BYTES
                      else names.count(b"\0") + 1)
        else:
            total += 1
    return total > OFF_LOOP_MAPPINGS


class Reconfigurer:
    """Turns decoded request messages into tree changes and answers."""

    def __init__(
        self,
        tree: Tree,
        kernel: KernelCache | None = None,
        fuse_counts: Callable[[], dict[str, int]] | None = None,
        inode_counts: Callable[[], dict[str, int]] | None = None,
        mount_point: str | None = None,
        access: AccessTracker | None = None,
    ) -> None:
        self.tree = tree
        self.access = access if access is not None else AccessTracker()
        self.mount_point = mount_point
        self.kernel = kernel or NoKernel()
        self._fuse_counts = fuse_counts or dict
        self._inode_counts = inode_counts or dict
        self.requests: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.started = time.monotonic()
        self._lock = trio.Lock()  # one change at a time: changes are all-or-nothing

    async def apply(self, message: Any, prefixes: PrefixTable) -> dict:
        """Decode and apply one request message; returns the result map or raises SandboxfsError."""
        op = message.get("op") if isinstance(message, dict) else None
        if op == "create_sandbox" and _large(message):
            try:
                built = await trio.to_thread.run_sync(self._decode_and_build, message, prefixes)
            except SandboxfsError as exc:
                self._count(op, exc)
                raise
            return await self._counted(op, self._attach, built)
        try:
            request = decode_request(message, prefixes)
        except SandboxfsError as exc:
            self._count(str(op), exc)
            raise
        return await self.execute(request)

    async def execute(self, request: Request) -> dict:
        """Apply an already decoded request (the 0.2 JSON front end builds its own)."""
        return await self._counted(request.op, self._dispatch, request)

    async def _counted(self, op: str, action, argument) -> dict:
        try:
            async with self._lock:
                result = await action(argument)
        except SandboxfsError as exc:
            self._count(op, exc)
            raise
        self._count(op)
        return result

    def _count(self, op: str, exc: SandboxfsError | None = None) -> None:
        self.requests[op if op in OPS else "unknown"] += 1
        if exc is not None:
            self.errors[exc.code] += 1

    def _decode_and_build(self, message: Any, prefixes: PrefixTable):
        with paused_gc():
            request = decode_request(message, prefixes)
            return self.tree.build_sandbox(request.name, request.mappings), request.track_access

    async def _attach(self, built) -> dict:
        sandbox, track_access = built
        changed = self.tree.attach_sandbox(sandbox)
        if track_access:  # in the same loop turn: the kernel cannot have looked yet
            self.access.track(sandbox.name)
        await self.kernel.invalidate(changed)
        result = {"name": name_value(sandbox.name), "mappings": sandbox.mapping_count}
        if self.mount_point is not None:
            result["path"] = name_value(os.path.join(os.fsencode(self.mount_point), sandbox.name))
        return result

    async def _dispatch(self, request: Request) -> dict:
        tree = self.tree
        op = request.op
        if op == "create_sandbox":
            sandbox = tree.build_sandbox(request.name, request.mappings)
            return await self._attach((sandbox, request.track_access))
        if op == "destroy_sandbox":
            sandbox = tree.sandboxes.get(request.name)
            changed = tree.destroy_sandbox(request.name)
            log = self.access.untrack(request.name)
            result = {"name": name_value(request.name)}
            if log is not None:
                result["access_report"] = log.report(declared_paths(sandbox.node), name_value)
            await self.kernel.invalidate(changed)
            self._free_detached_later()
            return result
        if op == "access_report":
            return {"name": name_value(request.name), "access_report": self._report(request.name)}
        if op == "map":
            mappings = request.mappings
            count = count_mappings(mappings)
            if count > OFF_LOOP_MAPPINGS:
                await trio.to_thread.run_sync(require_underlying, f"map '{display(request.name)}'", mappings)
                changed = tree.map(request.name, mappings, checked=True)
            else:
                changed = tree.map(request.name, mappings)
            await self.kernel.invalidate(changed)
            return {"name": name_value(request.name), "mapped": count}
        if op == "unmap":
            before = tree.mapping_count
            await self.kernel.invalidate(tree.unmap(request.name, request.paths))
            return {"name": name_value(request.name), "unmapped": before - tree.mapping_count}
        if op == "list":
            return {"sandboxes": [self._listing(s) for s in tree.sandboxes.values()]}
        if op == "stats":
            return self.stats()
        if op == "ping":
            return {
                "protocol": min(request.version, PROTOCOL_VERSION),
                "server_protocol": PROTOCOL_VERSION,
                "server": f"sandboxfs {__version__}",
            }
        raise AssertionError(f"op {op!r} passed decoding but has no handler")  # pragma: no cover

    def _listing(self, sandbox) -> dict:
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
        log = self.access.logs.get(name)
        if log is None:
            raise InvalidRequestError(f"{label}: the sandbox was created without track_access")
        return log.report(declared_paths(sandbox.node), name_value)

    def _free_detached_later(self) -> None:
        """Free destroyed sandboxes after answering, a small step per loop turn."""
        garbage, self.tree.detached = self.tree.detached, []
        if sum(s.mapping_count for s in garbage) < OFF_LOOP_MAPPINGS:
            return  # small: freeing it here costs less than scheduling it
        trio.lowlevel.spawn_system_task(_dismantle_all, [s.node for s in garbage])

    def stats(self) -> dict:
        return {
            "uptime_s": round(time.monotonic() - self.started, 3),
            "requests": dict(self.requests),
            "errors": dict(self.errors),
            "sandboxes": len(self.tree.sandboxes),
            "mappings": self.tree.mapping_count,
            "fuse_ops": dict(self._fuse_counts()),
            **self._inode_counts(),
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
