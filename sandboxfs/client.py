"""What build tools import: a blocking ``Client`` and a trio ``AsyncClient``.

Both speak the control protocol (docs/protocol.md) over the mount's Unix
socket and have the same methods; errors come back as the typed exceptions of
``sandboxfs.errors`` (``SandboxExistsError``, ``NotFoundError``,
``MappingError``, ...).  Paths are prefix-compressed automatically: each
mapping's parent directories (inside the sandbox and on the host) are sent
once per connection as a numbered prefix, and each path as (prefix, name).

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
from operator import itemgetter
from typing import Any, AsyncIterator, Iterable, Iterator, Sequence, Union

import trio

from .errors import ProtocolError, error_for_code
from .framing import MessageReader, encode
from .gcpause import paused_gc
from .mapping import Mapping

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
        self.reader = MessageReader()

    def _compress(self, path: bytes, table: dict[int, bytes]) -> list | bytes:
        parent, _, name = path.rpartition(b"/")
        if not parent or not name or not path.startswith(b"/"):
            return path  # a relative path goes whole, so the server names its mapping
        return [self._prefix(parent, table)[0], name]

    def encode_mappings(self, mappings: Iterable[MappingArg], table: dict[int, bytes]) -> list:
        """The wire form of ``mappings``, in the caller's order (so error indices are the caller's).

        A run of mappings that all show ``host_root/REST`` at ``inner_root/REST``
        with one writability travels as one group,
        ``[inner_root, host_root, writable, b"REST1\\0REST2..."]``: a toolchain of
        100,000 files is one group, found and encoded with C-level string
        operations (joins, counts, replaces) and no Python step per mapping.
        Runs are found by halving a range until each half is one (halves of
        one run join up again); a mapping that fits no run goes alone as
        ``[path, underlying, writable]``.
        """
        items = mappings if type(mappings) is list else list(mappings)
        wire: list = []
        try:
            paths, hosts, flags = _columns(items)
            self._encode_range(paths, hosts, flags, 0, len(paths), table, wire)
        except TypeError:  # a path that is not a str (bytes, PathLike) met a str one
            paths, hosts, flags = _normalized(items)
            wire.clear()
            self._encode_range(paths, hosts, flags, 0, len(paths), table, wire)
        for entry in wire:
            if len(entry) == 4:  # a group: its pieces of RESTs, joined once
                entry[3] = _encode("\0".join(entry[3]))
        return wire

    def _encode_range(self, paths: list[str], hosts: list[str], flags: list, start: int,
                      stop: int, table: dict[int, bytes], wire: list) -> None:
        if start == stop:
            return
        run = _subtree(paths, hosts, flags, start, stop)
        if run is not None:
            inner, host, rests = run
            group = [self._prefix(_encode(inner), table), self._prefix(_encode(host), table),
                     bool(flags[start])]
            last = wire[-1] if wire else None
            if last is not None and len(last) == 4 and last[:3] == group:
                last[3].append(rests)  # the other half of a range that was halved
            else:
                wire.append(group + [[rests]])
        elif stop - start == 1:
            wire.append([self._compress(_encode(paths[start]), table),
                         self._compress(_encode(hosts[start]), table), bool(flags[start])])
        else:
            middle = (start + stop) // 2
            self._encode_range(paths, hosts, flags, start, middle, table, wire)
            self._encode_range(paths, hosts, flags, middle, stop, table, wire)

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


_FIRST, _SECOND, _THIRD = itemgetter(0), itemgetter(1), itemgetter(2)


def _columns(items: list) -> tuple[list, list, list]:
    """The caller's mappings as three lists: inside paths, host paths, writability.

    Lists of (str, str, bool) tuples, what build tools pass, are split with
    C-level steps; other element types (Mapping objects, pairs) go through
    ``_normalized``, and so do paths that are not str (a join raises
    TypeError on them, and ``encode_mappings`` starts again normalized).
    """
    try:
        paths, hosts = list(map(_FIRST, items)), list(map(_SECOND, items))
        flags = list(map(_THIRD, items))
    except (TypeError, IndexError, KeyError):
        return _normalized(items)
    if paths and (type(paths[0]) is not str or type(hosts[0]) is not str):
        return _normalized(items)
    return paths, hosts, flags


def _normalized(items: list) -> tuple[list[str], list[str], list]:
    """``_columns`` one mapping at a time, with every path made a str."""
    paths, hosts, flags = [], [], []
    for item in items:
        if isinstance(item, Mapping):
            path, underlying, writable = item.path, item.underlying, item.writable
        else:
            path, underlying, writable = item[0], item[1], len(item) > 2 and item[2]
        paths.append(path if type(path) is str else os.fsdecode(path))
        hosts.append(underlying if type(underlying) is str else os.fsdecode(underlying))
        flags.append(writable)
    return paths, hosts, flags


def _roots(path: str, host: str) -> tuple[str, str] | None:
    """(inner root, host root) such that ``path`` is inner_root/REST and ``host``
    host_root/REST, with REST as long as it can be ("" stands for "/"); None
    when the two do not end alike or are not plain absolute paths."""
    if path[:1] != "/" or host[:1] != "/" or path[-1:] == "/" or host[-1:] == "/":
        return None
    shared = len(os.path.commonprefix((path[::-1], host[::-1])))
    cut = path.find("/", len(path) - shared)
    if cut < 0:
        return None
    inner, host_root = path[:cut], host[:len(host) - (len(path) - cut)]
    if "\0" in inner or "\0" in host_root:
        return None
    return inner, host_root


def _subtree(paths: list[str], hosts: list[str], flags: list, start: int,
             stop: int) -> tuple[str, str, str] | None:
    """(inner root, host root, NUL-separated RESTs) if every mapping in
    [start, stop) shows host_root/REST at inner_root/REST with one
    writability; else None.  The roots come from the first mapping; the others
    are checked on whole joined strings, so each costs a few bytes of C-level
    copying and comparing."""
    roots = _roots(paths[start], hosts[start])
    if roots is None:
        return None
    count = stop - start
    if count > 1 and flags[start:stop].count(flags[start]) != count:
        return None
    inner, host = roots
    inner_slash, host_slash = inner + "/", host + "/"
    joined = "\0".join(paths[start:stop])
    if (joined.count("\0") != count - 1 or joined.count("\0" + inner_slash) != count - 1
            or not joined.startswith(inner_slash) or "/\0" in joined or joined[-1] == "/"):
        return None
    rests = joined[len(inner_slash):].replace("\0" + inner_slash, "\0")
    if "\0".join(hosts[start:stop]) != host_slash + rests.replace("\0", "\0" + host_slash):
        return None
    return inner or "/", host or "/", rests


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
