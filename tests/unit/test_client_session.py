"""Tests of the client's protocol logic (sandboxfs.control.client._Session) and of
AsyncClient against a real ControlServer over in-memory trio streams (no socket, no mount).

Covers how mappings are put on the wire (one group per stretch of mappings
below one pair of roots with one writability; ``[path, underlying, w]`` for
the rest, in the caller's order), groups named by digest once the server
holds them (and sent again in full after ``missing_group``), the
per-connection prefix table (sent once, re-sent after an error response,
never re-numbered onto an id the server already holds), and how responses
become results or the typed exceptions of ``sandboxfs.errors``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import trio.testing

from sandboxfs.control.client import REFERENCE_MIN, AsyncClient, _Session
from sandboxfs.control.group_encoding import encode_mappings
from sandboxfs.control.requests import OPS
from sandboxfs.control.server import ControlServer
from sandboxfs.errors import (
    InvalidRequestError,
    MappingError,
    MissingGroupError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    SandboxExistsError,
    SandboxfsError,
    ServerError,
    TooLargeError,
)
from sandboxfs.tree.mapping import Mapping
from sandboxfs.control.protocol import PrefixTable, decode_request, error, error_from, ok
from sandboxfs.control.reconfig import Reconfigurer
from sandboxfs.tree.groups import GroupStore
from sandboxfs.tree.sandboxes import Tree

IO_TIMEOUT = 30


def unpack(data: bytes) -> dict:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def request(session: _Session, op: str, **fields: Any) -> tuple[int, bytes]:
    """The id and bytes ``session`` would send for this call."""
    return session.render(session.start(OPS[op](**fields)))


def sent(session: _Session, op: str, **fields: Any) -> dict:
    """The message ``session`` would send for this call, decoded back."""
    _request_id, data = request(session, op, **fields)
    return unpack(data)


def wire_of(mappings: list, table: dict[int, bytes], session: _Session | None = None) -> list:
    return (session or _Session())._wire(encode_mappings(mappings), table)


class PureServer:
    """The server's decoding, without a tree: answers ok (with the digests of the groups
    it now holds, as a version-2 server does), or the decoding error."""

    def __init__(self) -> None:
        self.prefixes = PrefixTable()
        self.groups = GroupStore()

    def answer(self, data: bytes) -> dict:
        message = unpack(data)
        try:
            decoded = decode_request(message, self.prefixes, self.groups)
        except SandboxfsError as exc:
            return error_from(message.get("id"), exc)
        digests = [spec.digest for spec in getattr(decoded, "mappings", ()) if hasattr(spec, "digest")]
        return ok(message.get("id"), {"groups": digests} if digests else None)


def round_trip(session: _Session, server: PureServer, op: str, **fields: Any) -> dict:
    """Send through ``session`` to ``server``; return the result or raise the typed error."""
    request_id, data = request(session, op, **fields)
    return session.result(request_id, server.answer(data))


# -- encoding mappings ---------------------------------------------------------------


def test_mappings_below_one_pair_of_roots_form_one_group():
    table: dict[int, bytes] = {}
    wire = wire_of(
        [("/inc/a.h", "/usr/include/a.h"), ("/inc/b.h", "/usr/include/b.h", False),
         Mapping.of("/inc/c.h", "/usr/include/c.h")], table)
    assert table == {1: b"/inc", 2: b"/usr/include"}
    # A group's names travel as one bin, separated by NUL (no name can contain NUL).
    assert wire == [[[1, b""], [2, b""], False, b"a.h\0b.h\0c.h"]]


def test_a_whole_subtree_is_one_group_of_relative_paths():
    table: dict[int, bytes] = {}
    wire = wire_of(
        [("/tc/bin/cc", "/opt/tc-1.2/bin/cc"), ("/tc/include/sys/a.h", "/opt/tc-1.2/include/sys/a.h"),
         ("/tc/lib/libc.so", "/opt/tc-1.2/lib/libc.so")], table)
    assert table == {1: b"/tc", 2: b"/opt/tc-1.2"}
    assert wire == [[[1, b""], [2, b""], False, b"bin/cc\0include/sys/a.h\0lib/libc.so"]]


def test_roots_are_as_short_as_both_paths_allow():
    """/src/main.c from /ws/src/main.c: the sandbox root shows /ws."""
    table: dict[int, bytes] = {}
    wire = wire_of([("/src/main.c", "/ws/src/main.c"),
                                       ("/include/x.h", "/ws/include/x.h")], table)
    assert table == {1: b"/", 2: b"/ws"}
    assert wire == [[[1, b""], [2, b""], False, b"src/main.c\0include/x.h"]]


def test_runs_keep_the_callers_order():
    table: dict[int, bytes] = {}
    wire = wire_of(
        [("/d/a", "/h/a", True), ("/d/b", "/h/b"), ("/d/c", "/h/c"), ("/d/e", "/h/e", True)], table)
    assert wire == [[[1, b""], [2, b""], True, b"a"], [[1, b""], [2, b""], False, b"b\0c"],
                    [[1, b""], [2, b""], True, b"e"]]


def test_a_mapping_that_fits_no_run_travels_alone_in_place():
    table: dict[int, bytes] = {}
    wire = wire_of(
        [("/tc/a", "/opt/a"), ("/tc/b", "/opt/b"), ("/bin/cc", "/usr/bin/gcc", True),
         ("/tc/c", "/opt/c"), ("/tc/d", "/opt/d")], table)
    assert table == {1: b"/tc", 2: b"/opt", 3: b"/bin", 4: b"/usr/bin"}
    assert wire == [[[1, b""], [2, b""], False, b"a\0b"], [[3, b"cc"], [4, b"gcc"], True],
                    [[1, b""], [2, b""], False, b"c\0d"]]


@pytest.mark.parametrize(
    "mapping, expected",
    [
        (("/", "/h"), [b"/", b"/h", False]),
        (("/a/x", "/"), [[1, b"x"], b"/", False]),
        (("/a/", "/h/a/"), [b"/a/", b"/h/a/", False]),
        (("rel", "/h/rel"), [b"rel", [1, b"rel"], False]),
        (("/a\0/x", "/h/x"), [[1, b"x"], [2, b"x"], False]),
    ],
    ids=["root path", "host root", "trailing slashes", "relative", "NUL"],
)
def test_paths_that_fit_no_roots_travel_alone(mapping, expected):
    table: dict[int, bytes] = {}
    wire = wire_of([mapping], table)
    assert wire == [expected]


def test_the_same_path_on_both_sides_is_a_group_at_the_roots():
    table: dict[int, bytes] = {}
    assert wire_of([("/x", "/x")], table) == [[[1, b""], [1, b""], False, b"x"]]
    assert table == {1: b"/"}


def test_a_trailing_slash_inside_a_run_sends_that_mapping_alone():
    """The server tolerates one trailing slash on a whole path, not inside a group."""
    table: dict[int, bytes] = {}
    wire = wire_of([("/d/a", "/h/a"), ("/d/b/", "/h/b/")], table)
    assert wire == [[[1, b""], [2, b""], False, b"a"], [b"/d/b/", b"/h/b/", False]]


def test_non_utf8_paths_stay_bytes():
    table: dict[int, bytes] = {}
    wire = wire_of([(b"/d/\xff", b"/h/\xff")], table)
    assert wire == [[[1, b""], [2, b""], False, b"\xff"]]


def test_writable_values_are_sent_as_booleans():
    table: dict[int, bytes] = {}
    wire = wire_of([("/d/a", "/h/a", 1), ("/d/b", "/h/b", True),
                                       ("/d/c", "/h/c", None)], table)
    assert [entry[2] for entry in wire] == [True, False]
    assert all(type(entry[2]) is bool for entry in wire)


def toolchain(count: int = 1000) -> list[tuple[str, str, bool]]:
    return [(f"/tc/d{i // 20}/h{i}.h", f"/opt/tc/d{i // 20}/h{i}.h", False) for i in range(count)]


def test_a_group_the_server_holds_is_named_by_digest_even_from_new_objects():
    session, server = _Session(), PureServer()
    tools = toolchain()
    first = sent(session, "create_sandbox", name="a", mappings=tools + [("/out", "/tmp/o", True)])
    assert len(first["mappings"][0]) == 4  # in full: the server holds nothing yet
    assert server.answer(msgpack.packb(first))["result"]["groups"]
    round_trip(session, server, "create_sandbox", name="a", mappings=tools)
    # Equal tuples, new objects, and another tail: as a build tool's next action sends them.
    again = sent(session, "create_sandbox", name="b",
                 mappings=[tuple(m) for m in tools] + [("/src/x.c", "/ws/src/x.c")])
    (digest,) = server.groups._groups
    assert again["mappings"] == [{"group": digest}, [[1, b""], [4, b""], False, b"src/x.c"]]
    assert again["prefixes"] == {4: b"/ws"}  # "/" (1) is registered already
    assert "error" not in server.answer(msgpack.packb(again))


def test_small_groups_always_travel_in_full():
    session, server = _Session(), PureServer()
    small = toolchain(REFERENCE_MIN - 1)
    round_trip(session, server, "create_sandbox", name="a", mappings=small)
    assert len(sent(session, "create_sandbox", name="b", mappings=small)["mappings"][0]) == 4


def test_a_group_with_one_mapping_changed_travels_in_full():
    session, server = _Session(), PureServer()
    tools = toolchain()
    round_trip(session, server, "create_sandbox", name="a", mappings=tools)
    changed = tools[:-1] + [("/tc/renamed.h", "/opt/tc/d49/h999.h", False)]
    wire = sent(session, "create_sandbox", name="b", mappings=changed)["mappings"]
    assert all(type(element) is list for element in wire)
    assert wire[-1] == [[3, b"renamed.h"], [4, b"h999.h"], False]
    assert sum(len(e[3].split(b"\0")) for e in wire if len(e) == 4) == len(tools) - 1


def test_missing_group_forgets_the_digests_and_the_resend_carries_the_groups_in_full():
    session, server = _Session(), PureServer()
    tools = toolchain()
    round_trip(session, server, "create_sandbox", name="a", mappings=tools)
    server.groups.clear()  # evicted, or a restarted server
    outgoing = session.start(OPS["create_sandbox"](name="b", mappings=tools))
    request_id, data = session.render(outgoing)
    assert unpack(data)["mappings"][0].keys() == {"group"}
    response = server.answer(data)
    assert response["error"]["code"] == "missing_group"
    with pytest.raises(MissingGroupError) as info:
        session.result(request_id, response)
    assert info.value.digests == [unpack(data)["mappings"][0]["group"]]
    request_id, data = session.render(outgoing)  # what the clients send next
    (element,) = unpack(data)["mappings"]
    assert len(element) == 4  # in full (its prefixes are still registered on the connection)
    assert "error" not in server.answer(data)


def test_request_fields():
    session = _Session()
    first = sent(session, "unmap", name="s", paths=["/a/b", b"/c"])
    second = sent(session, "ping", version=2)
    third = sent(session, "ping", version=1)  # the default: a version-1 ping has no field
    assert first == {"id": 1, "op": "unmap", "name": b"s", "paths": [[1, b"b"], b"/c"],
                     "prefixes": {1: b"/a"}}
    assert second == {"id": 2, "op": "ping", "version": 2}
    assert third == {"id": 3, "op": "ping"}


# -- the prefix table ----------------------------------------------------------------


def test_prefixes_are_sent_once_per_connection():
    session, server = _Session(), PureServer()
    first = sent(session, "map", name="s", mappings=[("/a/x", "/h/x")])
    assert first["prefixes"] == {1: b"/a", 2: b"/h"}
    assert "error" not in server.answer(msgpack.packb(first))
    second = sent(session, "map", name="s", mappings=[("/a/y", "/h/y"), ("/b/z", "/h/z")])
    assert second["prefixes"] == {3: b"/b"}
    assert "error" not in server.answer(msgpack.packb(second))


def test_a_new_session_sends_its_prefixes_again():
    sent(_Session(), "map", name="s", mappings=[("/a/x", "/h/x")])
    assert sent(_Session(), "map", name="s", mappings=[("/a/x", "/h/x")])["prefixes"] == {
        1: b"/a", 2: b"/h"}


def test_prefixes_are_resent_after_an_error_response():
    session = _Session()
    request_id, _ = request(session, "map", name="s", mappings=[("/a/x", "/h/x")])
    with pytest.raises(NotFoundError):
        session.result(request_id, error(request_id, "not_found", "no such sandbox"))
    again = sent(session, "map", name="s", mappings=[("/a/x", "/h/x")])
    assert set(again["prefixes"].values()) == {b"/a", b"/h"}


def test_prefixes_of_a_successful_request_are_not_resent():
    session = _Session()
    request_id, _ = request(session, "map", name="s", mappings=[("/a/x", "/h/x")])
    session.result(request_id, ok(request_id))
    request_id, _ = request(session, "list")
    with pytest.raises(NotFoundError):
        session.result(request_id, error(request_id, "not_found", "x"))
    assert "prefixes" not in sent(session, "map", name="s", mappings=[("/a/y", "/h/y")])


def test_new_directories_after_an_error_work():
    """A failed request may have registered its prefixes: later ids must not collide with them."""
    session, server = _Session(), PureServer()
    round_trip(session, server, "map", name="s", mappings=[("/a/x", "/h/y")])
    with pytest.raises(MappingError):  # registered /b and /g, then failed on /c/x
        round_trip(session, server, "map", name="s",
                   mappings=[("/b/x", "/g/y"), ("/c/x/../z", "/f/y")])
    for _ in range(2):  # a second try must not fail the same way
        assert round_trip(session, server, "map", name="s", mappings=[("/c/x", "/f/y")]) == {}
    assert round_trip(session, server, "map", name="s", mappings=[("/b/x", "/g/y")]) == {}


def test_a_request_that_fails_to_encode_leaves_no_unsent_prefixes():
    session, server = _Session(), PureServer()
    with pytest.raises(TypeError):
        request(session, "map", name="s", mappings=[("/a/x", "/h/y"), ("/b/x", 5)])
    assert round_trip(session, server, "map", name="s", mappings=[("/a/x", "/h/y")]) == {}


def test_relative_underlying_is_reported_as_that_mapping():
    session, server = _Session(), PureServer()
    with pytest.raises(MappingError) as info:
        round_trip(session, server, "map", name="s",
                   mappings=[("/ok", "/h/ok"), ("/d/x", "rel/x")])
    assert info.value.details["index"] == 1
    assert info.value.details["path"] == "/d/x"


# -- results and errors --------------------------------------------------------------


def test_result_returns_the_result_map():
    session = _Session()
    request_id, _ = request(session, "list")
    assert session.result(request_id, ok(request_id, {"sandboxes": []})) == {"sandboxes": []}


@pytest.mark.parametrize(
    "code, exception",
    [
        ("exists", SandboxExistsError),
        ("not_found", NotFoundError),
        ("invalid_mapping", MappingError),
        ("invalid_request", InvalidRequestError),
        ("too_large", TooLargeError),
        ("invalid_framing", ProtocolError),
        ("permission_denied", PermissionDeniedError),
        ("internal", ServerError),
    ],
)
def test_error_codes_raise_typed_exceptions(code, exception):
    session = _Session()
    request_id, _ = request(session, "list")
    response = error(request_id, code, "what went wrong", {"index": 4, "path": "/x"})
    with pytest.raises(exception) as info:
        session.result(request_id, response)
    assert type(info.value) is exception
    assert info.value.code == code
    assert info.value.message == "what went wrong"
    assert info.value.details == {"index": 4, "path": "/x"}


def test_unknown_error_code_keeps_the_code():
    session = _Session()
    request_id, _ = request(session, "list")
    with pytest.raises(SandboxfsError) as info:
        session.result(request_id, error(request_id, "quota", "too many sandboxes"))
    assert info.value.code == "quota"


def test_connection_error_without_id_is_raised_typed():
    session = _Session()
    request_id, _ = request(session, "list")
    with pytest.raises(TooLargeError):
        session.result(request_id, error(None, "too_large", "message larger than the limit"))


@pytest.mark.parametrize("response", [ok(99), ok(None), ["not", "a", "map"], None])
def test_answer_to_another_request_is_a_protocol_error(response):
    session = _Session()
    request_id, _ = request(session, "list")
    assert request_id == 1
    with pytest.raises(ProtocolError):
        session.result(request_id, response)


def test_request_ids_increase():
    session = _Session()
    assert [request(session, "list")[0] for _ in range(3)] == [1, 2, 3]


# -- AsyncClient against a real ControlServer over memory streams --------------------


@contextlib.asynccontextmanager
async def client_for(tree: Tree):
    """An AsyncClient connected to a ControlServer serving ``tree`` over a memory stream."""
    server = ControlServer(Reconfigurer(tree))
    with trio.fail_after(IO_TIMEOUT):
        async with trio.open_nursery() as nursery:
            client_side, server_side = trio.testing.memory_stream_pair()
            nursery.start_soon(server.serve_stream, server_side)
            async with AsyncClient(client_side) as client:
                yield client
            nursery.cancel_scope.cancel()


@pytest.fixture
def host(tmp_path) -> Path:
    for directory in ("inc", "bin", "lib"):
        (tmp_path / directory).mkdir()
        for name in ("a", "b", "c"):
            (tmp_path / directory / name).write_bytes(b"")
    return tmp_path


async def test_async_client_round_trip(host):
    tree = Tree()
    async with client_for(tree) as client:
        assert (await client.ping())["protocol"] == 2
        assert (await client.ping(1))["protocol"] == 1
        result = await client.create_sandbox("s", [
            (f"/inc/{n}", str(host / "inc" / n)) for n in "abc"] + [("/cc", str(host / "bin/a"), True)])
        assert result["name"] == "s" and result["mappings"] == 4
        await client.map("s", [("/lib/a", str(host / "lib/a"))])
        await client.unmap("s", ["/lib/a", "/cc"])
        assert await client.list() == [{"name": "s", "mappings": 3}]
        with pytest.raises(SandboxExistsError):
            await client.create_sandbox("s", [])
        with pytest.raises(NotFoundError):
            await client.destroy_sandbox("nope")
        await client.destroy_sandbox("s")
    assert tree.sandboxes == {}


async def test_async_client_recovers_after_a_failed_request(host):
    tree = Tree()
    async with client_for(tree) as client:
        with pytest.raises(MappingError):
            await client.create_sandbox("s", [
                ("/inc/a", str(host / "inc/a")), ("/bin/x", str(host / "bin/missing"))])
        for name in ("t1", "t2"):
            result = await client.create_sandbox(name, [
                ("/bin/a", str(host / "bin/a")), ("/lib/b", str(host / "lib/b"))])
            assert result["mappings"] == 2
    assert sorted(tree.sandboxes) == [b"t1", b"t2"]


async def test_error_index_is_the_callers_index(host):
    """Runs travel as groups; an error still names the caller's mapping and its path."""
    async with client_for(Tree()) as client:
        with pytest.raises(MappingError) as info:
            await client.create_sandbox("s", [
                ("/inc/a", str(host / "inc/a")),
                ("/bin/x", str(host / "bin/missing")),
                ("/inc/b", str(host / "inc/b")),
            ])
    assert info.value.details["path"] == "/bin/x"
    assert info.value.details["index"] == 1


async def test_a_missing_file_inside_a_subtree_group_is_named_exactly(host):
    mappings = [(f"/tc/{d}/{n}", str(host / d / n)) for d in ("inc", "bin", "lib") for n in "abc"]
    mappings[7] = ("/tc/lib/zz", str(host / "lib" / "zz"))
    async with client_for(Tree()) as client:
        with pytest.raises(MappingError) as info:
            await client.create_sandbox("s", mappings)
        assert (await client.create_sandbox("t", mappings[:7]))["mappings"] == 7
    assert info.value.details["index"] == 7
    assert info.value.details["path"] == "/tc/lib/zz"
    assert "does not exist" in info.value.details["reason"]


def test_building_a_request_pauses_the_gc_and_restores_its_state():
    import gc

    seen = []

    class Probe(tuple):  # a mapping that records the GC state while the request is built
        def __getitem__(self, index):
            seen.append(gc.isenabled())
            return tuple.__getitem__(self, index)

    assert gc.isenabled()
    request(_Session(), "create_sandbox", name="s", mappings=[Probe(("/a/x", "/h/x", False))])
    assert seen and not any(seen)
    assert gc.isenabled()
    gc.disable()
    try:
        request(_Session(), "create_sandbox", name="s", mappings=[("/a/x", "/h/x")])
        assert not gc.isenabled()  # a caller's choice is kept
    finally:
        gc.enable()
