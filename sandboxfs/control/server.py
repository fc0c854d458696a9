"""The control server: a Unix stream socket that accepts, decodes, applies and answers.

Each connection is served by its own task: bytes go through a
``framing.MessageReader``, each whole message through the ``Reconfigurer``,
and each answer goes back in request order with the request's id, so clients
may pipeline.  A well-framed bad request gets an error answer and the
connection stays usable; undecodable bytes get one error answer (id nil) and
close that connection only.

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
from typing import Iterable

import trio

from sandboxfs.control.framing import DEFAULT_MAX_MESSAGE_SIZE, MessageReader, encode
from sandboxfs.control.protocol import PrefixTable, error, error_from, ok, request_id
from sandboxfs.control.reconfig import Reconfigurer
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
        probe.connect(path)
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
        sock.bind(path)
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
        prefixes = PrefixTable()
        try:
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
                        await self._answer(stream, message, prefixes, large)
                    if reader.failed:  # undecodable bytes followed those messages
                        reader.drain()  # raises their ProtocolError
                except ProtocolError as exc:
                    log.warning("closing control connection: %s", exc)
                    await stream.send_all(encode(error(None, exc.code, str(exc))))
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the client went away; its half-done request (if any) was all-or-nothing
        finally:
            self.connections -= 1

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

    async def _answer(self, stream: trio.abc.Stream, message, prefixes: PrefixTable,
                      large: bool) -> None:
        ident = request_id(message)
        # Requests queued behind the one in flight get the same deadline.
        with trio.CancelScope(shield=True, deadline=self._shutdown_deadline) as scope:
            self._in_flight.add(scope)
            try:
                try:
                    result = await self.reconfigurer.apply_message(message, prefixes, large)
                    response = ok(ident, result)
                except SandboxfsError as exc:
                    response = error_from(ident, exc)
                except Exception as exc:  # our bug: answer it, keep serving
                    log.exception("control request %r failed", ident)
                    response = error(ident, "internal", f"internal error: {exc!r}")
                try:
                    data = encode(response)
                except Exception as exc:  # e.g. a value msgpack cannot carry
                    log.exception("cannot encode the answer to control request %r", ident)
                    data = encode(error(None, "internal", f"internal error: {type(exc).__name__}"))
                with trio.move_on_after(self.stall_timeout) as send_scope:
                    await stream.send_all(data)
            finally:
                self._in_flight.discard(scope)
        if scope.cancelled_caught:
            raise trio.ClosedResourceError("shutdown deadline passed")
        if send_scope.cancelled_caught:
            log.warning("closing control connection: the client has not read its answer "
                        "to request %r for %g s", ident, self.stall_timeout)
            raise trio.ClosedResourceError("the client stopped reading")
