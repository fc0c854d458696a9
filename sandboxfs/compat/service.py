"""The trio service: read the input, translate, apply with N workers, answer."""

from __future__ import annotations

import errno
import logging
import os
import stat
from typing import TYPE_CHECKING, AsyncIterator

import trio

from sandboxfs.compat.common import MAX_RECONFIG_WORKERS, OFF_LOOP_MAPPINGS, STDIO, os_error_text
from sandboxfs.errors import RuntimeFailure, SandboxExistsError, SandboxfsError
from sandboxfs.control.ordering import KeyedOrder
from sandboxfs.control.requests import Map
from sandboxfs.compat.jsondecode import CreateSandbox, StreamDecoder, StreamError, decode_request
from sandboxfs.compat.translate import Job, Translator, error_text, response_line

if TYPE_CHECKING:  # pragma: no cover
    from sandboxfs.control.reconfig import Reconfigurer

log = logging.getLogger(__name__)



class InputSource:
    """Where requests come from: a file descriptor, opened before the mount.

    A FIFO is opened without blocking (so the mount comes up before any
    writer exists) and then waited on: its input begins with the first
    writer and ends when the last writer closes it, as 0.2 (which blocked
    in ``open`` until a writer came) saw it.
    """

    def __init__(self, spec: str) -> None:
        self.spec = spec
        try:
            if spec == STDIO:
                fd = os.dup(0)
            else:
                fd = os.open(spec, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise RuntimeFailure(
                f"Failed to open reconfiguration input '{spec}': {os_error_text(exc)}"
            ) from None
        self._fd: int | None = fd
        self._fifo = stat.S_ISFIFO(os.fstat(fd).st_mode)
        self._stream: trio.lowlevel.FdStream | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        """Yield what arrives; an empty chunk ends the input.  Raises OSError."""
        assert self._fd is not None, "InputSource read twice"
        self._stream, self._fd = trio.lowlevel.FdStream(self._fd), None
        if self._fifo:
            # With no writer yet, read() says EOF at once; epoll waits for one.
            await trio.lowlevel.wait_readable(self._stream.fileno())
        while True:
            try:
                data = await self._stream.receive_some(65536)
            except trio.BrokenResourceError as exc:
                raise OSError(getattr(exc.__cause__, "errno", errno.EIO), str(exc.__cause__ or exc))
            yield data
            if not data:
                return

    def close(self) -> None:
        self._stream = _close(self._stream, self._fd)
        self._fd = None


def _close(stream: trio.lowlevel.FdStream | None, fd: int | None) -> None:
    """Close a stream (which restores its descriptor's blocking mode) or a raw descriptor."""
    if stream is not None:
        try:
            stream.close()
        except RuntimeError:  # outside trio: the run is over, the process is ending
            pass
    if fd is not None:
        os.close(fd)
    return None


class OutputSink:
    """Where responses go: each one written and flushed as a whole line.

    Opened before the mount, without creating or truncating the file (as
    0.2).  A FIFO that has no reader yet is opened when the first response
    is due.  A failed write is logged once and later responses are dropped:
    the filesystem keeps serving.
    """

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self._fd: int | None = None
        try:
            if spec == STDIO:
                self._fd = os.dup(1)
            else:
                self._fd = os.open(spec, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: a FIFO without a reader yet
                raise RuntimeFailure(
                    f"Failed to open reconfiguration output '{spec}': {os_error_text(exc)}"
                ) from None
        self._stream: trio.lowlevel.FdStream | None = None
        self._lock = trio.Lock()
        self._failed = False

    async def _open_stream(self) -> trio.lowlevel.FdStream:
        if self._stream is None:
            if self._fd is None:
                self._fd = await self._wait_for_reader()
            self._stream, self._fd = trio.lowlevel.FdStream(self._fd), None
        return self._stream

    async def _wait_for_reader(self) -> int:
        log.info("waiting for a reader on the reconfiguration output %s", self.spec)
        while True:
            try:
                return os.open(self.spec, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
            await trio.sleep(0.05)

    async def connect(self) -> None:
        """Open a FIFO output as soon as it has a reader (clients may wait for that)."""
        await self.write(b"")

    async def write(self, line: bytes) -> None:
        async with self._lock:
            if self._failed:
                return
            try:
                stream = await self._open_stream()
                if line:
                    await stream.send_all(line)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._failed = True
                log.warning("Failed to write to reconfiguration output %s: %s; "
                            "dropping further responses", self.spec, exc.__cause__ or exc)

    def close(self) -> None:
        self._stream = _close(self._stream, self._fd)
        self._fd = None


class JsonStream:
    """The 0.2 reconfiguration service: runs beside the FUSE loop (``mount.run`` services).

    The reader parses and translates requests in input order; ``workers``
    tasks apply them and answer each as soon as it is done.  With one worker
    requests are applied and answered strictly in order.  With more, a small
    request is applied while a large one is built in a worker thread (each is
    still applied whole: see ``control.reconfig``).  When the input ends (or cannot be
    parsed) the service returns and the mount keeps serving.
    """

    def __init__(self, reconfigurer: "Reconfigurer", source: InputSource, sink: OutputSink,
                 workers: int) -> None:
        self.reconfigurer = reconfigurer
        self.source = source
        self.sink = sink
        self.workers = max(1, min(workers, MAX_RECONFIG_WORKERS))
        self.translator = Translator()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            async with trio.open_nursery() as outer:
                outer.start_soon(self.sink.connect)
                await self._serve()
                outer.cancel_scope.cancel()  # a FIFO output that never got a reader
        finally:  # in trio, which the streams need to close
            self.source.close()
            self.sink.close()

    async def _serve(self) -> None:
        # Jobs go to the workers with their place in the per-id order, taken
        # in input order: a DestroySandbox waits for the CreateSandbox before it.
        self._order = KeyedOrder()
        send, receive = trio.open_memory_channel(0)
        async with trio.open_nursery() as nursery:
            for _ in range(self.workers):
                nursery.start_soon(self._work, receive.clone())
            await receive.aclose()
            async with send:
                fatal = await self._read(send)
        if fatal is not None:  # answered after everything read before it
            await self.sink.write(response_line(None, fatal))
            log.warning("Reconfigurations stopped: %s; the file system keeps serving", fatal)
        else:
            log.info("Reached end of reconfiguration input; file system mappings are now frozen")

    async def _read(self, send: trio.MemorySendChannel) -> str | None:
        """Feed jobs to the workers until the input ends (None) or is unusable (the message)."""
        decoder = StreamDecoder()
        try:
            async for chunk in self.source.chunks():
                values = decoder.feed(chunk) if chunk else decoder.finish()
                for value in values:
                    request = decode_request(value)
                    if isinstance(request, CreateSandbox) and len(request.mappings) > OFF_LOOP_MAPPINGS:
                        job = await trio.to_thread.run_sync(self.translator.translate, request)
                    else:
                        job = self.translator.translate(request)
                    key = job.name if job.error is None else None
                    await send.send((job, key, *self._order.enter(key)))
                decoder.raise_pending()
        except StreamError as exc:
            return exc.message
        except OSError as exc:
            return f"Failed to read reconfiguration input: {os_error_text(exc)}"
        return None

    async def _work(self, receive: trio.MemoryReceiveChannel) -> None:
        async with receive:
            async for job, key, after, done in receive:
                try:
                    if after is not None:
                        await after.wait()
                    error = await self.apply(job)
                    await self.sink.write(response_line(job.id, error))
                finally:
                    self._order.leave(key, done)

    async def apply(self, job: Job) -> str | None:
        """Execute one job; returns None or the error message for its response."""
        if job.error is not None:
            return job.error
        try:
            try:
                await self.reconfigurer.apply(job.request())
            except SandboxExistsError:
                if job.op != "create_sandbox" or job.name not in self.reconfigurer.tree.sandboxes:
                    raise
                # 0.2 adds the mappings of a CreateSandbox for a live id to that sandbox.
                await self.reconfigurer.apply(job.request(Map))
        except SandboxfsError as exc:
            return error_text(exc, job.shown)
        except Exception as exc:  # a bug: answer it, keep serving
            log.exception("request %r failed unexpectedly", job.id)
            return f"internal error: {exc!r}"
        return None
