"""Property-based tests (hypothesis) of the control codec and of the mapping tree.

Adds to the two properties of test_protocol.py (the client's ``_Session``
round trip, and junk values raising only ``SandboxfsError``) and to the
random-operations test of test_tree.py (which inspects the tree's internal
structure):

* **codec round trip**: requests written by hand in every wire form the
  protocol allows (absolute str or bin paths with or without a trailing
  slash, ``[prefix_id, rest]`` with the prefix registered in this request
  or an earlier one, identical re-registrations, groups with names as an
  array or one NUL-separated bin, ``writable`` omitted) go through msgpack
  framing, split at random byte boundaries, and decode to exactly the
  mappings, paths, name and id that were meant; responses and names survive
  the trip too;
* **rejection**: one random mutation of a valid request (a field dropped,
  set to nil or to a wrong type, an unknown field or op, a mapping element
  of the wrong shape or type, a bad inner or host path, an unknown or
  redefined prefix id, bad group names) always raises a ``SandboxfsError``
  whose code is the one that kind of mutation calls for, with the mutated
  mapping's flat index, and decoding it again gives the same error;
* **the tree as a state machine** (``RuleBasedStateMachine``):
  create/destroy/map/unmap with valid and invalid names, mapping groups,
  nested and root mappings, files, directories, symlinks and missing host
  paths; after every step everything visible through ``lookup`` and
  ``list_directory`` (path, kind, host path, writable), including host
  entries found on disk and shadowed by overlays, equals what a plain dict
  model predicts, and a failed operation changes nothing.

Pure apart from a small host tree for the state machine.
"""

from __future__ import annotations

import os
import stat
import tempfile
import unicodedata
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from sandboxfs.errors import (
    InvalidRequestError,
    MappingError,
    NotFoundError,
    SandboxExistsError,
    SandboxfsError,
)
from sandboxfs.control.framing import MessageReader, encode
from sandboxfs.control.protocol import PrefixTable, decode_request, error, name_value, ok, request_id
from sandboxfs.control.requests import OPS
from sandboxfs.tree.groups import Group, group_of
from sandboxfs.tree.lookup import list_directory, lookup
from sandboxfs.tree.mapping import Mapping, display
from sandboxfs.tree.nodes import HostNode, ScaffoldDir
from sandboxfs.tree.sandboxes import MAX_SANDBOX_NAME, Tree

Flat = tuple[tuple[bytes, ...], bytes, bool]  # (components inside, host path, writable)
DOCUMENTED_OPS = ("ping", "create_sandbox", "destroy_sandbox", "map", "unmap", "list", "stats")

# -- strategies of valid values ---------------------------------------------------------

COMPONENT = st.one_of(
    st.sampled_from([b"a", b"inc", b"x.h", b"...", b".x", b"caf\xc3\xa9", b"caf\xe9", b"\xff"]),
    st.binary(min_size=1, max_size=5).filter(
        lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")),
)
# Host paths are used as given: '.' and '..' are allowed there (docs §4).
HOST_COMPONENT = COMPONENT | st.sampled_from([b".", b".."])
INNER = st.lists(COMPONENT, max_size=4).map(tuple)
HOST = st.lists(HOST_COMPONENT, max_size=4).map(tuple)
IDS = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=5)
    | st.binary(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)


def join(components: tuple[bytes, ...]) -> bytes:
    return b"/" + b"/".join(components)


def as_text_or_bytes(draw, raw: bytes) -> str | bytes:
    """str when ``raw`` is UTF-8 and the draw says so (msgpack str must be UTF-8), else bin."""
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return raw
    return text if draw(st.booleans()) else raw


class WireWriter:
    """Writes paths in random wire forms, registering prefixes as a real client would.

    ``known`` holds the prefixes of earlier requests on the connection; ``table``
    is the ``prefixes`` map of the request being written.
    """

    def __init__(self, draw, known: dict[bytes, int], next_id: list[int]) -> None:
        self.draw = draw
        self.known = known
        self.next_id = next_id
        self.table: dict[int, Any] = {}

    def _prefix_id(self, directory: bytes) -> int:
        draw = self.draw
        key = self.known.get(directory)
        if key is None:
            key = self.next_id[0]
            self.next_id[0] += 1
            self.known[directory] = key
            self.table[key] = self._spelled(directory)
        elif draw(st.booleans()):  # registering again with the same path is fine
            self.table[key] = self._spelled(directory)
        return key

    def _spelled(self, directory: bytes) -> str | bytes:
        """A directory as a prefix value: maybe with trailing slashes (they are dropped)."""
        slashes = b"/" * self.draw(st.integers(0, 2)) if directory != b"/" else b""
        return as_text_or_bytes(self.draw, directory + slashes)

    def inner(self, components: tuple[bytes, ...]) -> Any:
        draw = self.draw
        if draw(st.booleans()):
            split = draw(st.integers(0, len(components)))
            rest = b"/".join(components[split:])
            return [self._prefix_id(join(components[:split])), as_text_or_bytes(draw, rest)]
        raw = join(components)
        if components and draw(st.booleans()):
            raw += b"/"  # one trailing slash is tolerated
        return as_text_or_bytes(draw, raw)

    def host(self, components: tuple[bytes, ...]) -> Any:
        draw = self.draw
        if draw(st.booleans()):
            split = draw(st.integers(0, len(components)))
            rest = b"/".join(components[split:])
            return [self._prefix_id(join(components[:split])), as_text_or_bytes(draw, rest)]
        raw = join(components) + b"/" * draw(st.integers(0, 2))
        return as_text_or_bytes(draw, raw)


@st.composite
def mapping_elements(draw, writer: WireWriter) -> tuple[list, list[Flat]]:
    """One element of ``mappings`` (a mapping or a group) and the flat mappings it means."""
    writable = draw(st.booleans())
    if draw(st.integers(0, 3)) == 0:  # a group
        directory, host_dir = draw(INNER), draw(HOST)
        names = draw(st.lists(COMPONENT, min_size=1, max_size=5, unique=True))
        if draw(st.booleans()):
            wire_names: Any = b"\0".join(names)
        else:
            wire_names = [as_text_or_bytes(draw, n) for n in names]
        element = [writer.inner(directory), writer.host(host_dir), writable, wire_names]
        return element, [(directory + (n,), join(host_dir + (n,)), writable) for n in names]
    inner, host = draw(INNER), draw(HOST)
    element = [writer.inner(inner), writer.host(host)]
    if writable or draw(st.booleans()):
        element.append(writable)
    return element, [(inner, join(host), writable)]


@st.composite
def valid_requests(draw, known: dict[bytes, int], next_id: list[int]) -> tuple[dict, dict]:
    """A valid request and what it must decode to: {"op", "name", "flat" or "paths"}."""
    op = draw(st.sampled_from(DOCUMENTED_OPS))
    writer = WireWriter(draw, known, next_id)
    message: dict[Any, Any] = {"op": op}
    if draw(st.booleans()):
        message["id"] = draw(IDS)
    meant: dict[str, Any] = {"op": op, "id": message.get("id")}
    if op in ("create_sandbox", "destroy_sandbox", "map", "unmap"):
        name = draw(st.binary(min_size=1, max_size=8))
        message["name"] = as_text_or_bytes(draw, name)
        meant["name"] = name
    if op in ("create_sandbox", "map"):
        elements = draw(st.lists(mapping_elements(writer), max_size=6))
        message["mappings"] = [element for element, _ in elements]
        meant["flat"] = [m for _, flat in elements for m in flat]
    elif op == "unmap":
        paths = draw(st.lists(INNER, max_size=5))
        message["paths"] = [writer.inner(p) for p in paths]
        meant["paths"] = paths
    elif op == "ping" and draw(st.booleans()):
        message["version"] = draw(st.integers(1, 2**40))
    if writer.table or draw(st.integers(0, 9)) == 0:
        message["prefixes"] = writer.table
    return message, meant


def flat(specs) -> list[Flat]:
    """(components, host path, writable) of each mapping, groups expanded."""
    out: list[Flat] = []
    for spec in specs:
        if isinstance(spec, Group):
            for part in spec.parts:
                base = part.host_dir if part.host_dir != b"/" else b""
                out.extend((part.directory + (n,), base + b"/" + n, part.writable)
                           for n in part.names)
        else:
            out.append((spec.components, spec.underlying, spec.writable))
    return out


def normalised_host(path: bytes) -> bytes:
    """A host path as the decoder keeps it: trailing slashes dropped, nothing else touched."""
    return path.rstrip(b"/") or b"/"


def over_the_wire(messages: list, cuts: list[int]) -> list:
    """Encode ``messages`` as one stream, deliver it in pieces cut at ``cuts``, decode."""
    data = b"".join(encode(m) for m in messages)
    reader = MessageReader()
    out: list = []
    start = 0
    for cut in sorted({min(c, len(data)) for c in cuts} | {len(data)}):
        reader.feed(data[start:cut])
        out.extend(reader.drain())
        start = cut
    return out


# -- codec round trip -----------------------------------------------------------------


@st.composite
def connections(draw) -> list[tuple[dict, dict]]:
    """Several requests on one connection: later ones reuse earlier prefixes."""
    known: dict[bytes, int] = {}
    next_id = [1]
    return draw(st.lists(valid_requests(known, next_id), min_size=1, max_size=4))


@settings(deadline=None)
@given(requests=connections(), cuts=st.lists(st.integers(0, 4000), max_size=6))
def test_valid_requests_in_every_wire_form_decode_to_what_was_meant(requests, cuts):
    messages = [message for message, _ in requests]
    prefixes = PrefixTable()

    received = over_the_wire(messages, cuts)

    assert len(received) == len(messages)
    for message, (_, meant) in zip(received, requests):
        request = decode_request(message, prefixes)
        assert (request.op, request_id(message)) == (meant["op"], meant["id"])
        if "name" in meant:
            assert request.name == meant["name"]
        if "flat" in meant:
            expected = [(inner, normalised_host(host), w) for inner, host, w in meant["flat"]]
            assert flat(request.mappings) == expected
        if "paths" in meant:
            assert list(request.paths) == meant["paths"]


@settings(deadline=None)
@given(request_id=IDS, result=st.dictionaries(st.text(max_size=5), IDS, max_size=4),
       code=st.sampled_from(["exists", "not_found", "invalid_mapping", "invalid_request"]),
       message=st.text(max_size=20), cuts=st.lists(st.integers(0, 300), max_size=4))
def test_responses_round_trip(request_id, result, code, message, cuts):
    answers = [ok(request_id, result), error(request_id, code, message, {"index": 3, "path": "/a"})]

    assert over_the_wire(answers, cuts) == answers


@given(raw=st.binary(max_size=12))
def test_names_in_responses_are_str_exactly_when_utf8_and_lose_nothing(raw):
    value = name_value(raw)

    try:
        raw.decode()
        assert value == raw.decode()
    except UnicodeDecodeError:
        assert value == raw
    assert msgpack.unpackb(encode(value), raw=False) == value


@given(raw=st.binary(max_size=12))
def test_display_is_utf8_without_c0_controls_and_keeps_plain_ascii(raw):
    shown = display(raw)

    shown.encode("utf-8")  # never raises: any message can travel as a msgpack str
    assert not any(ord(c) < 32 for c in shown)
    if raw.isascii() and all(32 <= b < 127 and b != 0x5C for b in raw):
        assert shown == raw.decode()


@given(raw=st.binary(max_size=12))
def test_display_escapes_every_control_character(raw):
    assert not any(unicodedata.category(c) == "Cc" for c in display(raw))


# -- rejection of mutated requests -----------------------------------------------------

REQUIRED = {
    "create_sandbox": ("name", "mappings"),
    "destroy_sandbox": ("name",),
    "map": ("name", "mappings"),
    "unmap": ("name", "paths"),
}
WRONG_FOR = {  # values each field refuses, by field
    "name": [5, 1.5, True, ["s"], {"s": 1}, msgpack.ExtType(1, b"s")],
    "mappings": [5, 1.5, False, "/a", b"/a", {"a": 1}],
    "paths": [5, 1.5, True, "/a", b"/a", {"a": 1}],
    "version": ["1", 1.0, True, [1], 0, -1],
    "prefixes": [[[1, "/a"]], "/a", 3, None, True],
}
BAD_INNER = ["a/b", "", "/a/../b", "/..", "/a/./b", "/a//b", "//a", "/a\0b", b"/\xff/\0", "/a//"]
BAD_HOST = ["rel", "", "/h/\0x", b"\xff/x", "./x"]
# Each is refused at decoding, at the group's first index: the culprit is its first name.
# (A name listed twice is the tree's to refuse; "a/b" is a relative path, which is fine.)
BAD_NAMES = [[], ["a//b", "c"], ["/a"], ["a/"], [""], ["."], ["..", "b"], ["a/./b"], ["a\0b"], [1],
             b"\0a", b"./x\0b", 5, None]
NOT_ELEMENTS = [5, "/a", None, [], ["/a"], ["/a", "/h", False, ["x"], "extra"]]
WRONG_PARTS = [5, None, 1.5, {"a": 1}, True]
WRONG_WRITABLE = [1, 0, "yes", None, 1.0, []]


def flat_index(message: dict, position: int) -> int:
    """The flat index (§5) of element ``position`` of a valid request's ``mappings``."""
    index = 0
    for element in message["mappings"][:position]:
        if len(element) == 4:
            names = element[3]
            index += len(names.split(b"\0")) if isinstance(names, bytes) else len(names)
        else:
            index += 1
    return index


@st.composite
def mutations(draw, message: dict) -> tuple[str, Any]:
    """Mutate ``message`` in place; return (expected code, expected details.index or None)."""
    op = message["op"]
    choices = ["unknown-field", "wrong-op", "bad-prefix-entry", "redefine-prefix"]
    if op in REQUIRED:
        choices += ["drop-required", "nil-required"]
    choices.append("wrong-type")
    if message.get("mappings"):
        choices += ["bad-element", "bad-part", "bad-writable", "bad-inner", "bad-host", "unknown-prefix"]
        if any(len(e) == 4 for e in message["mappings"]):
            choices.append("bad-group-names")
    if message.get("paths"):
        choices += ["bad-unmap-path"]
    kind = draw(st.sampled_from(choices))
    if kind in ("drop-required", "nil-required"):
        field = draw(st.sampled_from(REQUIRED[op]))
        if kind == "drop-required":
            del message[field]
        else:
            message[field] = None
        return "invalid_request", None
    if kind == "unknown-field":
        key = draw(st.text(max_size=6) | st.integers() | st.binary(max_size=3))
        assume(key not in ("id", "op", "prefixes", "name", "mappings", "paths", "version",
                           "track_access"))
        message[key] = draw(IDS)
        return "invalid_request", None
    if kind == "wrong-op":
        message["op"] = draw(st.text(max_size=8).filter(lambda t: t not in OPS)
                             | st.sampled_from([None, 1, b"ping", ["map"], True]))
        return "invalid_request", None
    if kind == "wrong-type":
        fields = [f for f in message if f in WRONG_FOR] + ["prefixes"] + (["version"] if op == "ping" else [])
        field = draw(st.sampled_from(fields))
        message[field] = draw(st.sampled_from(WRONG_FOR[field]))
        return "invalid_request", None
    if kind == "bad-prefix-entry":
        key, value = draw(st.sampled_from([(0, "/a"), (-1, "/a"), ("1", "/a"), (True, "/a"),
                                           (b"1", "/a"), (1.5, "/a"), (99, "rel"), (99, ""),
                                           (99, "/a\0b"), (99, 5), (99, None)]))
        prefixes = message.setdefault("prefixes", {})
        prefixes.pop(key, None)
        message["prefixes"] = {key: value, **prefixes}  # first: nothing else may fail before it
        return "invalid_request", None
    if kind == "redefine-prefix":  # id 1000 was registered as /registered before this request
        message["prefixes"] = {**message.get("prefixes", {}), 1000: "/elsewhere"}
        return "invalid_request", None
    if kind == "bad-unmap-path":
        position = draw(st.integers(0, len(message["paths"]) - 1))
        message["paths"][position] = draw(st.sampled_from(
            BAD_INNER + [[999, "x"], [1], [1000, "../x"], 5, None, {"a": 1}]))
        return "invalid_mapping", position
    position = draw(st.integers(0, len(message["mappings"]) - 1))
    element = message["mappings"][position]
    if kind == "bad-group-names":
        positions = [i for i, e in enumerate(message["mappings"]) if len(e) == 4]
        position = draw(st.sampled_from(positions))
        message["mappings"][position][3] = draw(st.sampled_from(BAD_NAMES))
    elif kind == "bad-element":
        message["mappings"][position] = draw(st.sampled_from(NOT_ELEMENTS))
    elif kind == "bad-part":
        element[draw(st.integers(0, 1))] = draw(st.sampled_from(WRONG_PARTS))
    elif kind == "bad-writable":
        while len(element) < 3:
            element.append(False)
        element[2] = draw(st.sampled_from(WRONG_WRITABLE))
    elif kind == "bad-inner":
        element[0] = draw(st.sampled_from(BAD_INNER + [[1000, "../x"], [1000, "/x"], [1000, "a//b"]]))
    elif kind == "bad-host":
        element[1] = draw(st.sampled_from(BAD_HOST + [[1000, "/x"], [1000, "x\0"]]))
    else:  # unknown-prefix
        element[draw(st.integers(0, 1))] = [draw(st.sampled_from([999, 0, -1, "1", [1], None])), "x"]
    return "invalid_mapping", flat_index(message, position)


def registered_table() -> PrefixTable:
    """A connection's table after an earlier request registered id 1000."""
    prefixes = PrefixTable()
    prefixes.register({1000: "/registered"}, "earlier")
    return prefixes


def decode_error(message: Any, prefixes: PrefixTable) -> SandboxfsError:
    try:
        decode_request(message, prefixes)
    except SandboxfsError as exc:
        return exc
    raise AssertionError(f"accepted: {message!r}")


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_mutated_request_gets_a_stable_code_and_index(data):
    message, _ = data.draw(valid_requests({b"/registered": 1000}, [1001]))
    code, index = data.draw(mutations(message))
    wire = msgpack.unpackb(encode(message), raw=False, strict_map_key=False)

    exc = decode_error(wire, registered_table())

    assert exc.code == code, exc.message
    assert (exc.details.get("index") if code == "invalid_mapping" else None) == index, exc.message
    again = decode_error(msgpack.unpackb(encode(message), raw=False, strict_map_key=False),
                         registered_table())
    assert (again.code, again.message, again.details) == (exc.code, exc.message, exc.details)
    if code == "invalid_mapping":
        assert exc.message.endswith(
            f"mapping {index} ({exc.details['path']}): {exc.details['reason']}")


# -- the tree as a state machine ---------------------------------------------------------

KINDS = ("dir", "file", "link", "missing")
NAMES = (b"a", b"b", b"\xff")
PATHS = [(), (b"a",), (b"a", b"b"), (b"a", b"b", b"a"), (b"b",), (b"\xff",), (b"a", b"\xff")]
GOOD_SANDBOXES = [b"s1", b"s\xff"]
BAD_SANDBOXES = [b"", b".", b"..", b"a/b", b"x\0y", b"n" * (MAX_SANDBOX_NAME + 1)]
# (path, kind, writable); a missing host path fails the whole batch: keep it rare.
ITEMS = st.tuples(st.sampled_from(PATHS),
                  st.sampled_from(["dir"] * 6 + ["file"] * 3 + ["link"] + ["missing"]),
                  st.booleans())
View = dict[tuple[bytes, ...], tuple[str, bytes | None, bool]]


def make_model_host(base: Path) -> Path:
    """``KIND/NAME`` for each kind and name: a dir holding ``f`` and ``b/f``, a file, or a
    symlink to a dir; so a read-only mapping whose host name equals its name is a lazy leaf,
    and mapped directories have entries of their own for overlays to shadow."""
    for raw in NAMES:
        name = os.fsdecode(raw)
        (base / "dir" / name / "b").mkdir(parents=True)
        (base / "dir" / name / "f").write_bytes(b"f")
        (base / "dir" / name / "b" / "f").write_bytes(b"bf")
        (base / "file").mkdir(exist_ok=True)
        (base / "file" / name).write_bytes(raw)
        (base / "link").mkdir(exist_ok=True)
        (base / "link" / name).symlink_to(base / "dir" / "a")
    return base


def host_for(base: bytes, path: tuple[bytes, ...], kind: str) -> bytes:
    return base + b"/" + kind.encode() + b"/" + (path[-1] if path else b"a")


def kind_of(mode: int) -> str:
    return "dir" if stat.S_ISDIR(mode) else "link" if stat.S_ISLNK(mode) else "file"


def tree_view(tree: Tree) -> View:
    """Everything a FUSE client can see: path -> (kind, host path, writable), via lookup."""
    view: View = {}

    def walk(node, path: tuple[bytes, ...]) -> None:
        for name, _ in list_directory(node):
            found = lookup(node, name)
            assert found is not None, (path, name)
            child, st_ = found
            if isinstance(child, ScaffoldDir):
                entry = ("scaffold", None, False)
            else:
                assert isinstance(child, HostNode)
                entry = (kind_of(st_.st_mode), child.host_path(), child.writable)
            view[path + (name,)] = entry
            if entry[0] in ("scaffold", "dir"):
                walk(child, path + (name,))

    walk(tree.root, ())
    return view


def host_entries(host: bytes, path: tuple[bytes, ...], writable: bool, explicit, view: View) -> None:
    """Entries found on disk below mapped directory ``host`` at ``path``, unless shadowed."""
    for name in os.listdir(host):
        inner = path + (name,)
        if inner in explicit:
            continue  # a mapping or a scaffold overlays the host entry
        child = host + b"/" + name
        kind = kind_of(os.lstat(child).st_mode)
        view[inner] = (kind, child, writable)
        if kind == "dir":
            host_entries(child, inner, writable, explicit, view)


def model_view(model: dict[bytes, dict], base: bytes) -> View:
    """What the model says is visible: sandboxes, their scaffolds, mappings and host entries."""
    view: View = {}
    for name, mappings in model.items():
        explicit: dict[tuple[bytes, ...], tuple[str, bool] | None] = {(name,): None}
        for path in mappings:
            for depth in range(len(path)):
                explicit.setdefault((name,) + path[:depth], None)
        for path, spec in mappings.items():
            explicit[(name,) + path] = spec
        for inner, spec in explicit.items():
            if spec is None:
                view[inner] = ("scaffold", None, False)
                continue
            kind, writable = spec
            host = host_for(base, inner[1:], kind)
            view[inner] = (kind, host, writable)
            if kind == "dir":
                host_entries(host, inner, writable, explicit, view)
    return view


def is_proper_prefix(short: tuple, long: tuple) -> bool:
    return len(short) < len(long) and long[: len(short)] == short


def batch_is_valid(existing: dict[tuple, tuple[str, bool]], batch: list) -> bool:
    """docs §7 for adding ``batch`` [(path, kind, writable)] to a sandbox holding ``existing``."""
    paths = [p for p, _, _ in batch]
    if any(kind == "missing" for _, kind, _ in batch) or len(set(paths)) != len(paths):
        return False  # a missing host path; the same path twice
    if any(p == () and kind != "dir" for p, kind, _ in batch):
        return False  # the top of a sandbox must be a directory
    for path in paths:
        if path in existing or (path == () and existing):
            return False  # already mapped; the top is a scaffold of existing mappings
        if any(is_proper_prefix(path, q) for q in existing):
            return False  # a scaffold that existed before the batch
    kinds = {**{p: k for p, (k, _) in existing.items()}, **{p: k for p, k, _ in batch}}
    return not any(is_proper_prefix(q, p) and kinds[q] != "dir" for p in paths for q in kinds)


def specs_for(batch: list, base: bytes, grouped: bool) -> list[Mapping | Group]:
    """The batch as Tree specs; when ``grouped``, siblings of one kind and mode form groups."""
    singles: list[Mapping | Group] = []
    groups: dict[tuple, list[bytes]] = {}
    for path, kind, writable in batch:
        key = (path[:-1], kind, writable)
        if grouped and path and path[-1] not in groups.get(key, ()):
            groups.setdefault(key, []).append(path[-1])
        else:
            singles.append(Mapping(path, host_for(base, path, kind), writable))
    for (directory, kind, writable), names in groups.items():
        singles.append(group_of(directory, base + b"/" + kind.encode(), writable, names))
    return singles


class TreeMachine(RuleBasedStateMachine):
    """Random create/destroy/map/unmap on a Tree, against a dict model of the mappings."""

    base: bytes = b""  # the host tree, set by the test

    def __init__(self) -> None:
        super().__init__()
        self.tree = Tree()
        self.model: dict[bytes, dict[tuple[bytes, ...], tuple[str, bool]]] = {}

    def attempt(self, valid: bool, error: type[SandboxfsError], call, *args) -> None:
        """Run ``call``; it must succeed if ``valid``, else raise ``error`` and change nothing."""
        before = (tree_view(self.tree), self.tree.mapping_count)
        if valid:
            call(*args)
            return
        with pytest.raises(error):
            call(*args)
        assert (tree_view(self.tree), self.tree.mapping_count) == before

    @initialize(batch=st.lists(ITEMS, max_size=3), grouped=st.booleans())
    def start_with_both_sandboxes(self, batch: list, grouped: bool) -> None:
        """Both sandboxes exist at first (most steps then act on live ones); one maybe mapped."""
        self.create_sandbox(GOOD_SANDBOXES[0], [], False)
        self.create_sandbox(GOOD_SANDBOXES[1], batch, grouped)

    @rule(name=st.sampled_from(GOOD_SANDBOXES * 6 + BAD_SANDBOXES), batch=st.lists(ITEMS, max_size=4),
          grouped=st.booleans())
    def create_sandbox(self, name: bytes, batch: list, grouped: bool) -> None:
        if name in BAD_SANDBOXES:
            error, valid = InvalidRequestError, False
        elif name in self.model:
            error, valid = SandboxExistsError, False
        else:
            error, valid = MappingError, batch_is_valid({}, batch)
        self.attempt(valid, error, self.tree.create_sandbox, name, specs_for(batch, self.base, grouped))
        if valid:
            self.model[name] = {p: (kind, w) for p, kind, w in batch}

    @rule(name=st.sampled_from(GOOD_SANDBOXES + [b"a/b", b"", b"nope"]))
    def destroy_sandbox(self, name: bytes) -> None:
        valid = name in self.model
        self.attempt(valid, NotFoundError, self.tree.destroy_sandbox, name)
        if valid:
            del self.model[name]

    @rule(name=st.sampled_from(GOOD_SANDBOXES), batch=st.lists(ITEMS, max_size=3), grouped=st.booleans())
    def map(self, name: bytes, batch: list, grouped: bool) -> None:
        if name not in self.model:
            error, valid = NotFoundError, False
        else:
            error, valid = MappingError, batch_is_valid(self.model[name], batch)
        self.attempt(valid, error, self.tree.map, name, specs_for(batch, self.base, grouped))
        if valid:
            self.model[name].update((p, (kind, w)) for p, kind, w in batch)

    @rule(name=st.sampled_from(GOOD_SANDBOXES), paths=st.lists(st.sampled_from(PATHS), min_size=1, max_size=3))
    def unmap_any(self, name: bytes, paths: list) -> None:
        """Mostly paths that are not all mapped: the whole request must fail."""
        valid = name in self.model and all(p in self.model[name] for p in paths)
        self.attempt(valid, NotFoundError, self.tree.unmap, name, paths)
        if valid:
            for path in paths:
                self.model[name].pop(path, None)

    @precondition(lambda self: any(self.model.values()))
    @rule(data=st.data())
    def unmap_mapped(self, data) -> None:
        """Several mapped paths at once (parents with their nested mappings, duplicates)."""
        name = data.draw(st.sampled_from(sorted(n for n, m in self.model.items() if m)))
        paths = data.draw(st.lists(st.sampled_from(sorted(self.model[name])), min_size=1, max_size=4))
        self.attempt(True, NotFoundError, self.tree.unmap, name, paths)
        for path in paths:
            self.model[name].pop(path, None)

    @invariant()
    def visible_tree_matches_the_model(self) -> None:
        assert list(self.tree.sandboxes) == list(self.model)  # creation order, as `list` shows
        assert tree_view(self.tree) == model_view(self.model, self.base)
        for name, mappings in self.model.items():
            assert self.tree.sandboxes[name].mapping_count == len(mappings)
        assert self.tree.mapping_count == sum(len(m) for m in self.model.values())


def test_tree_behaves_like_its_model():
    with tempfile.TemporaryDirectory(prefix="sbxmodel-") as base:
        TreeMachine.base = os.fsencode(make_model_host(Path(base)))
        run_state_machine_as_test(TreeMachine, settings=settings(deadline=None))
