"""What build tools import: a blocking ``Client`` and a trio ``AsyncClient``.

Both speak the control protocol (docs/protocol.md) over the mount's Unix
socket and have the same methods; errors come back as the typed exceptions of
``sandboxfs.errors`` (``SandboxExistsError``, ``NotFoundError``,
``MappingError``, ...).  Paths are prefix-compressed automatically: a run
of mappings below one pair of roots (a toolchain) travels as one group of
relative paths under two numbered prefixes, registered once per connection
(``runs.py``), and a session recognises the runs it sent before.

    from sandboxfs.client import Client

    with Client("/tmp/mnt.sock") as client:
        with client.sandbox("736", [("/bin/cc", "/usr/bin/gcc"),
                                    ("/out", "/tmp/out", True)]) as path:
            subprocess.run(["bin/cc", ...], cwd=path)

The protocol logic lives in ``_Session`` (no I/O); the two clients only move
bytes, so they cannot drift apart.
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Any, AsyncIterator, Iterable, Iterator, Sequence, Union

import trio

from .errors import ProtocolError, error_for_code
from .framing import MessageReader, encode
from .gcpause import paused_gc
from .mapping import Mapping
from .runs import KnownRuns, columns, normalized, subtree

PathArg = Union[str, bytes, os.PathLike]
# A mapping as callers write it: a Mapping, or (path, underlying[, writable]).
MappingArg = Union[Mapping, Sequence[Any]]

RECEIVE_SIZE = 1 << 16


class _Session:
    """Request ids, the connection's prefix table, and response decoding."""

    def __init__(self) -> None:
        self._next_id = 1
        self._next_prefix = 1  # never reused: the server may hold ids of failed requests
        self._prefix_ids: dict[bytes, int] = {}
        self._sent_now: list[bytes] = []
        self._known_runs = KnownRuns()
        self.reader = MessageReader()

    def _compress(self, path: bytes, table: dict[int, bytes]) -> list | bytes:
        parent, _, name = path.rpartition(b"/")
        if not parent or not name or not path.startswith(b"/"):
            return path  # a relative path goes whole, so the server names its mapping
        return [self._prefix(parent, table)[0], name]

    def encode_mappings(self, mappings: Iterable[MappingArg], table: dict[int, bytes]) -> list:
        """The wire form of ``mappings``, in the caller's order (so error indices are the caller's).

        Runs of mappings below one pair of roots travel as one group each
        (``runs.py``); a range that is not one run is cut where writability
        changes, or else halved, until each part is one (halves of one run join
        up again); runs this session sent before are recognised as they are.  A mapping that fits no run goes alone as
        ``[path, underlying, writable]``.
        """
        items = mappings if type(mappings) is list else list(mappings)
        wire: list = []
        start = 0
        while start < len(items):  # known runs first: no columns needed for them
            known = self._known_runs.find(items, start, len(items))
            if known is None:
                break
            start, group = known
            self._add_group(*group, table, wire)
        rest = items[start:] if start else items
        try:
            paths, hosts, flags = columns(rest)
            self._encode_range(rest, paths, hosts, flags, 0, len(rest), table, wire)
        except TypeError:  # a path that is not a str (bytes, PathLike) met a str one
            paths, hosts, flags = normalized(items)
            wire.clear()  # and start again, the known runs included
            self._encode_range(items, paths, hosts, flags, 0, len(items), table, wire)
        for entry in wire:
            if len(entry) == 4:  # a group: its pieces of RESTs, joined once
                entry[3] = b"\0".join(entry[3])
        return wire

    def _encode_range(self, items: list, paths: list[str], hosts: list[str], flags: list,
                      start: int, stop: int, table: dict[int, bytes], wire: list) -> None:
        if start == stop:
            return
        known = self._known_runs.find(items, start, stop)
        if known is not None:
            end, group = known
            self._add_group(*group, table, wire)
            self._encode_range(items, paths, hosts, flags, end, stop, table, wire)
            return
        run = subtree(paths, hosts, flags, start, stop)
        if run is not None:
            inner, host, rests = run
            group = (inner, host, flags[start], _encode(rests))
            self._known_runs.remember(items, start, stop, group)
            self._add_group(*group, table, wire)
        elif stop - start == 1:
            wire.append([self._compress(_encode(paths[start]), table),
                         self._compress(_encode(hosts[start]), table), flags[start]])
        else:
            # Where writability changes a run ends (an output directory after the inputs);
            # other ends are found by halving.
            try:
                middle = flags.index(not flags[start], start + 1, stop)
            except ValueError:
                middle = (start + stop) // 2
            self._encode_range(items, paths, hosts, flags, start, middle, table, wire)
            self._encode_range(items, paths, hosts, flags, middle, stop, table, wire)

    def _add_group(self, inner: str, host: str, writable: bool, rests: bytes,
                   table: dict[int, bytes], wire: list) -> None:
        group = [self._prefix(_encode(inner), table), self._prefix(_encode(host), table), writable]
        last = wire[-1] if wire else None
        if last is not None and len(last) == 4 and last[:3] == group:
            last[3].append(rests)  # the other half of a range that was halved
        else:
            wire.append(group + [[rests]])

    def _prefix(self, directory: bytes, table: dict[int, bytes]) -> list:
        ident = self._prefix_ids.get(directory)
        if ident is None:
            ident = self._prefix_ids[directory] = self._next_prefix
            self._next_prefix += 1
            table[ident] = directory
            self._sent_now.append(directory)
        return [ident, b""]

    def request(self, op: str, **fields: Any) -> tuple[int, bytes]:
        with paused_gc():  # its many small objects would trigger scans of the caller's heap
            return self._request(op, fields)

    def _request(self, op: str, fields: dict) -> tuple[int, bytes]:
        request_id = self._next_id
        self._next_id += 1
        self._sent_now = []
        table: dict[int, bytes] = {}
        message: dict[str, Any] = {"id": request_id, "op": op}
        try:
            for key, value in fields.items():
                if key == "mappings":
                    value = self.encode_mappings(value, table)
                elif key == "paths":
                    value = [self._compress(_encode(p), table) for p in value]
                elif key == "name":
                    value = _encode(value)
                message[key] = value
        except BaseException:
            self._forget_sent_now()  # never sent: the server does not know them
            raise
        if table:
            message["prefixes"] = table
        return request_id, encode(message)

    def result(self, request_id: int, response: Any) -> dict:
        if not isinstance(response, dict) or response.get("id") != request_id:
            if isinstance(response, dict) and isinstance(response.get("error"), dict):
                raise self._error(response["error"])
            raise ProtocolError(f"expected the answer to request {request_id}, got {response!r}")
        if "error" in response and response["error"] is not None:
            # Prefixes sent with a failed request may not be registered: send them again.
            self._forget_sent_now()
            raise self._error(response["error"])
        return response.get("result") or {}

    def _forget_sent_now(self) -> None:
        for parent in self._sent_now:
            self._prefix_ids.pop(parent, None)

    @staticmethod
    def _error(err: dict):
        return error_for_code(str(err.get("code")), str(err.get("message")), err.get("details"))


def _create_fields(name: PathArg, mappings: Iterable[MappingArg], track_access: bool) -> dict:
    fields: dict[str, Any] = {"name": name, "mappings": mappings}
    if track_access:  # absent unless asked for: servers before it refuse unknown fields
        fields["track_access"] = True
    return fields


def _encode(path: PathArg) -> bytes:
    """os.fsencode without its Python-level overhead for the common str case."""
    if type(path) is str:
        return path.encode("utf-8", "surrogateescape")
    return os.fsencode(path)


class Client:
    """A blocking client for one control socket; also a context manager."""

    def __init__(self, path: PathArg, timeout: float | None = 60.0) -> None:
        self.path = os.fspath(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(self.path)
        except OSError as exc:
            self._sock.close()
            raise OSError(exc.errno, exc.strerror, self.path) from None
        self._session = _Session()
        self._queue: list[Any] = []

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _call(self, op: str, **fields: Any) -> dict:
        request_id, data = self._session.request(op, **fields)
        self._sock.sendall(data)
        while not self._queue:
            chunk = self._sock.recv(RECEIVE_SIZE)
            if not chunk:
                raise ProtocolError("the server closed the connection")
            self._session.reader.feed(chunk)
            self._queue.extend(self._session.reader.drain())
        return self._session.result(request_id, self._queue.pop(0))

    def ping(self, version: int = 1) -> dict:
        """Server and protocol version; ``protocol`` is the version both speak."""
        return self._call("ping", version=version)

    def create_sandbox(
        self, name: PathArg, mappings: Iterable[MappingArg], track_access: bool = False
    ) -> dict:
        """Create sandbox ``name`` (all or nothing); returns {"name", "mappings", "path"}.

        With ``track_access``, the server records what is accessed in it: see
        ``access_report`` and the result of ``destroy_sandbox``.
        """
        return self._call("create_sandbox", **_create_fields(name, mappings, track_access))

    def destroy_sandbox(self, name: PathArg) -> dict:
        """Destroy a sandbox; once this returns nothing of it is visible or cached.

        A tracked sandbox's result has its final ``access_report``.
        """
        return self._call("destroy_sandbox", name=name)

    def access_report(self, name: PathArg) -> dict:
        """What was accessed so far in a sandbox created with ``track_access``
        ({"accessed", "missing", "unused"}, docs/access.md)."""
        return self._call("access_report", name=name)["access_report"]

    def map(self, name: PathArg, mappings: Iterable[MappingArg]) -> dict:
        """Add mappings to a live sandbox (all or nothing)."""
        return self._call("map", name=name, mappings=mappings)

    def unmap(self, name: PathArg, paths: Iterable[PathArg]) -> dict:
        """Remove mappings from a live sandbox (all or nothing)."""
        return self._call("unmap", name=name, paths=paths)

    def list(self) -> list[dict]:
        """Live sandboxes: [{"name", "mappings"}, ...]."""
        return self._call("list")["sandboxes"]

    def stats(self) -> dict:
        return self._call("stats")

    @contextlib.contextmanager
    def sandbox(self, name: PathArg, mappings: Iterable[MappingArg]) -> Iterator[str]:
        """Create a sandbox, yield its path in the mount, and always destroy it."""
        result = self.create_sandbox(name, mappings)
        try:
            yield result["path"]
        finally:
            self.destroy_sandbox(name)


class AsyncClient:
    """The trio twin of ``Client``: ``async with await AsyncClient.connect(path) as c``."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._session = _Session()
        self._queue: list[Any] = []
        self._lock = trio.Lock()

    @classmethod
    async def connect(cls, path: PathArg) -> "AsyncClient":
        try:
            return cls(await trio.open_unix_socket(os.fspath(path)))
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, os.fspath(path)) from None

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def _call(self, op: str, **fields: Any) -> dict:
        async with self._lock:
            request_id, data = self._session.request(op, **fields)
            await self._stream.send_all(data)
            while not self._queue:
                chunk = await self._stream.receive_some(RECEIVE_SIZE)
                if not chunk:
                    raise ProtocolError("the server closed the connection")
                self._session.reader.feed(chunk)
                self._queue.extend(self._session.reader.drain())
            return self._session.result(request_id, self._queue.pop(0))

    async def ping(self, version: int = 1) -> dict:
        return await self._call("ping", version=version)

    async def create_sandbox(
        self, name: PathArg, mappings: Iterable[MappingArg], track_access: bool = False
    ) -> dict:
        return await self._call("create_sandbox", **_create_fields(name, mappings, track_access))

    async def destroy_sandbox(self, name: PathArg) -> dict:
        return await self._call("destroy_sandbox", name=name)

    async def access_report(self, name: PathArg) -> dict:
        return (await self._call("access_report", name=name))["access_report"]

    async def map(self, name: PathArg, mappings: Iterable[MappingArg]) -> dict:
        return await self._call("map", name=name, mappings=mappings)

    async def unmap(self, name: PathArg, paths: Iterable[PathArg]) -> dict:
        return await self._call("unmap", name=name, paths=paths)

    async def list(self) -> list[dict]:
        return (await self._call("list"))["sandboxes"]

    async def stats(self) -> dict:
        return await self._call("stats")

    @contextlib.asynccontextmanager
    async def sandbox(self, name: PathArg, mappings: Iterable[MappingArg]) -> AsyncIterator[str]:
        result = await self.create_sandbox(name, mappings)
        try:
            yield result["path"]
        finally:
            await self.destroy_sandbox(name)
