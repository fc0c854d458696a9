"""Unit tests of sandboxfs.protocol: request decoding, prefixes, path rules, error details.

Covers every op, every field given the wrong type, unknown/missing fields,
the per-connection prefix table, the inner/underlying path rules (``..``,
``.``, ``//``, NUL, non-UTF-8 bytes), mapping groups, and the index/path/reason
details of mapping errors.  Two property tests: mappings encoded by the
client's ``_Session`` decode to exactly the same mappings, and no junk value
makes ``decode_request`` raise anything but a ``SandboxfsError``.

Pure: nothing here touches the filesystem or a socket.
"""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sandboxfs.control.client import _Session
from sandboxfs.control.group_encoding import encode_mappings
from sandboxfs.control.requests import ListSandboxes, Stats
from sandboxfs.tree.groups import Group, GroupStore
from sandboxfs.errors import InvalidRequestError, MappingError, SandboxfsError
from sandboxfs.control.framing import encode
from sandboxfs.tree.mapping import Mapping, check_underlying, split_inner_path
from sandboxfs.control.protocol import (
    OPS,
    PROTOCOL_VERSION,
    PrefixTable,
    decode_mappings,
    decode_request,
    error,
    error_from,
    ok,
    request_id,
)


def decode(message: dict, prefixes: PrefixTable | None = None):
    return decode_request(message, prefixes if prefixes is not None else PrefixTable())


def refused(message: dict, prefixes: PrefixTable | None = None, error=SandboxfsError) -> SandboxfsError:
    """Decode ``message``, which must fail with ``error``; return the exception."""
    with pytest.raises(error) as info:
        decode(message, prefixes)
    return info.value


def mapping_request(*mappings, prefixes: dict | None = None) -> dict:
    message = {"id": 7, "op": "map", "name": "s", "mappings": list(mappings)}
    if prefixes is not None:
        message["prefixes"] = prefixes
    return message


def table(**paths) -> PrefixTable:
    """A prefix table with ids registered: table(p1="/a") registers 1 -> /a."""
    prefixes = PrefixTable()
    prefixes.register({int(key[1:]): value for key, value in paths.items()}, "test")
    return prefixes


def flat(specs) -> list[tuple[tuple[bytes, ...], bytes, bool]]:
    """(components, underlying, writable) of each mapping, groups expanded."""
    out = []
    for spec in specs:
        if isinstance(spec, Group):
            for part in spec.parts:
                base = part.host_dir if part.host_dir != b"/" else b""
                out.extend((part.directory + (name,), base + b"/" + name, part.writable)
                           for name in part.names)
        else:
            out.append((spec.components, spec.underlying, spec.writable))
    return out


# -- each op -------------------------------------------------------------------------


def test_ping_without_a_version_is_a_version_1_client():
    request = decode({"id": 1, "op": "ping"})
    assert (request.op, request.version) == ("ping", 1)
    assert PROTOCOL_VERSION == 2


def test_ping_with_version():
    assert decode({"id": 1, "op": "ping", "version": 9}).version == 9


@pytest.mark.parametrize("name", ["s1", b"s1"])
def test_create_sandbox(name):
    request = decode({"id": 2, "op": "create_sandbox", "name": name,
                      "mappings": [["/a/b", "/h/b", False], ["/out", "/h/out", True]]})
    assert request.op == "create_sandbox"
    assert request.name == b"s1"
    assert request.mappings == (Mapping((b"a", b"b"), b"/h/b", False),
                                Mapping((b"out",), b"/h/out", True))


def test_create_sandbox_with_no_mappings():
    assert decode({"op": "create_sandbox", "name": "s", "mappings": []}).mappings == ()


def test_destroy_sandbox():
    request = decode({"id": "x", "op": "destroy_sandbox", "name": "s1"})
    assert (request.op, request.name) == ("destroy_sandbox", b"s1")


def test_map():
    request = decode(mapping_request(["/a", "/h/a", True]))
    assert (request.op, request.name) == ("map", b"s")
    assert request.mappings == (Mapping((b"a",), b"/h/a", True),)


def test_unmap():
    request = decode({"id": 3, "op": "unmap", "name": "s", "paths": ["/a/b", b"/c"]})
    assert request.paths == ((b"a", b"b"), (b"c",))


@pytest.mark.parametrize("op", ["list", "stats"])
def test_ops_without_fields(op):
    request = decode({"id": 4, "op": op})
    assert request == {"list": ListSandboxes(), "stats": Stats()}[op]


def test_writable_may_be_omitted():
    assert decode(mapping_request(["/a", "/h"])).mappings == (Mapping((b"a",), b"/h", False),)


def test_any_id_is_kept():
    assert request_id({"id": [1, "two"], "op": "list"}) == [1, "two"]
    assert request_id({"op": "list"}) is None
    assert request_id(["not", "a", "map"]) is None


# -- malformed requests --------------------------------------------------------------


@pytest.mark.parametrize("message", [None, [], "ping", 1, b"op"])
def test_request_must_be_a_map(message):
    assert isinstance(refused(message), InvalidRequestError)


@pytest.mark.parametrize("op", [None, 5, b"ping", ["ping"]])
def test_op_must_be_a_string(op):
    message = {"id": 1} if op is None else {"id": 1, "op": op}
    err = refused(message, error=InvalidRequestError)
    assert "'op'" in err.message


def test_unknown_op():
    err = refused({"id": 1, "op": "format_disk"}, error=InvalidRequestError)
    assert "format_disk" in err.message


@pytest.mark.parametrize(
    "message, field",
    [
        ({"op": "ping", "colour": 1}, "colour"),
        ({"op": "list", "name": "s"}, "name"),
        ({"op": "destroy_sandbox", "name": "s", "mappings": []}, "mappings"),
        ({"op": "create_sandbox", "name": "s", "mappings": [], "paths": []}, "paths"),
        ({"op": "stats", 1: 2}, "1"),
    ],
)
def test_unknown_field(message, field):
    err = refused(message, error=InvalidRequestError)
    assert field in err.message


@pytest.mark.parametrize(
    "message, field",
    [
        ({"op": "create_sandbox", "mappings": []}, "name"),
        ({"op": "create_sandbox", "name": "s"}, "mappings"),
        ({"op": "destroy_sandbox"}, "name"),
        ({"op": "map", "name": "s"}, "mappings"),
        ({"op": "unmap", "name": "s"}, "paths"),
        ({"op": "unmap", "paths": []}, "name"),
        ({"op": "map", "name": None, "mappings": []}, "name"),  # nil counts as missing
    ],
)
def test_missing_field(message, field):
    err = refused(message, error=InvalidRequestError)
    assert f"missing field '{field}'" in err.message


@pytest.mark.parametrize(
    "message, field",
    [
        ({"op": "ping", "version": "1"}, "version"),
        ({"op": "ping", "version": 1.0}, "version"),
        ({"op": "ping", "version": True}, "version"),
        ({"op": "destroy_sandbox", "name": 5}, "name"),
        ({"op": "create_sandbox", "name": ["s"], "mappings": []}, "name"),
        ({"op": "create_sandbox", "name": True, "mappings": []}, "name"),
        ({"op": "create_sandbox", "name": "s", "mappings": {}}, "mappings"),
        ({"op": "map", "name": "s", "mappings": "/a"}, "mappings"),
        ({"op": "unmap", "name": "s", "paths": "/a"}, "paths"),
        ({"op": "unmap", "name": "s", "paths": {"/a": 1}}, "paths"),
        ({"op": "list", "prefixes": [[1, "/a"]]}, "prefixes"),
        ({"op": "list", "prefixes": "/a"}, "prefixes"),
    ],
)
def test_request_field_of_wrong_type(message, field):
    err = refused(message, error=InvalidRequestError)
    assert repr(field) in err.message or f"'{field}'" in err.message


@pytest.mark.parametrize(
    "mapping, field",
    [
        pytest.param([5, "/h", False], "path", id="path int"),
        pytest.param([None, "/h", False], "path", id="path nil"),
        pytest.param([{"a": 1}, "/h", False], "path", id="path map"),
        pytest.param(["/a", 5, False], "underlying", id="underlying int"),
        pytest.param(["/a", None, False], "underlying", id="underlying nil"),
        pytest.param(["/a", "/h", 1], "writable", id="writable int"),
        pytest.param(["/a", "/h", "yes"], "writable", id="writable str"),
        pytest.param(["/a", "/h", None], "writable", id="writable nil"),
        pytest.param(["/d", "/h", False, "ab"], "names", id="names str"),
        pytest.param(["/d", "/h", False, [1]], "name", id="name int"),
        pytest.param(["/d", "/h", False, [None]], "name", id="name nil"),
    ],
)
def test_mapping_field_of_wrong_type_names_the_field(mapping, field):
    err = refused(mapping_request(mapping), error=MappingError)
    assert field in err.details["reason"], err.message
    assert err.details["index"] == 0


@pytest.mark.parametrize(
    "mapping",
    [["/a"], [], "/a", 5, ["/a", "/h", False, ["x"], "extra"]],
    ids=["one element", "empty", "a string", "an int", "five elements"],
)
def test_mapping_of_wrong_shape(mapping):
    err = refused(mapping_request(mapping), error=MappingError)
    assert "must be [path, underlying, writable]" in err.details["reason"]
    assert err.details["index"] == 0


# -- path rules ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, reason",
    [
        ("a/b", "not absolute"),
        ("", "not absolute"),
        ("/a/../b", "'..' component"),
        ("/..", "'..' component"),
        ("/a/./b", "'.' component"),
        ("/a//b", "empty component"),
        ("//a", "empty component"),
        ("/a\0b", "NUL"),
        (b"/a\0b", "NUL"),
    ],
)
def test_bad_inner_path(path, reason):
    err = refused(mapping_request([path, "/h", False]), error=MappingError)
    assert reason in err.details["reason"]


@pytest.mark.parametrize(
    "underlying, reason",
    [("rel/x", "not absolute"), ("", "not absolute"), ("/h/\0x", "NUL"), (b"x\xff", "not absolute")],
)
def test_bad_underlying_path(underlying, reason):
    err = refused(mapping_request(["/a", underlying, False]), error=MappingError)
    assert reason in err.details["reason"]
    assert err.details["path"] == "/a"


def test_non_utf8_bin_paths_work():
    request = decode(mapping_request([b"/caf\xe9/\xff", b"/h/\xfe", True]))
    assert request.mappings == (Mapping((b"caf\xe9", b"\xff"), b"/h/\xfe", True),)


def test_non_utf8_names_in_a_group_work():
    request = decode(mapping_request([b"/d", b"/h", False, [b"\xff", b"\xfe.h"]]))
    assert flat(request.mappings) == [((b"d", b"\xff"), b"/h/\xff", False),
                                      ((b"d", b"\xfe.h"), b"/h/\xfe.h", False)]


def test_non_utf8_sandbox_name_works():
    assert decode({"op": "destroy_sandbox", "name": b"s\xff"}).name == b"s\xff"


def test_underlying_trailing_slash_is_dropped():
    assert decode(mapping_request(["/a/", "/h/x/", False])).mappings == (
        Mapping((b"a",), b"/h/x", False),)


def test_underlying_may_contain_dotdot():
    """Host paths are the caller's business: only the inner path must be canonical."""
    assert decode(mapping_request(["/a", "/h/../x", False])).mappings[0].underlying == b"/h/../x"


# -- prefixes ------------------------------------------------------------------------


def test_prefixed_paths_resolve():
    request = decode(mapping_request([[1, "x"], [2, b"y"], True], [[1, ""], [2, ""], False],
                                     prefixes={1: "/in/dir", 2: b"/host"}))
    assert request.mappings == (Mapping((b"in", b"dir", b"x"), b"/host/y", True),
                                Mapping((b"in", b"dir"), b"/host", False))


def test_prefix_root_directory():
    request = decode(mapping_request([[1, "x"], [1, "y"], False], prefixes={1: "/"}))
    assert request.mappings == (Mapping((b"x",), b"/y", False),)


def test_prefixes_persist_in_the_table():
    prefixes = PrefixTable()
    decode({"op": "list", "prefixes": {1: "/a"}}, prefixes)
    request = decode(mapping_request([[1, "x"], [1, "y"]]), prefixes)
    assert request.mappings == (Mapping((b"a", b"x"), b"/a/y", False),)


def test_unknown_prefix_id():
    err = refused(mapping_request([[3, "x"], "/h"], prefixes={1: "/a"}), error=MappingError)
    assert "unknown prefix id 3" in err.details["reason"]


def test_unknown_prefix_id_in_unmap():
    err = refused({"op": "unmap", "name": "s", "paths": ["/a", [3, "x"]]}, error=MappingError)
    assert err.details["index"] == 1
    assert "unknown prefix id 3" in err.details["reason"]


def test_redefining_a_prefix_to_another_directory_is_refused():
    prefixes = table(p1="/a")
    err = refused({"op": "list", "prefixes": {1: "/b"}}, prefixes, error=InvalidRequestError)
    assert "prefix 1" in err.message and "/a" in err.message and "/b" in err.message
    assert decode(mapping_request([[1, "x"], "/h"]), prefixes).mappings[0].components == (b"a", b"x")


@pytest.mark.parametrize("again", ["/a", b"/a", "/a/"])
def test_redefining_a_prefix_identically_is_fine(again):
    prefixes = table(p1="/a")
    decode({"op": "list", "prefixes": {1: again}}, prefixes)
    assert decode(mapping_request([[1, "x"], "/h"]), prefixes).mappings[0].components == (b"a", b"x")


@pytest.mark.parametrize("key", [0, -1, "1", 1.0, True, b"1"])
def test_prefix_id_must_be_a_positive_integer(key):
    err = refused({"op": "list", "prefixes": {key: "/a"}}, error=InvalidRequestError)
    assert "prefix id" in err.message


@pytest.mark.parametrize("directory", ["a", "", "rel/dir", "/a\0b", 5])
def test_prefix_directory_must_be_absolute(directory):
    err = refused({"op": "list", "prefixes": {1: directory}}, error=InvalidRequestError)
    assert "prefix 1" in err.message


def test_prefix_with_dotdot_cannot_be_an_inner_path():
    err = refused(mapping_request([[1, "x"], "/h"], prefixes={1: "/a/../b"}), error=MappingError)
    assert "'..' component" in err.details["reason"]


@pytest.mark.parametrize("rest", ["../x", "x/..", "./x", "x//y", "x/", "/x", "x\0y"])
def test_prefixed_inner_rest_must_be_plain(rest):
    err = refused(mapping_request([[1, rest], "/h"], prefixes={1: "/a"}), error=MappingError)
    assert err.details["index"] == 0


@pytest.mark.parametrize("rest", ["/x", "x\0y"])
def test_prefixed_underlying_rest_must_be_relative_without_nul(rest):
    err = refused(mapping_request(["/a", [1, rest]], prefixes={1: "/h"}), error=MappingError)
    assert err.details["path"] == "/a"


@pytest.mark.parametrize("path", [[1], [1, "x", "y"], []])
def test_prefixed_path_must_be_a_pair(path):
    err = refused(mapping_request([path, "/h"], prefixes={1: "/a"}), error=MappingError)
    assert "[prefix_id, rest]" in err.details["reason"] or "must be" in err.details["reason"]


@pytest.mark.parametrize("key", [[1], {"a": 1}, None, "1"])
@pytest.mark.parametrize("where", ["path", "underlying", "unmap"])
def test_odd_prefix_ids_are_unknown_prefixes(key, where):
    """An unhashable or wrongly typed prefix id is the peer's error, not a crash."""
    prefixes = table(p1="/a")
    if where == "path":
        message = mapping_request([[key, "x"], "/h"])
    elif where == "underlying":
        message = mapping_request(["/x", [key, "x"]])
    else:
        message = {"op": "unmap", "name": "s", "paths": [[key, "x"]]}
    err = refused(message, prefixes, error=MappingError)
    assert "unknown prefix id" in err.details["reason"]


# -- groups --------------------------------------------------------------------------


def test_group_decodes_to_a_group():
    request = decode(mapping_request(["/inc", "/usr/include", False, ["a.h", b"b.h"]]))
    (group,) = request.mappings
    assert isinstance(group, Group) and group.count == 2
    assert flat([group]) == [((b"inc", b"a.h"), b"/usr/include/a.h", False),
                             ((b"inc", b"b.h"), b"/usr/include/b.h", False)]


def test_group_with_prefixes():
    request = decode(mapping_request([[1, ""], [2, ""], True, ["x"]], prefixes={1: "/d", 2: "/h"}))
    assert flat(request.mappings) == [((b"d", b"x"), b"/h/x", True)]


@pytest.mark.parametrize(
    "names, reason",
    [
        (["a//b"], "component"),
        (["/a"], "component"),
        (["a/"], "component"),
        (["a/../b"], "'..'"),
        ([""], "empty"),
        (["."], "'.'"),
        ([".."], "'..'"),
        (["a\0b"], "NUL"),
    ],
)
def test_bad_group_names(names, reason):
    err = refused(mapping_request(["/d", "/h", False, names]), error=MappingError)
    assert reason in err.details["reason"]


def test_a_name_listed_twice_is_left_to_the_tree():
    """The tree refuses it as "already mapped" at its exact index (test_tree)."""
    request = decode(mapping_request(["/d", "/h", False, ["a", "b", "a"]]))
    assert flat(request.mappings) == [((b"d", b"a"), b"/h/a", False), ((b"d", b"b"), b"/h/b", False),
                                      ((b"d", b"a"), b"/h/a", False)]


# -- groups carrying a subtree: names that are relative paths ---------------------------


def test_subtree_group_splits_into_one_group_per_directory_in_order():
    request = decode(mapping_request(
        ["/tc", "/opt/tc", False, b"top.h\0inc/a.h\0inc/b.h\0inc/sys/c.h\0inc/d.h"]))
    (group,) = request.mappings
    assert [(g.directory, g.host_dir, list(g.names)) for g in group.parts] == [
        ((b"tc",), b"/opt/tc", [b"top.h"]),
        ((b"tc", b"inc"), b"/opt/tc/inc", [b"a.h", b"b.h"]),
        ((b"tc", b"inc", b"sys"), b"/opt/tc/inc/sys", [b"c.h"]),
        ((b"tc", b"inc"), b"/opt/tc/inc", [b"d.h"]),
    ]


def test_subtree_group_at_both_roots():
    request = decode(mapping_request(["/", "/", True, ["usr/bin/cc", "etc/hosts"]]))
    assert flat(request.mappings) == [((b"usr", b"bin", b"cc"), b"/usr/bin/cc", True),
                                      ((b"etc", b"hosts"), b"/etc/hosts", True)]


def test_subtree_group_counts_one_index_per_name():
    err = refused(mapping_request(["/tc", "/h", False, b"a/x\0b/y\0c/z"], ["rel", "/h"]),
                  error=MappingError)
    assert err.details["index"] == 3


def test_empty_group_is_refused_with_a_true_reason():
    """It maps nothing but would still make scaffolds; the reason must not blame a '/'."""
    err = refused(mapping_request(["/a", "/h"], ["/d", "/h", False, []]), error=MappingError)
    assert err.details["index"] == 1
    assert "'/'" not in err.details["reason"]


# -- error details -------------------------------------------------------------------


def test_error_details_carry_index_path_and_reason():
    err = refused(mapping_request(["/ok", "/h"], ["/bad", "rel"]), error=MappingError)
    assert err.details["index"] == 1
    assert err.details["path"] == "/bad"
    assert "not absolute" in err.details["reason"]
    assert err.message.startswith("map 's': mapping 1 (/bad): ")


def test_index_counts_the_mappings_of_groups():
    err = refused(mapping_request(["/d", "/h", False, ["a", "b", "c"]], ["x", "/h"]),
                  error=MappingError)
    assert err.details["index"] == 3
    assert err.details["path"] == "x"


def test_index_of_a_bad_group_member_is_its_own():
    err = refused(mapping_request(["/a", "/h"], ["/d", "/h", False, ["a", "b"]],
                                  ["/e", "/h", False, ["a", "b/c", "x//y", ".."]]),
                  error=MappingError)
    assert err.details["index"] == 5
    assert err.details["path"] == "/e/x//y"


def test_prefixed_path_is_shown_resolved_in_errors():
    err = refused(mapping_request([[1, "x"], "rel"], prefixes={1: "/in"}), error=MappingError)
    assert err.details["path"] == "/in/x"


def test_non_utf8_path_is_shown_in_errors():
    err = refused(mapping_request([b"/caf\xe9", b"rel"]), error=MappingError)
    assert err.details["path"] == "/caf\\xe9"  # valid UTF-8: msgpack can always send it


def test_responses():
    assert ok(1, {"a": 1}) == {"id": 1, "result": {"a": 1}}
    assert ok(1) == {"id": 1, "result": {}}
    assert error(2, "not_found", "gone") == {
        "id": 2, "error": {"code": "not_found", "message": "gone", "details": {}}}
    exc = MappingError("m", details={"index": 3})
    assert error_from(None, exc) == {
        "id": None, "error": {"code": "invalid_mapping", "message": "m", "details": {"index": 3}}}


# -- properties ----------------------------------------------------------------------

COMPONENT = st.one_of(
    st.sampled_from(["a", "b", "inc", "lib", "x.h", "...", ".x"]),
    st.binary(min_size=1, max_size=4).filter(
        lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")),
)
DIRS = st.lists(COMPONENT, min_size=0, max_size=3)


@st.composite
def mapping_args(draw):
    """A valid (path, underlying, writable) as a caller writes it: str or bytes, maybe slashed."""

    def join(parts, trailing):
        raw = b"/" + b"/".join(p.encode() if isinstance(p, str) else p for p in parts)
        if trailing and raw != b"/":
            raw += b"/"
        return raw

    inner = draw(st.lists(COMPONENT, min_size=0, max_size=4))
    host = draw(st.lists(COMPONENT, min_size=0, max_size=4))
    if draw(st.booleans()) and inner:  # the common case: same name on both sides
        host = draw(DIRS) + [inner[-1]]
    path = join(inner, draw(st.booleans()))
    underlying = join(host, draw(st.booleans()))
    if draw(st.booleans()):
        path, underlying = (p.decode("utf-8", "surrogateescape") for p in (path, underlying))
    writable = draw(st.booleans())
    as_value = draw(st.booleans())
    if as_value:
        return Mapping.of(path, underlying, writable)
    return (path, underlying, writable) if writable or draw(st.booleans()) else (path, underlying)


def expected(arg) -> tuple[tuple[bytes, ...], bytes, bool]:
    if isinstance(arg, Mapping):
        return arg.components, arg.underlying, arg.writable
    writable = len(arg) > 2 and arg[2]
    return (split_inner_path(arg[0]),
            check_underlying(arg[1] if isinstance(arg[1], bytes)
                             else arg[1].encode("utf-8", "surrogateescape")),
            writable)


@settings(max_examples=150, deadline=None)
@given(batches=st.lists(
    st.lists(mapping_args(), max_size=12, unique_by=lambda m: expected(m)[0]),
    min_size=1, max_size=3))
def test_client_encoding_round_trips(batches):
    """Over one connection, each batch decodes to exactly the mappings the caller gave."""
    session = _Session()
    prefixes = PrefixTable()
    store = GroupStore()
    for mappings in batches:
        table_: dict[int, bytes] = {}
        wire = session._wire(encode_mappings(mappings), table_)
        message = msgpack.unpackb(encode({"op": "map", "name": "s", "mappings": wire,
                                          "prefixes": table_}),
                                  raw=False, strict_map_key=False)
        if table_:
            prefixes.register(message["prefixes"], "test")
        decoded = decode_mappings(message["mappings"], prefixes, "test", store)
        session._note_held([spec.digest for spec in decoded if isinstance(spec, Group)])
        assert sorted(flat(decoded)) == sorted(expected(m) for m in mappings)


JUNK = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False)
    | st.sampled_from(["", "/", "/a", "a", "..", "/a/../b", "x/", "\0"])
    | st.binary(max_size=4) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.integers(-1, 3) | st.text(max_size=3), inner, max_size=3),
    max_leaves=20,
)
FIELDS = st.sampled_from(["id", "op", "name", "mappings", "paths", "prefixes", "version", "x"])


@st.composite
def junk_requests(draw):
    message = draw(st.dictionaries(FIELDS, JUNK, max_size=5))
    if draw(st.booleans()):
        message["op"] = draw(st.sampled_from(list(OPS)))
    return message


@settings(max_examples=1000, deadline=None)
@given(message=junk_requests() | JUNK)
@example(message={"op": "map", "name": "s", "mappings": [[[[1], "x"], "/h", False]]})
@example(message={"op": "unmap", "name": "s", "paths": [[{}, "x"]]})
@example(message={"op": "map", "name": "s", "mappings": [["/d", "/h", False, [[1], {}]]]})
def test_junk_only_raises_sandboxfs_errors(message):
    prefixes = table(p1="/a", p2="/")
    try:
        decode(message, prefixes)
    except SandboxfsError as exc:
        assert exc.code in ("invalid_request", "invalid_mapping")


# -- groups whose names travel as one NUL-separated bin ---------------------------------


def test_group_names_as_one_nul_separated_bin():
    request = decode(mapping_request(["/inc", "/usr/include", False, b"a.h\0b.h\0c.h"]))
    (group,) = request.mappings
    (part,) = group.parts
    assert list(part.names) == [b"a.h", b"b.h", b"c.h"]
    assert part.directory == (b"inc",) and part.host_dir == b"/usr/include"


@pytest.mark.parametrize(
    "blob, index",
    [(b"a\0\0b", 1), (b"a/\0c", 0), (b"..", 0), (b"a\0b/./c", 1)],
)
def test_bad_names_in_a_bin_group_are_refused(blob, index):
    err = refused(mapping_request(["/inc", "/usr/include", False, blob]), error=MappingError)
    assert "a name is empty, '.' or '..', or has such a component" in err.message
    assert err.details["index"] == index
