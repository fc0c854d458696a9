"""What build tools import: a blocking ``Client`` and a trio ``AsyncClient``.

Both speak the control protocol (docs/protocol.md) over the mount's Unix
socket and share their methods (``_Methods``, one per op of
``requests.OPS``); errors come back as the typed exceptions of
``sandboxfs.errors`` (``SandboxExistsError``, ``NotFoundError``,
``MappingError``, ...).

    from sandboxfs.client import Client

    with Client("/tmp/mnt.sock") as client:
        with client.sandbox("736", [("/bin/cc", "/usr/bin/gcc"),
                                    ("/out", "/tmp/out", True)]) as path:
            subprocess.run(["bin/cc", ...], cwd=path)

Mappings below one pair of roots (a toolchain) travel as one group, found
and digested by ``group_encoding``; once the server says it holds a group,
later requests on the connection name it by digest.  If the server no longer
holds it (``missing_group``: evicted, or restarted), the request changed
nothing and is sent again with those groups in full, transparently.  Callers
that send the same toolchain with every action may ``prepare`` it once.

The protocol logic lives in ``_Session`` (no I/O); the two clients only move
bytes, so they cannot drift apart.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections import OrderedDict
from typing import Any, AsyncIterator, Iterable, Iterator, Sequence, Union

import attrs
import trio

from sandboxfs.control.framing import NOTHING, MessageReader, encode
from sandboxfs.control.unix_path import socket_address
from sandboxfs.control.group_encoding import (
    EncodedGroup, Element, PreparedMappings, encode_mappings, prepare,
)
from sandboxfs.control.requests import (
    PROTOCOL_VERSION, AccessReport, CreateSandbox, DestroySandbox, ListSandboxes, Map, Ping,
    Stats, Unmap,
)
from sandboxfs.errors import MissingGroupError, ProtocolError, error_for_code
from sandboxfs.gcpause import paused_gc
from sandboxfs.tree.mapping import Mapping

PathArg = Union[str, bytes, os.PathLike]
# A mapping as callers write it: a Mapping, or (path, underlying[, writable]);
# a list of them may also hold PreparedMappings.
MappingArg = Union[Mapping, Sequence[Any], PreparedMappings]

RECEIVE_SIZE = 1 << 16
# Groups of at least this many names are named by digest once the server holds them.
REFERENCE_MIN = 16
HELD_MAX = 10_000  # digests remembered per connection

__all__ = ["AsyncClient", "Client", "PreparedMappings", "prepare"]


def _encode(path: PathArg) -> bytes:
    """os.fsencode without its Python-level overhead for the common str case."""
    if type(path) is str:
        return path.encode("utf-8", "surrogateescape")
    return os.fsencode(path)


class _Outgoing:
    """One request on its way: its encoded mappings, kept for a resend after missing_group."""

    __slots__ = ("request", "elements", "prepared", "resent")

    def __init__(self, request: Any, elements: list[Element] | None,
                 prepared: list[PreparedMappings] | None = None) -> None:
        self.request = request
        self.elements = elements
        self.prepared = prepared or []  # PreparedMappings among the mappings
        self.resent = False

    def hinted(self) -> set[bytes]:
        """Digests the caller's PreparedMappings know some server held."""
        if not self.prepared:
            return set()
        return set().union(*(p.held for p in self.prepared))


class _Session:
    """Request ids, the connection's prefix table, the groups the server holds, responses."""

    def __init__(self) -> None:
        self._next_id = 1
        self._next_prefix = 1  # never reused: the server may hold ids of failed requests
        self._prefix_ids: dict[bytes, int] = {}
        self._sent_now: list[bytes] = []
        self.held: OrderedDict[bytes, None] = OrderedDict()  # digests the server said it holds
        self.reader = MessageReader()

    def start(self, request: Any) -> _Outgoing:
        mappings = getattr(request, "mappings", None)
        if mappings is None:
            return _Outgoing(request, None)
        prepared: list[PreparedMappings] = []
        with paused_gc():  # its many small objects would trigger scans of the caller's heap
            return _Outgoing(request, encode_mappings(mappings, prepared), prepared)

    def render(self, outgoing: _Outgoing) -> tuple[int, bytes]:
        """The request's id and bytes: groups the server holds named by digest."""
        request_id = self._next_id
        self._next_id += 1
        self._sent_now = []
        table: dict[int, bytes] = {}
        message: dict[str, Any] = {"id": request_id, "op": outgoing.request.op}
        for field in attrs.fields(type(outgoing.request)):
            value = getattr(outgoing.request, field.name)
            if field.default is not attrs.NOTHING and value == field.default:
                continue  # absent unless asked for: older servers refuse unknown fields
            if field.name == "mappings":
                value = self._wire(outgoing.elements, table, outgoing.hinted())
            elif field.name == "paths":
                value = [self._compress(_encode(p), table) for p in value]
            elif field.name == "name":
                value = _encode(value)
            message[field.name] = value
        if table:
            message["prefixes"] = table
        with paused_gc():
            return request_id, encode(message)

    def _wire(self, elements: list[Element], table: dict[int, bytes],
              hinted: set[bytes] = frozenset()) -> list:
        wire: list = []
        held = self.held
        for element in elements:
            if type(element) is EncodedGroup:
                if element.count >= REFERENCE_MIN and (element.digest in held
                                                       or element.digest in hinted):
                    wire.append({"group": element.digest})
                else:
                    wire.append([self._prefix(element.root, table),
                                 self._prefix(element.host_root, table),
                                 element.writable, element.names])
            else:
                wire.append([self._compress(element.path, table),
                             self._compress(element.underlying, table), element.writable])
        return wire

    def _compress(self, path: bytes, table: dict[int, bytes]) -> list | bytes:
        parent, _, name = path.rpartition(b"/")
        if not parent or not name or not path.startswith(b"/"):
            return path  # a relative path goes whole, so the server names its mapping
        return [self._prefix(parent, table)[0], name]

    def _prefix(self, directory: bytes, table: dict[int, bytes]) -> list:
        ident = self._prefix_ids.get(directory)
        if ident is None:
            ident = self._prefix_ids[directory] = self._next_prefix
            self._next_prefix += 1
            table[ident] = directory
            self._sent_now.append(directory)
        return [ident, b""]

    def result(self, request_id: int, response: Any, outgoing: _Outgoing | None = None) -> dict:
        if not isinstance(response, dict) or response.get("id") != request_id:
            if isinstance(response, dict) and isinstance(response.get("error"), dict):
                raise self._error(response["error"])
            raise ProtocolError(f"expected the answer to request {request_id}, got {response!r}")
        if "error" in response and response["error"] is not None:
            # Prefixes sent with a failed request may not be registered: send them again.
            for parent in self._sent_now:
                self._prefix_ids.pop(parent, None)
            error = self._error(response["error"])
            if isinstance(error, MissingGroupError):
                for digest in error.digests:
                    self.held.pop(digest, None)
                    for prepared in outgoing.prepared if outgoing is not None else ():
                        prepared.held.discard(digest)
            raise error
        result = response.get("result") or {}
        self._note_held(result.get("groups"), outgoing)
        return result

    def _note_held(self, digests: Any, outgoing: _Outgoing | None = None) -> None:
        """A version-2 server answers the digests of the groups it now holds."""
        if not isinstance(digests, list):
            return
        held = self.held
        for digest in digests:
            if type(digest) is bytes:
                held[digest] = None
                held.move_to_end(digest)
        while len(held) > HELD_MAX:
            held.popitem(last=False)
        for prepared in outgoing.prepared if outgoing is not None else ():
            prepared.held.update(e.digest for e in prepared.elements
                                 if type(e) is EncodedGroup and e.digest in held)

    @staticmethod
    def _error(err: dict):
        return error_for_code(str(err.get("code")), str(err.get("message")), err.get("details"))


class _Methods:
    """The client methods, one per op: each returns ``_call``'s value (awaitable in AsyncClient)."""

    def _call(self, request: Any, key: str | None = None) -> Any:  # pragma: no cover
        raise NotImplementedError

    def ping(self, version: int = PROTOCOL_VERSION) -> dict:
        """Server and protocol version; ``protocol`` is the version both speak."""
        return self._call(Ping(version))

    def create_sandbox(self, name: PathArg, mappings: Iterable[MappingArg],
                       track_access: bool = False) -> dict:
        """Create sandbox ``name`` (all or nothing); returns {"name", "mappings", "path", ...}.

        With ``track_access``, the server records what is accessed in it: see
        ``access_report`` and the result of ``destroy_sandbox``.
        """
        return self._call(CreateSandbox(name, mappings, track_access))

    def destroy_sandbox(self, name: PathArg) -> dict:
        """Destroy a sandbox; once this returns nothing of it is visible or cached.

        A tracked sandbox's result has its final ``access_report``.
        """
        return self._call(DestroySandbox(name))

    def access_report(self, name: PathArg) -> dict:
        """What was accessed so far in a sandbox created with ``track_access``
        ({"accessed", "missing", "unused"}, docs/access.md)."""
        return self._call(AccessReport(name), "access_report")

    def map(self, name: PathArg, mappings: Iterable[MappingArg]) -> dict:
        """Add mappings to a live sandbox (all or nothing)."""
        return self._call(Map(name, mappings))

    def unmap(self, name: PathArg, paths: Iterable[PathArg]) -> dict:
        """Remove mappings from a live sandbox (all or nothing)."""
        return self._call(Unmap(name, list(paths)))

    def list(self) -> list[dict]:
        """Live sandboxes: [{"name", "mappings"}, ...]."""
        return self._call(ListSandboxes(), "sandboxes")

    def stats(self) -> dict:
        return self._call(Stats())


def _pick(result: dict, key: str | None) -> Any:
    return result[key] if key is not None else result


class Client(_Methods):
    """A blocking client for one control socket; also a context manager."""

    def __init__(self, path: PathArg, timeout: float | None = 60.0) -> None:
        self.path = os.fspath(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            with socket_address(self.path) as address:
                self._sock.connect(address)
        except OSError as exc:
            self._sock.close()
            raise OSError(exc.errno, exc.strerror, self.path) from None
        self._session = _Session()

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _call(self, request: Any, key: str | None = None) -> Any:
        outgoing = self._session.start(request)
        while True:
            request_id, data = self._session.render(outgoing)
            self._sock.sendall(data)
            try:
                return _pick(self._session.result(request_id, self._receive(), outgoing), key)
            except MissingGroupError:
                if outgoing.resent:
                    raise
                outgoing.resent = True  # those groups now go in full

    def _receive(self) -> Any:
        reader = self._session.reader
        while (message := reader.next_message()) is NOTHING:
            chunk = self._sock.recv(RECEIVE_SIZE)
            if not chunk:
                raise ProtocolError("the server closed the connection")
            reader.feed(chunk)
        return message

    @contextlib.contextmanager
    def sandbox(self, name: PathArg, mappings: Iterable[MappingArg]) -> Iterator[str]:
        """Create a sandbox, yield its path in the mount, and always destroy it."""
        result = self.create_sandbox(name, mappings)
        try:
            yield result["path"]
        finally:
            self.destroy_sandbox(name)


class AsyncClient(_Methods):
    """The trio twin of ``Client``: ``async with await AsyncClient.connect(path) as c``."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._session = _Session()
        self._lock = trio.Lock()

    @classmethod
    async def connect(cls, path: PathArg) -> "AsyncClient":
        try:
            with socket_address(os.fspath(path)) as address:
                return cls(await trio.open_unix_socket(address))
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, os.fspath(path)) from None

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def _call(self, request: Any, key: str | None = None) -> Any:
        async with self._lock:
            outgoing = self._session.start(request)
            while True:
                request_id, data = self._session.render(outgoing)
                await self._stream.send_all(data)
                try:
                    return _pick(self._session.result(request_id, await self._receive(), outgoing),
                                 key)
                except MissingGroupError:
                    if outgoing.resent:
                        raise
                    outgoing.resent = True

    async def _receive(self) -> Any:
        reader = self._session.reader
        while (message := reader.next_message()) is NOTHING:
            chunk = await self._stream.receive_some(RECEIVE_SIZE)
            if not chunk:
                raise ProtocolError("the server closed the connection")
            reader.feed(chunk)
        return message

    @contextlib.asynccontextmanager
    async def sandbox(self, name: PathArg, mappings: Iterable[MappingArg]) -> AsyncIterator[str]:
        result = await self.create_sandbox(name, mappings)
        try:
            yield result["path"]
        finally:
            await self.destroy_sandbox(name)
