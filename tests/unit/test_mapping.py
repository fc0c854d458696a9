"""Unit tests of sandboxfs.mapping: inner-path and host-path validation, the
``--mapping TYPE:PATH:UNDERLYING`` parser, bytes paths that are not UTF-8, and
mapping groups (many names under one directory) with their name checks.

Pure: nothing here touches the filesystem.
"""

from __future__ import annotations

import os

import pytest

from sandboxfs.errors import MappingError
from sandboxfs.tree.mapping import (
    Mapping,
    check_names,
    first_bad_name,
    check_underlying,
    parse_mapping_flag,
    split_inner_path,
)


def mapping_error(call, *args) -> str:
    """Call ``call(*args)``, which must raise MappingError; return its message."""
    with pytest.raises(MappingError) as info:
        call(*args)
    return info.value.message


# -- split_inner_path ----------------------------------------------------------------


@pytest.mark.parametrize(
    "path, components",
    [
        ("/", ()),
        (b"/", ()),
        ("/a", (b"a",)),
        ("/a/b/c", (b"a", b"b", b"c")),
        ("/a/b/", (b"a", b"b")),  # one trailing slash is tolerated
        ("/.hidden/..x/...", (b".hidden", b"..x", b"...")),  # only exact '.' and '..' are special
        ("/a b/c:d", (b"a b", b"c:d")),
        (b"/caf\xe9/\xff", (b"caf\xe9", b"\xff")),  # not UTF-8: kept as bytes
    ],
)
def test_split_inner_path_accepts(path, components):
    assert split_inner_path(path) == components


@pytest.mark.parametrize(
    "path, message",
    [
        ("", "path '' is not absolute"),
        ("a", "path 'a' is not absolute"),
        ("a/b", "path 'a/b' is not absolute"),
        ("./a", "path './a' is not absolute"),
        ("//", "path '//' has an empty component"),
        ("/a//b", "path '/a//b' has an empty component"),
        ("/a//", "path '/a//' has an empty component"),
        ("/.", "path '/.' has a '.' component"),
        ("/a/./b", "path '/a/./b' has a '.' component"),
        ("/a/.", "path '/a/.' has a '.' component"),
        ("/..", "path '/..' has a '..' component"),
        ("/a/../b", "path '/a/../b' has a '..' component"),
        ("/a/..", "path '/a/..' has a '..' component"),
        ("/a\0b", "path '/a\\x00b' contains a NUL byte"),
        ("/\0", "path '/\\x00' contains a NUL byte"),
    ],
)
def test_split_inner_path_refuses(path, message):
    assert mapping_error(split_inner_path, path) == message


def test_split_inner_path_names_undecodable_bytes_in_messages():
    message = mapping_error(split_inner_path, b"/a/\xff/../b")
    # Undecodable bytes show as \xff escapes, so the message is valid UTF-8 anywhere.
    assert message == "path '/a/\\xff/../b' has a '..' component"
    message.encode("utf-8")


# -- check_underlying ----------------------------------------------------------------


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/", b"/"),
        ("///", b"/"),
        ("/host/src", b"/host/src"),
        ("/host/src/", b"/host/src"),
        ("/host/src///", b"/host/src"),
        ("/host/a:b", b"/host/a:b"),
        # Underlying paths are the host's business: '.', '..' and '//' pass through.
        ("/host/../x/./y", b"/host/../x/./y"),
        (b"/host/\xff\xfe", b"/host/\xff\xfe"),
    ],
)
def test_check_underlying_accepts(path, expected):
    assert check_underlying(path) == expected


@pytest.mark.parametrize(
    "path, message",
    [
        ("", "underlying path '' is not absolute"),
        ("host/src", "underlying path 'host/src' is not absolute"),
        ("../x", "underlying path '../x' is not absolute"),
        ("/host\0/x", "underlying path '/host\\x00/x' contains a NUL byte"),
    ],
)
def test_check_underlying_refuses(path, message):
    assert mapping_error(check_underlying, path) == message


# -- the Mapping value -----------------------------------------------------------------


def test_mapping_of_validates_and_normalises():
    m = Mapping.of("/src/", "/host/src//", writable=True)
    assert m == Mapping((b"src",), b"/host/src", True)
    assert m.path == b"/src"
    assert m.describe() == "rw:/src:/host/src"


def test_mapping_of_root_path():
    m = Mapping.of("/", "/host")
    assert m.components == ()
    assert m.path == b"/"
    assert m.describe() == "ro:/:/host"


def test_mapping_of_refuses_bad_inner_path():
    assert mapping_error(Mapping.of, "/a/../b", "/host") == "path '/a/../b' has a '..' component"


def test_mapping_of_keeps_non_utf8_bytes():
    m = Mapping.of(b"/caf\xe9", b"/host/\xff")
    assert m.components == (b"caf\xe9",)
    assert m.underlying == b"/host/\xff"
    assert m.path == b"/caf\xe9"
    # describe() must not fail on undecodable bytes; it shows them as escapes.
    assert m.describe() == "ro:/caf\\xe9:/host/\\xff"


def test_mapping_is_an_immutable_value():
    m = Mapping.of("/a", "/b")
    with pytest.raises(AttributeError):
        m.writable = True  # type: ignore[misc]
    assert m == Mapping.of("/a/", "/b/")
    assert hash(m) == hash(Mapping.of("/a", "/b"))


# -- parse_mapping_flag ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("ro:/src:/host/src", Mapping((b"src",), b"/host/src", False)),
        ("rw:/out:/host/out", Mapping((b"out",), b"/host/out", True)),
        ("ro:/:/", Mapping((), b"/", False)),
        ("rw:/a/b/:/host/x/", Mapping((b"a", b"b"), b"/host/x", True)),
        # The underlying path may contain colons; the first two colons split.
        ("ro:/foo:/host/a:b:c", Mapping((b"foo",), b"/host/a:b:c", False)),
        ("rw:/foo:/host/::", Mapping((b"foo",), b"/host/::", True)),
    ],
)
def test_parse_mapping_flag_accepts(text, expected):
    assert parse_mapping_flag(text) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("ro:/foo", "bad mapping ro:/foo: expected three colon-separated fields"),
        ("bad", "bad mapping bad: expected three colon-separated fields"),
        ("", "bad mapping : expected three colon-separated fields"),
        ("row:/foo:/bar", "bad mapping row:/foo:/bar: type was row but should be ro or rw"),
        ("RO:/foo:/bar", "bad mapping RO:/foo:/bar: type was RO but should be ro or rw"),
        (":/foo:/bar", "bad mapping :/foo:/bar: type was  but should be ro or rw"),
        ("ro:/foo:bar", "bad mapping ro:/foo:bar: underlying path 'bar' is not absolute"),
        ("ro:/foo:", "bad mapping ro:/foo:: underlying path '' is not absolute"),
        ("ro:foo:/bar", "bad mapping ro:foo:/bar: path 'foo' is not absolute"),
        ("rw:/a/../b:/bar", "bad mapping rw:/a/../b:/bar: path '/a/../b' has a '..' component"),
    ],
)
def test_parse_mapping_flag_refuses(text, message):
    assert mapping_error(parse_mapping_flag, text) == message


def test_parse_mapping_flag_non_utf8_arguments():
    # argv arrives as str decoded with surrogateescape; the bytes must survive.
    text = os.fsdecode(b"rw:/caf\xe9:/host/\xff")
    m = parse_mapping_flag(text)
    assert m == Mapping((b"caf\xe9",), b"/host/\xff", True)


# -- group names -------------------------------------------------------------------------


def names_reason(names: list[bytes]) -> str | None:
    return check_names(b"\0".join(names), len(names))


@pytest.mark.parametrize(
    "names",
    [[b"a"], [b"a", b"b"], [b".a", b"..b", b"..."], [b"caf\xe9"],
     [b"sub/a", b"sub/deeper/b", b"c"], [b"a/...", b"a./.b"]],
)
def test_check_names_accepts(names):
    assert names_reason(names) is None


BAD = "a name is empty, '.' or '..', or has such a component"


@pytest.mark.parametrize(
    "names, reason",
    [
        ([b"a", b""], BAD),
        ([b"."], BAD),
        ([b"x", b".."], BAD),
        ([b"a\0b"], "a name contains a NUL byte"),
        ([b"/"], BAD),
        ([b"/a"], BAD),
        ([b"a/"], BAD),
        ([b"a//b"], BAD),
        ([b"a/./b"], BAD),
        ([b"a/.."], BAD),
        ([b"../a"], BAD),
    ],
)
def test_check_names_refuses(names, reason):
    assert names_reason(names) == reason


@pytest.mark.parametrize(
    "names, found",
    [([b"a", b"b/c", b"d//e", b".."], (2, BAD)), ([b"a", b"b\0"], (1, "a name contains a NUL byte")),
     ([b"a", b"b"], None)],
)
def test_first_bad_name_finds_the_first_culprit(names, found):
    assert first_bad_name(names) == found


def test_check_names_of_empty_group_gives_a_true_reason():
    # An empty group maps nothing but would still make scaffolds for its
    # directory, so refusing it is right; the reason must not blame a '/'.
    reason = check_names(b"", 0)
    assert reason is not None
    assert "'/'" not in reason
