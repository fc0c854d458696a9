"""The protocol loop of ``sandboxfs serve``: requests from stdin, responses on stdout.

Runs beside the FUSE loop (a ``mount.run`` service).  The reader takes
frames in order.  Negotiate is answered at once; a Push is applied before
the next frame is read (it has no response, and a later request may need
it); Create, Destroy and Collect run as tasks, so responses leave in the
order requests finish, while requests about one sandbox still apply in the
order they were sent (``control.ordering``).  A response leaves only after
the kernel has forgotten the entries the change made wrong.

A message that is not a Request is logged and skipped (it has no rid to
answer).  A frame that breaks the stream (a length over the limit, or the
input ending inside a frame) ends the service after the requests in flight
are answered, with exit status 2; the end of the input ends it with 0.
Either way the mount is then unmounted.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import Counter
from typing import Callable

import trio
from google.protobuf.message import DecodeError

from sandboxfs.backend.merkle import DirectoryStore
from sandboxfs.backend.proto import sandbox_pb2 as pb
from sandboxfs.backend.slots import Slots
from sandboxfs.backend.store import ContentStore
from sandboxfs.backend.wire import DelimitedReader, encode
from sandboxfs.control.ordering import KeyedOrder
from sandboxfs.errors import InvalidRequestError, ProtocolError, SandboxfsError
from sandboxfs.mount import ServiceDone

log = logging.getLogger(__name__)

EXIT_BROKEN_STREAM = 2
# Inline content up to this size is hashed and written on the loop; bigger, in a thread
# (hashing 100 MB would stall every sandbox's FUSE requests for a tenth of a second).
INLINE_ON_LOOP = 256 * 1024
_SIZE_SUFFIXES = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """``123``, ``64k``, ``512M``, ``2G`` as bytes (ValueError otherwise)."""
    body = text.strip().lower().removesuffix("b").removesuffix("i")
    suffix = body[-1:] if body[-1:] in _SIZE_SUFFIXES else ""
    number = body[:-1] if suffix else body
    value = int(number) * _SIZE_SUFFIXES[suffix]
    if value < 0:
        raise ValueError(text)
    return value


class BackendService:
    """One protocol stream over a mounted tree (see the module docstring)."""

    def __init__(self, slots: Slots, directories: DirectoryStore, store: ContentStore,
                 invalidate: Callable, *, input_fd: int = 0, output_fd: int = 1,
                 max_message_size: int | None = None) -> None:
        self.slots = slots
        self.directories = directories
        self.store = store
        self.invalidate = invalidate
        self.input_fd = input_fd
        self.output_fd = output_fd
        self.reader = DelimitedReader(max_message_size) if max_message_size else DelimitedReader()
        self.order = KeyedOrder()
        self.counts: Counter[str] = Counter()
        self.status = 0
        self._send_lock = trio.Lock()
        self._output: trio.lowlevel.FdStream | None = None
        self._output_failed = False

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        input_stream = trio.lowlevel.FdStream(os.dup(self.input_fd))
        self._output = trio.lowlevel.FdStream(os.dup(self.output_fd))
        try:
            async with trio.open_nursery() as nursery:
                await self._read(input_stream, nursery)
        finally:
            input_stream.close()
            self._output.close()
        log.info("protocol input ended (requests %s; sandboxes %s; store %s); unmounting",
                 dict(self.counts), self.slots.stats(), self.store.stats())
        raise ServiceDone()  # mount.run unmounts; ``status`` says how the stream ended

    async def _read(self, stream: trio.lowlevel.FdStream, nursery: trio.Nursery) -> None:
        index = 0
        while True:
            try:
                data = await stream.receive_some(1 << 20)
            except (trio.BrokenResourceError, OSError) as exc:
                log.error("cannot read the protocol input: %s", exc)
                self.status = EXIT_BROKEN_STREAM
                return
            try:
                bodies = self.reader.feed(data) if data else self.reader.finish() or []
            except ProtocolError as exc:
                log.error("protocol input unusable, no further requests are read: %s", exc.message)
                self.status = EXIT_BROKEN_STREAM
                return
            for body in bodies:
                index += 1
                await self._dispatch(index, body, nursery)
            if not data:
                return
            if bodies:
                try:  # a broken frame after good ones in this chunk: say so now, not at next read
                    self.reader.feed(b"")
                except ProtocolError as exc:
                    log.error("protocol input unusable, no further requests are read: %s",
                              exc.message)
                    self.status = EXIT_BROKEN_STREAM
                    return

    async def _dispatch(self, index: int, body: bytes, nursery: trio.Nursery) -> None:
        try:
            request = pb.Request.FromString(body)
        except DecodeError as exc:
            self.counts["undecodable"] += 1
            log.error("message %d (%d bytes) is not a bazel.sandbox.Request (%s); skipped: "
                      "it has no rid to answer", index, len(body), exc)
            return
        op = request.WhichOneof("op")
        self.counts[op or "none"] += 1
        if op == "push":
            await self._push(index, request.push)
        elif op == "negotiate":
            await self._send(self._negotiate(request))
        elif op in ("create", "destroy", "collect"):
            key = request.sandbox_id
            after, done = self.order.enter(key)
            nursery.start_soon(self._sandbox_op, op, request, key, after, done)
        else:
            log.error("request rid %d (message %d) has no known op; skipped", request.rid, index)

    # -- the ops --------------------------------------------------------------------------

    def _negotiate(self, request: pb.Request) -> pb.Response:
        result = pb.Negotiate.Result()
        try:
            for option in request.negotiate.options:
                self._apply_option(option)
            if pb.VERSION_1 not in request.negotiate.versions:
                raise InvalidRequestError(
                    "Negotiate: no protocol version in common (offered "
                    f"{list(request.negotiate.versions)}; this backend speaks VERSION_1)")
            result.ok.version = pb.VERSION_1
        except SandboxfsError as exc:
            result.error.message = exc.message
        return pb.Response(rid=request.rid, negotiate=result)

    def _apply_option(self, option: str) -> None:
        name, equals, value = option.partition("=")
        try:
            if name == "store_budget" and equals:
                self.store.budget_bytes = parse_size(value)
                return
            if name == "max_idle_slots" and equals and int(value) >= 0:
                self.slots.max_idle = int(value)
                return
        except ValueError:
            pass
        raise InvalidRequestError(
            f"Negotiate: option {option!r} is not understood (known: store_budget=SIZE, "
            "max_idle_slots=N)")

    async def _push(self, index: int, push: pb.Push) -> None:
        for error in self.directories.add_blobs(dict(push.blobs)):
            self.counts["refused_blobs"] += 1
            log.error("Push (message %d): %s", index, error.message)
        captures = []
        for digest, content in push.content.items():
            single_use = content.retention == pb.RETENTION_SINGLE_USE
            source = content.WhichOneof("source")
            try:
                if source == "inline" and len(content.inline) <= INLINE_ON_LOOP:
                    self.store.put_inline(digest, content.inline, single_use=single_use)
                elif source in ("inline", "location"):
                    captures.append((digest, content, single_use))
                else:
                    raise InvalidRequestError(f"content {digest}: neither inline nor location")
            except SandboxfsError as exc:
                self.counts["refused_content"] += 1
                log.error("Push (message %d): %s", index, exc.message)
        if captures:  # now: a location holds the pushed bytes only at the moment of the Push
            for message in await trio.to_thread.run_sync(self._capture_all, captures):
                self.counts["refused_content"] += 1
                log.error("Push (message %d): %s", index, message)

    def _capture_all(self, captures: list) -> list[str]:
        errors = []
        for digest, content, single_use in captures:
            try:
                if content.WhichOneof("source") == "inline":
                    self.store.put_inline(digest, content.inline, single_use=single_use)
                else:
                    self.store.capture(digest, content.location, single_use=single_use)
            except SandboxfsError as exc:
                errors.append(exc.message)
        return errors

    async def _sandbox_op(self, op: str, request: pb.Request, key: str,
                          after: trio.Event | None, done: trio.Event) -> None:
        try:
            if after is not None:
                await after.wait()
            response = pb.Response(rid=request.rid)
            result = getattr(response, op)
            try:
                await getattr(self, "_" + op)(request, result)
            except SandboxfsError as exc:
                self.counts["errors"] += 1
                result.Clear()
                result.error.message = exc.message
            except Exception as exc:  # a bug: answer it, keep serving
                log.exception("rid %d (%s %r) failed unexpectedly", request.rid, op, key)
                result.Clear()
                result.error.message = f"internal error in {op}: {exc!r}"
            await self._send(response)
        finally:
            self.order.leave(key, done)

    async def _create(self, request: pb.Request, result: pb.Create.Result) -> None:
        outcome, value, changed = self.slots.create(request.sandbox_id, request.create.manifest)
        if outcome == "missing":
            self.counts["missing_content"] += 1
            result.missing_content.digest_hashes.extend(value)
            return
        await self.invalidate(changed)
        result.ok.path = value

    async def _destroy(self, request: pb.Request, result: pb.Destroy.Result) -> None:
        changed, trash = self.slots.destroy(request.sandbox_id)
        await self.invalidate(changed)
        result.ok.SetInParent()
        if trash:
            trio.lowlevel.spawn_system_task(trio.to_thread.run_sync, _remove_tree, trash)

    async def _collect(self, request: pb.Request, result: pb.Collect.Result) -> None:
        absent = await trio.to_thread.run_sync(self.slots.collect, request.sandbox_id,
                                               request.collect.exec_root)
        if absent:
            log.info("Collect %r: outputs not produced: %s", request.sandbox_id, absent)
        result.ok.SetInParent()

    async def _send(self, response: pb.Response) -> None:
        frame = encode(response.SerializeToString())
        async with self._send_lock:
            if self._output_failed:
                return
            try:
                await self._output.send_all(frame)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._output_failed = True
                log.error("cannot write responses (%s); later responses are dropped", exc)


def _remove_tree(path: bytes) -> None:
    shutil.rmtree(path, ignore_errors=True)
