"""The control server: a Unix stream socket that accepts, decodes, applies and answers.

Each connection is served by its own task: bytes go through a
``framing.MessageReader``, each whole message through the ``Reconfigurer``,
and each answer goes back with the request's id, so clients may pipeline.
Small requests are applied and answered in the order sent.  A large one (more
than ``OFF_LOOP_MAPPINGS`` mappings, or a message of over a megabyte) is
applied beside the reader, so the small requests sent after it overtake it
and are answered first; a later request that names the same sandbox waits for
it, so one connection's changes to one sandbox apply in the order sent.  A
well-framed bad request gets an error answer and the connection stays usable;
undecodable bytes get one error answer (id nil) and close that connection only.

The socket file is created mode 0600 and removed on exit; peers are checked
with SO_PEERCRED (the mounting uid, root, and ``--control-allow-uid`` uids).
A socket file left by a crashed instance is replaced; one with a live server
behind it is not.

On shutdown, requests in flight get ``grace`` seconds to finish, then their
connections are closed.

Idle connections cost nothing and may stay open for ever (build tools keep
one per worker).  A connection that stalls *inside* a message (half a
request, then nothing) or stops reading its answers is closed after
``stall_timeout`` seconds, with a ``timeout`` error when one can be sent.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import stat
import struct
from functools import partial
from typing import Any, Awaitable, Callable, Iterable

import trio

from sandboxfs.control.framing import DEFAULT_MAX_MESSAGE_SIZE, MessageReader, encode
from sandboxfs.control.protocol import PrefixTable, error, error_from, ok, request_id
from sandboxfs.control.ordering import KeyedOrder
from sandboxfs.control.reconfig import OFF_LOOP_MAPPINGS, Reconfigurer
from sandboxfs.control.unix_path import socket_address
from sandboxfs.errors import ControlError, ProtocolError, SandboxfsError, describe_oserror

log = logging.getLogger(__name__)

RECEIVE_SIZE = 1 << 20
# Decoding more buffered bytes than this moves to a worker thread.
OFF_LOOP_BYTES = 1 << 20


def _stale(path: str) -> bool:
    """True if ``path`` is a socket nobody listens on (a crashed instance's leftover)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        with socket_address(path) as address:
            probe.connect(address)
    except (ConnectionRefusedError, FileNotFoundError):
        return True
    except OSError:
        return False
    finally:
        probe.close()
    return False


def bind_control_socket(path: str, shared: bool = False) -> socket.socket:
    """Create the listening socket file, replacing a stale one.

    Mode 0600; 0666 when ``shared`` (other uids were allowed with
    ``--control-allow-uid``: SO_PEERCRED then decides who is served).
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ControlError(f"control socket {path}: {describe_oserror(exc)}") from None
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlError(f"control socket {path}: exists and is not a socket")
        if not _stale(path):
            raise ControlError(f"control socket {path}: another sandboxfs is listening on it")
        log.warning("removing stale control socket %s left by a crashed instance", path)
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        with socket_address(path) as address:
            sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ControlError(f"control socket {path}: {describe_oserror(exc)}") from None
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o666 if shared else 0o600)
    sock.listen(128)
    return sock


def remove_socket_file(path: str, identity: os.stat_result) -> None:
    """Remove our socket file, unless another instance has replaced it meanwhile."""
    try:
        st = os.stat(path)
        if (st.st_dev, st.st_ino) == (identity.st_dev, identity.st_ino):
            os.unlink(path)
    except OSError:
        pass


def peer_uid(sock) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


class ControlServer:
    """Serves the control protocol for one Reconfigurer."""

    def __init__(
        self,
        reconfigurer: Reconfigurer,
        *,
        path: str | None = None,
        sock: socket.socket | None = None,
        allow_uids: Iterable[int] = (),
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        grace: float = 5.0,
        stall_timeout: float = 30.0,
    ) -> None:
        self.reconfigurer = reconfigurer
        self.path = path
        self._sock = sock
        self.allowed_uids = {os.getuid(), 0, *allow_uids}
        self.max_message_size = max_message_size
        self.grace = grace
        self.stall_timeout = stall_timeout
        self._in_flight: set[trio.CancelScope] = set()
        self._shutdown_deadline = math.inf  # set once shutdown starts
        self.connections = 0

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Accept connections until cancelled; then drain in-flight requests and clean up."""
        identity = None
        if self._sock is None:  # otherwise whoever bound the socket removes it
            assert self.path is not None
            self._sock = bind_control_socket(self.path)
            identity = os.stat(self.path)
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(self._sock))
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._grace_on_cancel)
                await nursery.start(trio.serve_listeners, self._serve_socket, [listener])
                task_status.started()
        finally:
            if identity is not None:
                remove_socket_file(self.path, identity)

    async def _grace_on_cancel(self) -> None:
        try:
            await trio.sleep_forever()
        finally:
            deadline = self._shutdown_deadline = trio.current_time() + self.grace
            for scope in self._in_flight:
                scope.deadline = min(scope.deadline, deadline)

    async def _serve_socket(self, stream: trio.SocketStream) -> None:
        try:
            uid = peer_uid(stream.socket)
            if uid not in self.allowed_uids:
                log.warning("refusing control connection from uid %d", uid)
                message = f"uid {uid} may not use this control socket (EACCES)"
                with trio.move_on_after(1):
                    await stream.send_all(encode(error(None, "permission_denied", message)))
                return
            await self.serve_stream(stream)
        except Exception:  # our bug: lose this connection, never the server (or the mount)
            log.exception("control connection failed; closing it")
        finally:
            await trio.aclose_forcefully(stream)

    async def serve_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one connection (a socket, or an in-memory stream in tests) until EOF."""
        self.connections += 1
        reader = MessageReader(self.max_message_size)
        try:
            async with trio.open_nursery() as nursery:
                connection = _Connection(stream, nursery)
                try:
                    await self._read_requests(connection, reader)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    # The client went away, or stopped reading: requests still
                    # applying finish (each all or nothing) but are not answered.
                    await trio.aclose_forcefully(stream)
        finally:
            self.connections -= 1

    async def _read_requests(self, connection: "_Connection", reader: MessageReader) -> None:
        stream = connection.stream
        while True:
            if reader.pending:  # inside a message: the rest must not take for ever
                data = await self._receive_rest(stream, reader.pending)
            else:
                data = await stream.receive_some(RECEIVE_SIZE)
            if not data:
                return
            try:
                reader.feed(data)
                large = reader.pending > OFF_LOOP_BYTES
                if large:
                    messages = await trio.to_thread.run_sync(reader.drain)
                else:
                    messages = reader.drain()
                for message in messages:
                    await self._take(connection, message, large)
                if reader.failed:  # undecodable bytes followed those messages
                    reader.drain()  # raises their ProtocolError
            except ProtocolError as exc:
                log.warning("closing control connection: %s", exc)
                async with connection.send_lock:
                    await stream.send_all(encode(error(None, exc.code, str(exc))))
                return

    async def _take(self, connection: "_Connection", message: Any, large: bool) -> None:
        """Answer a small request now; start a large one (or one that must wait) beside us."""
        key = _sandbox_key(message)
        if large or connection.order.busy(key):
            # Prefix definitions take effect in the order sent, even when the
            # rest of this request is decoded later in a worker thread.
            _register_prefixes(message, connection.prefixes)

            def decode() -> Awaitable[Any]:
                return self.reconfigurer.decode(message, connection.prefixes, large)

            await connection.start(key, partial(self._answer, connection, message, decode))
            return
        try:
            request = await self.reconfigurer.decode(message, connection.prefixes)
        except SandboxfsError as exc:
            await self._send(connection, request_id(message), error_from(request_id(message), exc))
            return
        if getattr(request, "mapping_count", 0) > OFF_LOOP_MAPPINGS:
            await connection.start(key, partial(self._answer, connection, message, _ready(request)))
        else:
            await self._answer(connection, message, _ready(request))

    async def _answer(self, connection: "_Connection", message: Any,
                      decode: Callable[[], Awaitable[Any]],
                      after: trio.Event | None = None) -> None:
        """Decode (when not yet), apply and answer one request, once ``after`` is set."""
        ident = request_id(message)
        # Requests queued behind the one in flight get the same deadline.
        with trio.CancelScope(shield=True, deadline=self._shutdown_deadline) as scope:
            self._in_flight.add(scope)
            try:
                if after is not None:
                    await after.wait()
                try:
                    response = ok(ident, await self.reconfigurer.apply(await decode()))
                except SandboxfsError as exc:
                    response = error_from(ident, exc)
                except Exception as exc:  # our bug: answer it, keep serving
                    log.exception("control request %r failed", ident)
                    response = error(ident, "internal", f"internal error: {exc!r}")
                await self._send(connection, ident, response)
            finally:
                self._in_flight.discard(scope)
        if scope.cancelled_caught:
            raise trio.ClosedResourceError("shutdown deadline passed")

    async def _send(self, connection: "_Connection", ident: Any, response: dict) -> None:
        try:
            data = encode(response)
        except Exception as exc:  # e.g. a value msgpack cannot carry
            log.exception("cannot encode the answer to control request %r", ident)
            data = encode(error(None, "internal", f"internal error: {type(exc).__name__}"))
        with trio.move_on_after(self.stall_timeout) as send_scope:
            async with connection.send_lock:
                await connection.stream.send_all(data)
        if send_scope.cancelled_caught:
            log.warning("closing control connection: the client has not read its answer "
                        "to request %r for %g s", ident, self.stall_timeout)
            raise trio.ClosedResourceError("the client stopped reading")

    async def _receive_rest(self, stream: trio.abc.Stream, pending: int) -> bytes:
        """The next bytes of a message already begun, or ``b""`` after a stall."""
        with trio.move_on_after(self.stall_timeout):
            return await stream.receive_some(RECEIVE_SIZE)
        message = (
            f"message incomplete after {self.stall_timeout:g} s "
            f"({pending} bytes received); closing the connection (ETIMEDOUT)"
        )
        log.warning("closing control connection: %s", message)
        with trio.move_on_after(1):
            await stream.send_all(encode(error(None, "timeout", message)))
        return b""



# Requests of one connection applying beside its reader at once; the reader
# waits for a free slot before it starts another.
MAX_BESIDE = 16


class _Connection:
    """One client connection: its prefixes, its send lock, its requests in flight."""

    def __init__(self, stream: trio.abc.Stream, nursery: trio.Nursery) -> None:
        self.stream = stream
        self.prefixes = PrefixTable()
        self.send_lock = trio.Lock()  # answers from several tasks go out whole
        self.order = KeyedOrder()  # per sandbox name, among requests beside the reader
        self._nursery = nursery
        self._slots = trio.Semaphore(MAX_BESIDE)

    async def start(self, key: bytes | None,
                    answer: Callable[[trio.Event | None], Awaitable[None]]) -> None:
        """Run ``answer(after)`` beside the reader, after the earlier request for ``key``."""
        await self._slots.acquire()
        after, done = self.order.enter(key)
        self._nursery.start_soon(self._run, answer, after, key, done)

    async def _run(self, answer: Callable[[trio.Event | None], Awaitable[None]],
                   after: trio.Event | None, key: bytes | None, done: trio.Event) -> None:
        try:
            await answer(after)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await trio.aclose_forcefully(self.stream)  # ends the reader too
        finally:
            self.order.leave(key, done)
            self._slots.release()


def _sandbox_key(message: Any) -> bytes | None:
    """The sandbox a request names, for ordering (before the request is decoded)."""
    name = message.get("name") if isinstance(message, dict) else None
    if isinstance(name, str):
        return os.fsencode(name)
    return name if isinstance(name, bytes) else None


def _register_prefixes(message: Any, prefixes: PrefixTable) -> None:
    """Register a request's prefixes now; a bad table is answered when it is decoded."""
    table = message.get("prefixes") if isinstance(message, dict) else None
    if table is not None:
        try:
            prefixes.register(table, str(message.get("op")))
        except SandboxfsError:
            pass


def _ready(request: Any) -> Callable[[], Awaitable[Any]]:
    async def decoded() -> Any:
        return request
    return decoded
