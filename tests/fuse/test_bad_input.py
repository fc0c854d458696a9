"""Hostile and broken input on one real mount: exact errors, and nothing else is disturbed.

One mount serves the whole module.  Its "bystander" sandbox holds real files;
every case sends hostile bytes or messages as raw msgpack over the real Unix
control socket, then checks:

* each answer: the exact error ``code``, the key part of the ``message``
  (the op, the sandbox, the mapping's index and path, the reason) and the
  ``details`` that docs/protocol.md §8 gives for that code;
* the connection: still usable after a request error, closed (EOF, id nil)
  after ``too_large`` and ``invalid_framing`` (§2, §8);
* the rest of the server: the bystander's file still reads through the mount,
  ``list`` and ``stats`` show no partial sandbox, and the name the request
  tried to create does not resolve in the mount.

Covered: truncated and garbage msgpack (reserved bytes, invalid UTF-8 in a
str, too deep nesting, an array as a map key, a bad timestamp, ASCII text),
wrong types for every request field and every mapping field, unknown ops and
fields, missing fields, messages over the size limit (a header announcing
too much, and 64 MiB of real bytes), a million-mapping request (accepted, and
refused at its last index), inner paths with ``..``, ``.``, empty
components, NUL, non-UTF-8 bytes or no leading slash, relative and NUL host
paths, host paths that do not exist or lie below a file, sandbox names
``""``, ``.``, ``..``, ``a/b``, NUL, 256 bytes and 10,000 characters,
duplicate mappings within one request, mappings colliding with existing ones
(mapped path, scaffold, the sandbox top, nesting below a file), unknown
sandboxes for destroy/map/unmap, unknown, malformed and redefined prefix ids.
Then the command line: ``mount --mapping`` with bad flags (exit 2) and
``create`` with bad input (exit 2 before anything is sent, or 1 with the
server's message).
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import msgpack
import pytest

from sandboxfs.control.client import Client

from .harness import Mount, stop_all, world_traversable_tempdir

DEFAULT_LIMIT = 64 * 1024 * 1024  # --max-message-size default (§2)
FATAL_CODES = {"too_large", "invalid_framing"}  # §8: the server answers once, id nil, and closes
BYSTANDER = "bystander"
BYSTANDER_DATA = b"int bystander(void) { return 42; }\n"
BYSTANDER_ENTRIES = ["deep", "out", "src", "tool"]
VICTIM = "victim"  # the name hostile create_sandbox requests try to take
MILLION_DIRS = MILLION_NAMES = 1000
SOCKET_TIMEOUT = 60.0  # a server that never answers fails the test instead of hanging it
KNOWN_OPS = "ping, create_sandbox, destroy_sandbox, access_report, map, unmap, list, stats"


# -- the one mount -------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    """The module's mount, its control socket and the host files behind it."""

    mount: Mount
    control: Path
    host: Path

    def path(self, *parts: str | bytes) -> bytes:
        return os.path.join(os.fsencode(self.mount.mount_point), *map(os.fsencode, parts))


def make_host(host: Path) -> Path:
    """Host files: the bystander's, a plain file and dir, and 1,000 names for the million test."""
    (host / "src").mkdir(parents=True)
    (host / "src" / "data.txt").write_bytes(BYSTANDER_DATA)
    (host / "tool").write_bytes(b"#!/bin/sh\n")
    (host / "deepfile").write_bytes(b"deep\n")
    (host / "out").mkdir()
    (host / "dir").mkdir()
    (host / "file").write_bytes(b"file\n")
    (host / "many").mkdir()
    for j in range(MILLION_NAMES):
        (host / "many" / f"f{j:03}").write_bytes(b"%d\n" % j)
    return host


def bystander_mappings(host: Path) -> list[tuple]:
    return [("/src", host / "src"), ("/tool", host / "tool"),
            ("/deep/file", host / "deepfile"), ("/out", host / "out", True)]


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    base = world_traversable_tempdir("sbxbad-")
    mount = Mount(base / "mnt", ["--ttl", "600"], base / "sandboxfs.log")
    try:
        (base / "mnt").mkdir()
        host = make_host(base / "host")
        mount.start()
        control = base / "mnt.sock"
        with Client(control) as client:
            client.create_sandbox(BYSTANDER, bystander_mappings(host))
        yield Server(mount, control, host)
    finally:
        try:
            stop_all([mount])
        finally:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(autouse=True)
def only_the_bystander_survives(server: Server) -> Iterator[None]:
    """After each test (checked inside it first), remove whatever a failed test left behind,
    so that one failure does not cascade through the module."""
    yield
    with Client(server.control) as client:
        for sandbox in client.list():
            if sandbox["name"] != BYSTANDER:
                client.destroy_sandbox(sandbox["name"])


# -- raw socket helpers --------------------------------------------------------------------


def connect(server: Server) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(SOCKET_TIMEOUT)
    sock.connect(str(server.control))
    return sock


def send_ignoring_close(sock: socket.socket, data: bytes) -> None:
    """Send ``data``; the server may refuse and close half way (§2: EPIPE, the error is readable)."""
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


class Replies:
    """Decodes the server's answers on one connection as they arrive."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        self.eof = False

    def _receive(self) -> None:
        try:
            chunk = self.sock.recv(1 << 16)
        except ConnectionResetError:  # closed with our unread bytes in its queue: same as EOF
            chunk = b""
        if not chunk:
            self.eof = True
        self.unpacker.feed(chunk)

    def take(self, count: int) -> list:
        """The next ``count`` answers (fewer if the server closes first)."""
        out: list = []
        while len(out) < count:
            out.extend(itertools.islice(self.unpacker, count - len(out)))
            if len(out) < count and not self.eof:
                self._receive()
            elif len(out) < count:
                break
        return out

    def rest_until_eof(self) -> list:
        """Every answer until the server closes the connection."""
        out: list = []
        while not self.eof:
            self._receive()
        out.extend(self.unpacker)
        return out


def encode(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


# -- the catalogue -------------------------------------------------------------------------


_ids = itertools.count(1)


def req(op: Any, **fields: Any) -> dict:
    """A request map with a fresh id (answers echo it)."""
    return {"id": next(_ids), "op": op, **fields}


def create(name: Any = VICTIM, mappings: Any = None, **fields: Any) -> dict:
    return req("create_sandbox", name=name, mappings=[] if mappings is None else mappings, **fields)


def create_victim(mappings: list, **fields: Any) -> dict:
    return create(VICTIM, mappings, **fields)


def map_bystander(*mappings: Any, **fields: Any) -> dict:
    return req("map", name=BYSTANDER, mappings=list(mappings), **fields)


@dataclass(frozen=True)
class Ok:
    """A success answer (for requests that set up a case)."""


@dataclass(frozen=True)
class Err:
    """An error answer: its code, strings its message must contain, and details it must hold."""

    code: str
    parts: tuple[str, ...] = ()
    details: dict = field(default_factory=dict)


def err(code: str, *parts: str, **details: Any) -> Err:
    return Err(code, parts, details)


@dataclass(frozen=True)
class Case:
    """Messages sent in one write (dicts are encoded; bytes go as they are) and one answer each."""

    send: tuple[dict | bytes, ...]
    expect: tuple[Ok | Err, ...]
    target: str | bytes | None = VICTIM  # a name that must not exist afterwards

    @property
    def closes(self) -> bool:
        last = self.expect[-1]
        return isinstance(last, Err) and last.code in FATAL_CODES

    def payload(self, host: Path) -> bytes:
        """The bytes to send; host paths are filled in before encoding (lengths change)."""
        return b"".join(m if isinstance(m, bytes) else encode(resolve_host(m, host))
                        for m in self.send)

    def expected_ids(self) -> list:
        ids = [m.get("id") if isinstance(m, dict) else None for m in self.send]
        if self.closes:
            ids[-1] = None  # fatal errors are answered with id nil
        return ids


def case(*send: dict | bytes, expect: Ok | Err | tuple, target: str | bytes | None = VICTIM,
         id: str) -> Any:
    expected = expect if isinstance(expect, tuple) else (expect,)
    return pytest.param(Case(tuple(send), expected, target), id=id)


def h(name: str) -> str:
    """A host path below the module's host dir (filled in when the case runs)."""
    return f"@HOST@/{name}"


def resolve_host(value: Any, host: Path) -> Any:
    """Replace the ``@HOST@`` placeholder in the case (the host dir exists only at run time)."""
    if isinstance(value, str):
        return value.replace("@HOST@", str(host))
    if isinstance(value, bytes):
        return value.replace(b"@HOST@", os.fsencode(host))
    if isinstance(value, list):
        return [resolve_host(v, host) for v in value]
    if type(value) is tuple:  # not an ExtType, which is a tuple too
        return tuple(resolve_host(v, host) for v in value)
    if isinstance(value, dict):
        return {k: resolve_host(v, host) for k, v in value.items()}
    if isinstance(value, Err):
        return Err(value.code, resolve_host(value.parts, host), resolve_host(value.details, host))
    return value


def raw_map(*pairs: tuple[bytes, bytes]) -> bytes:
    """A msgpack map from already encoded (key, value) pairs, to carry bytes msgpack would refuse."""
    assert len(pairs) < 16
    return bytes([0x80 | len(pairs)]) + b"".join(k + v for k, v in pairs)


def bin32_header(length: int) -> bytes:
    return b"\xc6" + length.to_bytes(4, "big")


BAD_UTF8_STR = b"\xa2\xff\xfe"  # a str of 2 bytes that are not UTF-8
TOO_DEEP = b"\x91" * 5000 + b"\x01"  # 5,000 nested arrays
ARRAY_AS_KEY = b"\x81\x91\x01\x02"  # {[1]: 2}
BAD_TIMESTAMP = b"\xc7\x03\xff\x00\x00\x00"  # ext -1 (timestamp) of 3 bytes: no such timestamp

FRAMING = [
    case(b"\xc1", expect=err("invalid_framing", "undecodable msgpack"), id="reserved-byte-0xc1"),
    case(b"\xc1\xff\x00garbage", expect=err("invalid_framing", "undecodable msgpack"),
         id="garbage-bytes"),
    case(req("ping"), b"\xc1", expect=(Ok(), err("invalid_framing", "undecodable msgpack")),
         id="ping-then-garbage-ping-is-answered-first"),
    case(raw_map((encode("id"), encode(1)), (encode("op"), BAD_UTF8_STR)),
         expect=err("invalid_framing", "undecodable msgpack", "UnicodeDecodeError"),
         id="str-not-utf8"),
    case(raw_map((encode("op"), encode("create_sandbox")), (encode("name"), BAD_UTF8_STR),
                 (encode("mappings"), encode([]))),
         expect=err("invalid_framing", "undecodable msgpack", "UnicodeDecodeError"),
         id="sandbox-name-str-not-utf8"),
    case(raw_map((encode("op"), encode("ping")), (encode("id"), TOO_DEEP)),
         expect=err("invalid_framing", "undecodable msgpack", "StackError"), id="too-deep-nesting"),
    case(ARRAY_AS_KEY, expect=err("invalid_framing", "undecodable msgpack", "unhashable"),
         id="array-as-map-key"),
    case(raw_map((encode("op"), encode("ping")), (encode("id"), BAD_TIMESTAMP)),
         expect=err("invalid_framing", "undecodable msgpack", "timestamp"), id="bad-timestamp-ext"),
]

TOO_LARGE = f"message larger than the limit of {DEFAULT_LIMIT} bytes"
SIZE = [
    case(raw_map((encode("op"), encode("create_sandbox")), (encode("name"), encode(VICTIM)),
                 (encode("mappings"), b"\xdd\xff\xff\xff\xff")),
         expect=err("too_large", TOO_LARGE), id="array-header-announces-4G-elements"),
    case(b"\xdf\xff\xff\xff\xff", expect=err("too_large", TOO_LARGE),
         id="map-header-announces-4G-entries"),
    case(raw_map((encode("op"), encode("ping")), (encode("pad"), bin32_header(DEFAULT_LIMIT)))
         + b"\0" * (DEFAULT_LIMIT + 1),
         expect=err("too_large", TOO_LARGE), target=None, id="64MiB-of-real-bytes"),
]

NOT_A_REQUEST = [
    case(encode([]), expect=err("invalid_request", "a request must be a map, got list"),
         target=None, id="request-is-an-array"),
    case(encode(None), expect=err("invalid_request", "a request must be a map, got NoneType"),
         target=None, id="request-is-nil"),
    case(encode("create_sandbox"), expect=err("invalid_request", "a request must be a map, got str"),
         target=None, id="request-is-a-str"),
    case(encode(b"\x00" * 10), expect=err("invalid_request", "a request must be a map, got bytes"),
         target=None, id="request-is-a-bin"),
    case({"id": 1, "name": VICTIM, "mappings": []},
         expect=err("invalid_request", "request has no string field 'op'"), id="op-missing"),
    case({"id": 2, "op": None}, expect=err("invalid_request", "request has no string field 'op'"),
         target=None, id="op-nil"),
    case(req("frobnicate"), expect=err("invalid_request", f"unknown op 'frobnicate'; known: {KNOWN_OPS}"),
         target=None, id="unknown-op"),
    case(req("CREATE_SANDBOX", name=VICTIM, mappings=[]),
         expect=err("invalid_request", "unknown op 'CREATE_SANDBOX'"), id="unknown-op-wrong-case"),
    case(req(""), expect=err("invalid_request", "unknown op ''"), target=None, id="unknown-op-empty"),
]

UNKNOWN_AND_MISSING_FIELDS = [
    case(create(colour="red"), expect=err("invalid_request", "create_sandbox: unknown field(s) colour"),
         id="unknown-field"),
    case(create(paths=["/x"], writable=True),
         expect=err("invalid_request", "create_sandbox: unknown field(s) paths, writable"),
         id="fields-of-other-ops"),
    case({**req("list"), 1: 2}, expect=err("invalid_request", "list: unknown field(s) 1"),
         target=None, id="integer-field-key"),
    case({**req("stats"), b"op": "x"}, expect=err("invalid_request", "stats: unknown field(s) b'op'"),
         target=None, id="bin-field-key"),
    case(req("create_sandbox", mappings=[]),
         expect=err("invalid_request", "create_sandbox: missing field 'name'"), id="create-name-missing"),
    case(req("create_sandbox", name=VICTIM),
         expect=err("invalid_request", "create_sandbox 'victim': missing field 'mappings'"),
         id="create-mappings-missing"),
    case(req("create_sandbox", name=None, mappings=[]),
         expect=err("invalid_request", "create_sandbox: missing field 'name'"), id="create-name-nil"),
    case(req("destroy_sandbox"), expect=err("invalid_request", "destroy_sandbox: missing field 'name'"),
         target=None, id="destroy-name-missing"),
    case(req("map", name=BYSTANDER),
         expect=err("invalid_request", "map 'bystander': missing field 'mappings'"),
         target=None, id="map-mappings-missing"),
    case(req("unmap", name=BYSTANDER),
         expect=err("invalid_request", "unmap 'bystander': missing field 'paths'"),
         target=None, id="unmap-paths-missing"),
    case(req("unmap", paths=["/src"]), expect=err("invalid_request", "unmap: missing field 'name'"),
         target=None, id="unmap-name-missing"),
]

EXT = msgpack.ExtType(5, b"x")
WRONG_VALUES = [("int", 7, "int"), ("float", 1.5, "float"), ("bool", True, "bool"),
                ("array", ["x"], "list"), ("map", {"a": 1}, "dict"), ("ext", EXT, "ExtType")]


def wrong_type_cases() -> list:
    """Every request field of every op, given each msgpack type it does not accept."""
    cases = []
    for kind, value, shown in WRONG_VALUES:
        for op in ("create_sandbox", "destroy_sandbox", "map", "unmap"):
            fields = {"create_sandbox": {"mappings": []}, "map": {"mappings": []},
                      "unmap": {"paths": []}}.get(op, {})
            cases.append(case(
                req(op, name=value, **fields),
                expect=err("invalid_request", f"{op}: field 'name' must be str or bytes, got {shown}"),
                id=f"{op}-name-{kind}"))
        label = f"create_sandbox '{VICTIM}'"
        if kind != "array":
            cases.append(case(
                create(mappings=value),
                expect=err("invalid_request", f"{label}: field 'mappings' must be list, got {shown}"),
                id=f"create-mappings-{kind}"))
            cases.append(case(
                req("map", name=BYSTANDER, mappings=value),
                expect=err("invalid_request", f"map 'bystander': field 'mappings' must be list, got {shown}"),
                target=None, id=f"map-mappings-{kind}"))
            cases.append(case(
                req("unmap", name=BYSTANDER, paths=value),
                expect=err("invalid_request", f"unmap 'bystander': field 'paths' must be list, got {shown}"),
                target=None, id=f"unmap-paths-{kind}"))
        if kind != "map":
            cases.append(case(
                create(prefixes=value),
                expect=err("invalid_request", "create_sandbox: 'prefixes' must be a map of int to path"),
                id=f"prefixes-{kind}"))
        if kind != "int":
            cases.append(case(
                req("ping", version=value),
                expect=err("invalid_request", f"ping: field 'version' must be int, got {shown}"),
                target=None, id=f"version-{kind}"))
        if kind != "str":
            cases.append(case(
                req(value), expect=err("invalid_request", "request has no string field 'op'"),
                target=None, id=f"op-{kind}"))
    cases += [
        case(create(mappings="/src"),
             expect=err("invalid_request", "field 'mappings' must be list, got str"), id="create-mappings-str"),
        case(create(mappings=b"/src"),
             expect=err("invalid_request", "field 'mappings' must be list, got bytes"), id="create-mappings-bin"),
        case(req("unmap", name=BYSTANDER, paths="/src"),
             expect=err("invalid_request", "field 'paths' must be list, got str"), target=None,
             id="unmap-paths-str"),
        case(create(prefixes=None),
             expect=err("invalid_request", "'prefixes' must be a map of int to path"), id="prefixes-nil"),
        case(req("ping", version="1"), expect=err("invalid_request", "field 'version' must be int, got str"),
             target=None, id="version-str"),
        case(req("ping", version=0),
             expect=err("invalid_request", "ping: version 0 is not a protocol version (1 or more)"),
             target=None, id="version-0"),
        case(req("ping", version=-5), expect=err("invalid_request", "version -5 is not a protocol version"),
             target=None, id="version-negative"),
        case(req(b"ping"), expect=err("invalid_request", "request has no string field 'op'"),
             target=None, id="op-bin"),
    ]
    return cases


SHAPE = ("must be [path, underlying, writable], [directory, host_directory, writable, [names]]"
         " or {'group': digest}")


BAD_NAME = "a name is empty, '.' or '..', or has such a component"


def mapping_err(index: int, path: str, reason: str, label: str = f"create_sandbox '{VICTIM}'",
                **details: Any) -> Err:
    """invalid_mapping naming the request, the mapping's flat index and path, and the reason."""
    return err("invalid_mapping", f"{label}: mapping {index} ({path}): {reason}",
               index=index, path=path, reason=reason, **details)


MAPPING_FIELDS = [
    case(create_victim([["/a", h("file")], 5]), expect=mapping_err(1, "5", SHAPE), id="mapping-is-an-int"),
    case(create_victim(["/a"]), expect=mapping_err(0, "'/a'", SHAPE), id="mapping-is-a-str"),
    case(create_victim([["/a"]]), expect=mapping_err(0, "['/a']", SHAPE), id="mapping-of-one-element"),
    case(create_victim([[]]), expect=mapping_err(0, "[]", SHAPE), id="mapping-empty"),
    case(create_victim([["/a", h("file"), False, ["x"], "extra"]]),
         expect=err("invalid_mapping", "mapping 0 (", SHAPE, index=0, reason=SHAPE),
         id="mapping-of-five-elements"),
    case(create_victim([[{"a": 1}, h("file")]]), expect=err("invalid_mapping", "mapping 0",
                                                    reason="path: expected a string or bytes, got dict"),
         id="mapping-path-map"),
    case(create_victim([[5, h("file")]]),
         expect=mapping_err(0, "5", "path: expected a string or bytes, got int"), id="mapping-path-int"),
    case(create_victim([[None, h("file")]]),
         expect=mapping_err(0, "None", "path: expected a string or bytes, got NoneType"),
         id="mapping-path-nil"),
    case(create_victim([[True, h("file")]]),
         expect=mapping_err(0, "True", "path: expected a string or bytes, got bool"), id="mapping-path-bool"),
    case(create_victim([["/a", 5]]),
         expect=mapping_err(0, "/a", "underlying path: expected a string or bytes, got int"),
         id="mapping-underlying-int"),
    case(create_victim([["/a", None]]),
         expect=mapping_err(0, "/a", "underlying path: expected a string or bytes, got NoneType"),
         id="mapping-underlying-nil"),
    case(create_victim([["/a", [h("file")]]]),
         expect=mapping_err(0, "/a", "a prefixed path must be [prefix_id, rest]"),
         id="mapping-underlying-array"),
    case(create_victim([["/a", h("file"), 1]]), expect=mapping_err(0, "/a", "'writable' must be true or false"),
         id="mapping-writable-int"),
    case(create_victim([["/a", h("file"), "yes"]]), expect=mapping_err(0, "/a", "'writable' must be true or false"),
         id="mapping-writable-str"),
    case(create_victim([["/a", h("file"), None]]), expect=mapping_err(0, "/a", "'writable' must be true or false"),
         id="mapping-writable-nil"),
    case(create_victim([["/d", h(""), False, "file"]]),
         expect=mapping_err(0, "/d", "the names of a group must be an array or a NUL-separated bin"),
         id="group-names-str"),
    case(create_victim([["/d", h(""), False, 3]]),
         expect=mapping_err(0, "/d", "the names of a group must be an array or a NUL-separated bin"),
         id="group-names-int"),
    case(create_victim([["/d", h(""), False, ["file", 3]]]),
         expect=mapping_err(0, "/d", "name: expected a string or bytes, got int"), id="group-name-int"),
    case(create_victim([["/d", h(""), False, []]]), expect=mapping_err(0, "/d", "a group has no names"),
         id="group-without-names"),
    case(create_victim([["/d", h(""), None, ["file"]]]),
         expect=mapping_err(0, "/d", "'writable' must be true or false"), id="group-writable-nil"),
]

PATHS = [
    case(create_victim([["/a/../etc", h("file")]]),
         expect=mapping_err(0, "/a/../etc", "path '/a/../etc' has a '..' component"), id="path-dotdot"),
    case(create_victim([["/..", h("file")]]), expect=mapping_err(0, "/..", "path '/..' has a '..' component"),
         id="path-only-dotdot"),
    case(create_victim([["/a/./b", h("file")]]), expect=mapping_err(0, "/a/./b", "path '/a/./b' has a '.' component"),
         id="path-dot"),
    case(create_victim([["/a//b", h("file")]]),
         expect=mapping_err(0, "/a//b", "path '/a//b' has an empty component"), id="path-empty-component"),
    case(create_victim([["/a//", h("file")]]),
         expect=mapping_err(0, "/a//", "path '/a//' has an empty component"), id="path-two-trailing-slashes"),
    case(create_victim([["/a\0b", h("file")]]),
         expect=mapping_err(0, "/a\\x00b", "path '/a\\x00b' contains a NUL byte"), id="path-nul"),
    case(create_victim([[b"/caf\xe9/../x", h("file")]]),
         expect=mapping_err(0, "/caf\\xe9/../x", "path '/caf\\xe9/../x' has a '..' component"),
         id="path-not-utf8-with-dotdot"),
    case(create_victim([["a/b", h("file")]]), expect=mapping_err(0, "a/b", "path 'a/b' is not absolute"),
         id="path-relative"),
    case(create_victim([["", h("file")]]), expect=mapping_err(0, "", "path '' is not absolute"), id="path-empty"),
    case(create_victim([["/ok", h("file")], ["/a", "rel/x"]]),
         expect=mapping_err(1, "/a", "underlying path 'rel/x' is not absolute"), id="underlying-relative"),
    case(create_victim([["/a", ""]]), expect=mapping_err(0, "/a", "underlying path '' is not absolute"),
         id="underlying-empty"),
    case(create_victim([["/a", b"\xff/x"]]), expect=mapping_err(0, "/a", "underlying path '\\xff/x' is not absolute"),
         id="underlying-relative-not-utf8"),
    case(create_victim([["/a", h("file\0x")]]),
         expect=mapping_err(0, "/a", "underlying path '@HOST@/file\\x00x' contains a NUL byte"),
         id="underlying-nul"),
    case(create_victim([["/ok", h("file")], ["/lib/libz.a", h("no-such-file")], ["/also", h("gone")]]),
         expect=mapping_err(1, "/lib/libz.a",
                            "underlying path @HOST@/no-such-file does not exist: "
                            "ENOENT (No such file or directory)", missing=[1, 2]),
         id="underlying-missing"),
    case(create_victim([["/x", h("file/below")]]),
         expect=mapping_err(0, "/x", "underlying path @HOST@/file/below does not exist: "
                                     "ENOTDIR (Not a directory)"),
         id="underlying-below-a-file"),
    case(create_victim([["/a", h("file")], ["/d", h("many"), False, ["f000", "nope", "f001"]]]),
         expect=mapping_err(2, "/d/nope", "underlying path @HOST@/many/nope does not exist: "
                                          "ENOENT (No such file or directory)"),
         id="underlying-missing-in-a-group"),
]

NAMES = [
    case(create(""), expect=err("invalid_request", "sandbox name is empty"), target=None, id="name-empty"),
    case(create("."), expect=err("invalid_request", "sandbox name '.' is not allowed"), target=None,
         id="name-dot"),
    case(create(".."), expect=err("invalid_request", "sandbox name '..' is not allowed"), target=None,
         id="name-dotdot"),
    case(create("a/b"), expect=err("invalid_request", "sandbox name 'a/b' contains '/' or NUL"),
         target="a", id="name-with-slash"),
    case(create("/victim"), expect=err("invalid_request", "sandbox name '/victim' contains '/' or NUL"),
         id="name-absolute"),
    case(create(b"vic\0tim"), expect=err("invalid_request", "sandbox name 'vic\\x00tim' contains '/' or NUL"),
         target="vic", id="name-with-nul"),
    case(create("v" * 256), expect=err("invalid_request", "sandbox name of 256 bytes is longer than 255"),
         target=None, id="name-256-bytes"),
    case(create("x" * 10_000),
         expect=err("invalid_request", "sandbox name of 10000 bytes is longer than 255"),
         target=None, id="name-10000-chars"),
    case(create("é" * 10_000),
         expect=err("invalid_request", "sandbox name of 20000 bytes is longer than 255"),
         target=None, id="name-10000-two-byte-chars"),
    case(create(BYSTANDER, [["/other", h("file")]]),
         expect=err("exists", "create_sandbox 'bystander': a sandbox with this name already exists"),
         target=None, id="name-taken"),
    case(create(VICTIM), create(VICTIM, [["/x", h("file")]]), req("destroy_sandbox", name=VICTIM),
         expect=(Ok(), err("exists", "create_sandbox 'victim': a sandbox with this name already exists"),
                 Ok()),
         id="name-taken-in-the-same-write"),
]

COLLISIONS = [
    case(create_victim([["/a", h("file")], ["/a", h("dir")]]),
         expect=mapping_err(1, "/a", "already mapped"), id="duplicate-in-one-request"),
    case(create_victim([["/a", h("dir")], ["/a/", h("file")]]),
         expect=mapping_err(1, "/a", "already mapped"), id="duplicate-with-trailing-slash"),
    case(create_victim([["/", h("dir")], ["/", h("dir")]]),
         expect=mapping_err(1, "/", "already mapped"), id="duplicate-root"),
    case(create_victim([["/d/file", h("file")], ["/d", h(""), False, ["dir", "file"]]]),
         expect=mapping_err(2, "/d/file", "already mapped"), id="duplicate-of-a-group-member"),
    case(create_victim([["/d", h("many"), False, ["f001", "f002", "f001"]]]),
         expect=mapping_err(2, "/d/f001", "already mapped"), id="duplicate-name-in-a-group"),
    case(create_victim([["/d", h("many"), False, b"f001\0f002\0f001"]]),
         expect=mapping_err(2, "/d/f001", "already mapped"), id="duplicate-name-in-a-bin-group"),
    case(create_victim([["/d", h(""), False, b"many/f001\0many/f002\0many/f001"]]),
         expect=mapping_err(2, "/d/many/f001", "already mapped"), id="duplicate-path-in-a-subtree-group"),
    case(create_victim([["/d", h("many"), False, ["f001", "../x"]]]),
         expect=mapping_err(1, "/d/../x", BAD_NAME), id="group-name-climbing-out"),
    case(create_victim([["/d", h(""), False, ["many/f001", "many/./f002"]]]),
         expect=mapping_err(1, "/d/many/./f002", BAD_NAME), id="group-name-with-a-dot-component"),
    case(create_victim([["/d", h(""), False, b"many/f001\0/etc/passwd"]]),
         expect=mapping_err(1, "/d//etc/passwd", BAD_NAME), id="group-name-absolute"),
    case(create_victim([["/d", h("many"), False, b"f001\0\0f002"]]),
         expect=mapping_err(1, "/d/", BAD_NAME), id="group-empty-name"),
    case(create_victim([["/", h("file")]]),
         expect=mapping_err(0, "/", "the top of a mount or sandbox must be a directory: "
                                    "@HOST@/file: ENOTDIR (Not a directory)"),
         id="sandbox-top-is-a-file"),
    case(create_victim([["/f", h("file")], ["/f/x", h("dir")]]),
         expect=mapping_err(1, "/f/x", "cannot nest below @HOST@/file: ENOTDIR (Not a directory)"),
         id="nest-below-a-file"),
    case(map_bystander(["/new", h("file")], ["/src", h("dir")]),
         expect=mapping_err(1, "/src", "already mapped", label="map 'bystander'"),
         target=None, id="collides-with-existing-mapping"),
    case(map_bystander(["/new", h("file")], ["/deep", h("dir")]),
         expect=mapping_err(1, "/deep", "is a scaffold directory of other mappings; "
                                        "map it before them or not at all", label="map 'bystander'"),
         target=None, id="collides-with-existing-scaffold"),
    case(map_bystander(["/", h("dir")]),
         expect=mapping_err(0, "/", "is a scaffold directory of other mappings; "
                                    "map it before them or not at all", label="map 'bystander'"),
         target=None, id="maps-the-top-of-a-non-empty-sandbox"),
    case(map_bystander(["/new", h("file")], ["/tool/x", h("file")]),
         expect=mapping_err(1, "/tool/x", "cannot nest below @HOST@/tool: ENOTDIR (Not a directory)",
                            label="map 'bystander'"),
         target=None, id="nests-below-an-existing-file"),
    case(map_bystander(["/new", h("file")], ["/new", h("dir")]),
         expect=mapping_err(1, "/new", "already mapped", label="map 'bystander'"),
         target=None, id="map-duplicate-in-one-request"),
    case(create(VICTIM, [["/a", h("dir")]]),
         req("map", name=VICTIM, mappings=[["/b", h("file")], ["/a", h("file")]]),
         req("destroy_sandbox", name=VICTIM),
         expect=(Ok(), mapping_err(1, "/a", "already mapped", label="map 'victim'"), Ok()),
         id="collides-in-a-fresh-sandbox"),
]

UNKNOWN_SANDBOXES = [
    case(req("destroy_sandbox", name="nope"),
         expect=err("not_found", "destroy_sandbox 'nope': no such sandbox"), target="nope",
         id="destroy-unknown"),
    case(req("destroy_sandbox", name="a/b"),
         expect=err("not_found", "destroy_sandbox 'a/b': no such sandbox"), target="a",
         id="destroy-malformed-name"),
    case(req("destroy_sandbox", name=""), expect=err("not_found", "destroy_sandbox '': no such sandbox"),
         target=None, id="destroy-empty-name"),
    case(req("destroy_sandbox", name=b"\xff" * 300),
         expect=err("not_found", "destroy_sandbox '" + "\\xff" * 300 + "': no such sandbox"),
         target=None, id="destroy-long-non-utf8-name"),
    case(req("map", name="nope", mappings=[["/a", h("file")]]),
         expect=err("not_found", "map 'nope': no such sandbox"), target="nope", id="map-unknown"),
    case(req("unmap", name="nope", paths=["/a"]),
         expect=err("not_found", "unmap 'nope': no such sandbox"), target="nope", id="unmap-unknown"),
    case(req("unmap", name=BYSTANDER, paths=["/nothing"]),
         expect=err("not_found", "unmap 'bystander': mapping 0 (/nothing): not mapped",
                    index=0, path="/nothing"),
         target=None, id="unmap-unmapped-path"),
    case(req("unmap", name=BYSTANDER, paths=["/tool", "/deep"]),
         expect=err("not_found", "unmap 'bystander': mapping 1 (/deep): not mapped", index=1, path="/deep"),
         target=None, id="unmap-a-scaffold-all-or-nothing"),
    case(req("unmap", name=BYSTANDER, paths=["/src/data.txt"]),
         expect=err("not_found", "mapping 0 (/src/data.txt): not mapped", index=0, path="/src/data.txt"),
         target=None, id="unmap-a-file-found-on-disk"),
    case(req("unmap", name=BYSTANDER, paths=["/src/../tool"]),
         expect=mapping_err(0, "/src/../tool", "path '/src/../tool' has a '..' component",
                            label="unmap 'bystander'"),
         target=None, id="unmap-path-with-dotdot"),
]

PREFIXES = [
    case(create_victim([[[9, "x"], h("file")]]),
         expect=mapping_err(0, "[9, 'x']", "unknown prefix id 9"), id="prefix-unknown-in-path"),
    case(create_victim([["/x", [9, "file"]]], prefixes={1: "/in"}),
         expect=mapping_err(0, "/x", "unknown prefix id 9"), id="prefix-unknown-in-underlying"),
    case(req("unmap", name=BYSTANDER, paths=["/tool", [4, "x"]]),
         expect=mapping_err(1, "[4, 'x']", "unknown prefix id 4", label="unmap 'bystander'"),
         target=None, id="prefix-unknown-in-unmap"),
    case(create_victim([[[[1], "x"], h("file")]], prefixes={1: "/in"}),
         expect=err("invalid_mapping", "unknown prefix id [1]", index=0, reason="unknown prefix id [1]"),
         id="prefix-id-unhashable"),
    case(req("list", prefixes={1: "/a"}), req("list", prefixes={1: "/b"}),
         expect=(Ok(), err("invalid_request", "list: prefix 1 is already /a, cannot redefine it as /b")),
         target=None, id="prefix-redefined"),
    case(req("list", prefixes={1: "/a"}), create_victim([[[1, "x"], h("file")]], prefixes={1: "/b"}),
         expect=(Ok(), err("invalid_request", "create_sandbox: prefix 1 is already /a, "
                                              "cannot redefine it as /b")),
         id="prefix-redefined-in-create"),
    case(req("list", prefixes={1: "/a"}), req("list", prefixes={1: "/a/"}), create_victim(
        [[[1, "x"], h("nope")]]),
         expect=(Ok(), Ok(), mapping_err(0, "/a/x", "underlying path @HOST@/nope does not exist: "
                                                   "ENOENT (No such file or directory)")),
         id="prefix-registered-again-identically-is-fine"),
    case(req("list", prefixes={1: "/in", 2: "rel"}), create_victim([[[1, "x"], h("nope")]]),
         expect=(err("invalid_request", "list: prefix 2 (rel) must be an absolute path without NUL"),
                 mapping_err(0, "/in/x", "underlying path @HOST@/nope does not exist: "
                                         "ENOENT (No such file or directory)")),
         id="prefix-entries-before-a-bad-one-stay-registered"),
    case(req("list", prefixes={0: "/a"}), expect=err("invalid_request", "list: prefix id 0 is not a positive integer"),
         target=None, id="prefix-id-0"),
    case(req("list", prefixes={-3: "/a"}), expect=err("invalid_request", "prefix id -3 is not a positive integer"),
         target=None, id="prefix-id-negative"),
    case(req("list", prefixes={"1": "/a"}), expect=err("invalid_request", "prefix id '1' is not a positive integer"),
         target=None, id="prefix-id-str"),
    case(req("list", prefixes={True: "/a"}), expect=err("invalid_request", "prefix id True is not a positive integer"),
         target=None, id="prefix-id-bool"),
    case(req("list", prefixes={1: "a/b"}),
         expect=err("invalid_request", "list: prefix 1 (a/b) must be an absolute path without NUL"),
         target=None, id="prefix-relative"),
    case(req("list", prefixes={1: "/a\0b"}),
         expect=err("invalid_request", "list: prefix 1 (/a\\x00b) must be an absolute path without NUL"),
         target=None, id="prefix-nul"),
    case(req("list", prefixes={1: 5}),
         expect=err("invalid_request", "list: prefix 1: expected a string or bytes, got int"),
         target=None, id="prefix-path-int"),
    case(create_victim([[[3, "x"], h("file")]], prefixes={3: "/a/../b"}),
         expect=mapping_err(0, "/a/../b/x", "prefix 3: path '/a/../b' has a '..' component"),
         id="prefix-with-dotdot-used-inside"),
    case(create_victim([[[1, "../x"], h("file")]], prefixes={1: "/in"}),
         expect=mapping_err(0, "/in/../x", "relative path '../x' is not a plain relative path"),
         id="prefixed-rest-dotdot"),
    case(create_victim([[[1, "x//y"], h("file")]], prefixes={1: "/in"}),
         expect=mapping_err(0, "/in/x//y", "relative path 'x//y' is not a plain relative path"),
         id="prefixed-rest-empty-component"),
    case(create_victim([[[1, "/x"], h("file")]], prefixes={1: "/in"}),
         expect=mapping_err(0, "/in//x", "relative path '/x' is not a plain relative path"),
         id="prefixed-rest-absolute"),
    case(create_victim([["/x", [1, "/file"]]], prefixes={1: "/h"}),
         expect=mapping_err(0, "/x", "relative path '/file' is absolute or has NUL"),
         id="prefixed-underlying-rest-absolute"),
    case(create_victim([[[1], h("file")]], prefixes={1: "/in"}),
         expect=mapping_err(0, "[1]", "a prefixed path must be [prefix_id, rest]"), id="prefixed-not-a-pair"),
]

CATALOGUE = (FRAMING + SIZE + NOT_A_REQUEST + UNKNOWN_AND_MISSING_FIELDS + wrong_type_cases()
             + MAPPING_FIELDS + PATHS + NAMES + COLLISIONS + UNKNOWN_SANDBOXES + PREFIXES)


# -- checks --------------------------------------------------------------------------------


def check_reply(reply: dict, expected: Ok | Err, expected_id: Any) -> None:
    assert reply.get("id") == expected_id, reply
    if isinstance(expected, Ok):
        assert "result" in reply, reply
        return
    assert set(reply) == {"id", "error"}, reply
    error = reply["error"]
    assert error["code"] == expected.code, reply
    message, details = error["message"], error["details"]
    assert isinstance(message, str) and message.isprintable(), reply
    for part in expected.parts:
        assert part in message, (part, reply)
    for key, value in expected.details.items():
        assert details.get(key) == value, (key, reply)
    check_details_shape(expected.code, message, details)


def check_details_shape(code: str, message: str, details: dict) -> None:
    """§8: the details each code carries, and that the message repeats them."""
    if code == "invalid_mapping":
        assert {"index", "path", "reason"} <= set(details), details
        assert message.endswith(f"mapping {details['index']} ({details['path']}): {details['reason']}")
    elif code == "not_found" and details:
        assert set(details) == {"index", "path"}, details
        assert f"mapping {details['index']} ({details['path']}): not mapped" in message
    else:
        assert details == {}, (code, details)


def check_connection(sock: socket.socket, replies: Replies, closes: bool) -> None:
    """§8: closed after a fatal error; otherwise the next request is served as usual."""
    if closes:
        assert replies.rest_until_eof() == [], "the server answers once, then closes"
        return
    sock.sendall(encode({"id": "still-open", "op": "ping"}))
    (pong,) = replies.take(1)
    assert pong["id"] == "still-open" and pong["result"]["protocol"] == 1, pong


def check_bystander_and_no_leftovers(server: Server, target: str | bytes | None) -> None:
    """The bystander still serves its file; no other sandbox exists, in the tree or the mount."""
    assert open(server.path(BYSTANDER, "src", "data.txt"), "rb").read() == BYSTANDER_DATA
    assert sorted(os.listdir(server.path(BYSTANDER))) == [os.fsencode(e) for e in BYSTANDER_ENTRIES]
    with Client(server.control) as client:
        assert client.list() == [{"name": BYSTANDER, "mappings": len(BYSTANDER_ENTRIES)}]
        assert client.stats()["mappings"] == len(BYSTANDER_ENTRIES)
    assert os.listdir(server.mount.mount_point) == [BYSTANDER]
    if target is not None:
        with pytest.raises(FileNotFoundError):
            os.lstat(server.path(target))


# -- the catalogue test --------------------------------------------------------------------


@pytest.mark.parametrize("bad", CATALOGUE)
def test_bad_input_gets_the_documented_error_and_disturbs_nothing(server: Server, bad: Case):
    expect = resolve_host(bad.expect, server.host)
    payload = bad.payload(server.host)
    with connect(server) as sock:
        replies = Replies(sock)

        send_ignoring_close(sock, payload)
        answers = replies.take(len(expect))

        assert len(answers) == len(expect), answers
        for answer, expected, expected_id in zip(answers, expect, bad.expected_ids()):
            check_reply(answer, expected, expected_id)
        check_connection(sock, replies, bad.closes)
    check_bystander_and_no_leftovers(server, bad.target)


# -- cases that need more than one exchange ------------------------------------------------


def test_ascii_text_is_a_stream_of_small_integers_each_refused(server: Server):
    """Every ASCII byte is a msgpack positive fixint: one invalid_request per byte, never a close."""
    text = b"GET / HTTP/1.0\r\n\r\n"
    with connect(server) as sock:
        replies = Replies(sock)

        sock.sendall(text)
        answers = replies.take(len(text))

        assert [a["error"]["message"] for a in answers] == ["a request must be a map, got int"] * len(text)
        assert {a["error"]["code"] for a in answers} == {"invalid_request"}
        check_connection(sock, replies, closes=False)
    check_bystander_and_no_leftovers(server, None)


@pytest.mark.parametrize(
    "truncated",
    [encode(create(VICTIM, [["/a", "/tmp"]]))[:-3], b"\x83\xa2op\xaecreate_sandbox", b"\xdb\x00\x00\x10\x00ab"],
    ids=["create-cut-3-bytes-short", "map-header-then-eof", "str-header-then-eof"],
)
def test_truncated_message_then_eof_is_dropped_unapplied(server: Server, truncated: bytes):
    """Docs §2 only say what a stall does; at EOF the half message is dropped without an answer."""
    with connect(server) as sock:
        replies = Replies(sock)

        sock.sendall(truncated)
        sock.shutdown(socket.SHUT_WR)

        assert replies.rest_until_eof() == []
    check_bystander_and_no_leftovers(server, VICTIM)


def test_longest_name_and_non_utf8_names_and_paths_are_accepted(server: Server):
    """The limits are exact: 255 bytes work, and bin names and paths need not be UTF-8."""
    longest, odd = "n" * 255, b"job\xff\xfe"
    with Client(server.control) as client:
        assert client.create_sandbox(longest, [])["mappings"] == 0
        client.create_sandbox(odd, [(b"/caf\xe9", server.host / "file")])

        assert [s["name"] for s in client.list()] == [BYSTANDER, longest, odd]  # bin: not UTF-8
        assert os.listdir(server.path(odd)) == [b"caf\xe9"]
        assert open(server.path(odd, b"caf\xe9"), "rb").read() == b"file\n"
        assert os.path.isdir(server.path(longest))

        client.destroy_sandbox(longest)
        client.destroy_sandbox(odd)
    check_bystander_and_no_leftovers(server, odd)


def million_mappings(host: Path) -> list:
    """1,000 groups of 1,000 names: a million mappings in ~5 MB, the form the client sends."""
    names = b"\0".join(b"f%03d" % j for j in range(MILLION_NAMES))
    return [[f"/d{k:03}", str(host / "many"), False, names] for k in range(MILLION_DIRS)]


def test_million_mapping_request_is_accepted_and_served(server: Server):
    """§5/§7: groups keep huge sandboxes cheap; a million mappings fit well under 64 MiB."""
    message = create("million", million_mappings(server.host))
    with connect(server) as sock:
        replies = Replies(sock)

        sock.sendall(encode(message))
        (answer,) = replies.take(1)

        result = answer["result"]
        assert answer["id"] == message["id"]
        assert (result["name"], result["mappings"], result["path"]) == (
            "million", MILLION_DIRS * MILLION_NAMES, os.fsdecode(server.path("million")))
        held = result["groups"]  # the groups the store's memory budget kept, by digest
        assert 0 < len(held) <= MILLION_DIRS and len(set(held)) == len(held)
        assert all(type(digest) is bytes and len(digest) == 32 for digest in held)
        assert open(server.path("million", "d999", "f999"), "rb").read() == b"999\n"
        assert open(server.path("million", "d000", "f000"), "rb").read() == b"0\n"
        assert len(os.listdir(server.path("million", "d500"))) == MILLION_NAMES
        assert open(server.path(BYSTANDER, "src", "data.txt"), "rb").read() == BYSTANDER_DATA

        sock.sendall(encode({"id": "d", "op": "destroy_sandbox", "name": "million"}))
        assert replies.take(1) == [{"id": "d", "result": {"name": "million"}}]
    check_bystander_and_no_leftovers(server, "million")


def test_million_mapping_request_refused_at_its_last_mapping_leaves_nothing(server: Server):
    mappings = million_mappings(server.host)
    last = MILLION_DIRS * MILLION_NAMES - 1
    mappings[-1][3] = mappings[-1][3].replace(b"f999", b"gone")
    message = create("million", mappings)
    with connect(server) as sock:
        replies = Replies(sock)

        sock.sendall(encode(message))
        (answer,) = replies.take(1)

        reason = (f"underlying path {server.host}/many/gone does not exist: "
                  "ENOENT (No such file or directory)")
        check_reply(answer, err("invalid_mapping", "create_sandbox 'million': ",
                                index=last, path="/d999/gone", reason=reason, missing=[last]),
                    message["id"])
        check_connection(sock, replies, closes=False)
    check_bystander_and_no_leftovers(server, "million")


# -- the command line ----------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sandboxfs", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "flag, reason",
    [
        ("ro:/a/../b:/tmp", "path '/a/../b' has a '..' component"),
        ("ro:/a//b:/tmp", "path '/a//b' has an empty component"),
        ("rw::/tmp", "path '' is not absolute"),
    ],
    ids=["dotdot", "empty-component", "empty-path"],
)
def test_mount_with_a_bad_mapping_flag_exits_2(tmp_path: Path, flag: str, reason: str):
    nowhere = tmp_path / "no-such-mount-point"  # even a regression could not mount here

    result = run_cli("mount", "--mapping", flag, str(nowhere))

    assert result.returncode == 2
    assert f"argument --mapping: bad mapping {flag}: {reason}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not nowhere.exists()


def requests_served(server: Server) -> int:
    with Client(server.control) as client:
        return sum(client.stats()["requests"].values())


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--mapping", "ro:/a/../b:@HOST@/file"], "argument --mapping: bad mapping ro:/a/../b:"),
        (["--mapping", "ro:/a:relative"], "underlying path 'relative' is not absolute"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
    ids=["dotdot", "relative-underlying", "unknown-flag"],
)
def test_cli_create_usage_errors_exit_2_before_sending_anything(server: Server, args, needle):
    before = requests_served(server)

    result = run_cli("create", VICTIM, "--control", str(server.control),
                     *resolve_host(args, server.host))

    assert result.returncode == 2
    assert needle in result.stderr
    assert requests_served(server) == before + 1  # only our own stats request
    check_bystander_and_no_leftovers(server, VICTIM)


@pytest.mark.parametrize(
    "name, args, message",
    [
        ("a/b", [], "sandbox name 'a/b' contains '/' or NUL"),
        ("", [], "sandbox name is empty"),
        ("x" * 10_000, [], "sandbox name of 10000 bytes is longer than 255"),
        (BYSTANDER, [], "create_sandbox 'bystander': a sandbox with this name already exists"),
        (VICTIM, ["--mapping", "ro:/x:@HOST@/no-such-file"],
         "create_sandbox 'victim': mapping 0 (/x): underlying path @HOST@/no-such-file "
         "does not exist: ENOENT (No such file or directory)"),
        (VICTIM, ["--mapping", "ro:/a:@HOST@/file", "--mapping", "ro:/b:@HOST@/dir",
                  "--mapping", "rw:/a:@HOST@/dir"],
         "create_sandbox 'victim': mapping 2 (/a): already mapped"),
    ],
    ids=["name-with-slash", "name-empty", "name-10000-chars", "name-taken", "underlying-missing",
         "duplicate-mapping"],
)
def test_cli_create_refused_by_the_server_exits_1(server: Server, name: str, args, message):
    result = run_cli("create", name, "--control", str(server.control),
                     *resolve_host(args, server.host))

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == f"sandboxfs: {resolve_host(message, server.host)}\n"
    check_bystander_and_no_leftovers(server, VICTIM)


def test_cli_create_from_a_garbage_file_exits_1(server: Server, tmp_path: Path):
    garbage = tmp_path / "mappings.bin"
    garbage.write_bytes(b"\xc1\xc1 not json, not msgpack")

    result = run_cli("create", VICTIM, "--control", str(server.control), "--from", str(garbage))

    assert result.returncode == 1
    assert result.stderr.startswith(f"sandboxfs: --from {garbage}: neither JSON nor msgpack")
    check_bystander_and_no_leftovers(server, VICTIM)
