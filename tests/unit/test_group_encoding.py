"""Unit tests of sandboxfs.control.group_encoding: finding groups in a caller's list,
naming them by what they encode to, and prepared mappings.

Pure: strings and lists only.  How groups end up on the wire is tested through
the client session (test_client_session.py).
"""

from __future__ import annotations

import os
import pathlib

import pytest

from sandboxfs.control.group_encoding import (
    EncodedGroup, Single, encode_mappings, prepare, roots, subtree,
)
from sandboxfs.tree.groups import group_digest


@pytest.mark.parametrize(
    "path, host, expected",
    [
        ("/tc/bin/cc", "/opt/tc/bin/cc", ("", "/opt")),  # as long a REST as possible
        ("/tc/bin/cc", "/opt/tc-1/bin/cc", ("/tc", "/opt/tc-1")),
        ("/src/a.c", "/ws/src/a.c", ("", "/ws")),
        ("/x", "/x", ("", "")),
        ("/tc/a.h", "/etc/a.h", ("/tc", "/etc")),
        ("/bin/cc", "/usr/bin/gcc", None),
        ("/a/", "/h/a/", None),
        ("rel/a", "/h/rel/a", None),
        ("/a\0/x", "/h/x", None),
    ],
)
def test_roots(path, host, expected):
    assert roots(path, host) == expected


def test_subtree_checks_every_mapping_of_the_range():
    paths = ["/tc/a", "/tc/b/c", "/tc/d", "/other/e"]
    hosts = ["/h/a", "/h/b/c", "/h/d", "/h/e"]
    flags = [False, False, False, False]
    assert subtree(paths, hosts, flags, 0, 3) == ("/tc", "/h", "a\0b/c\0d")
    assert subtree(paths, hosts, flags, 0, 4) is None  # /other/e is not below /tc
    assert subtree(paths, hosts, [False, True, False, False], 0, 3) is None
    assert subtree(paths, ["/h/a", "/h/b/X", "/h/d", "/h/e"], flags, 0, 3) is None


def test_subtree_refuses_nul_and_trailing_slashes_inside_a_range():
    flags = [False, False]
    assert subtree(["/d/a", "/d/b\0c"], ["/h/a", "/h/b\0c"], flags, 0, 2) is None
    assert subtree(["/d/a", "/d/b/"], ["/h/a", "/h/b/"], flags, 0, 2) is None


def items(count: int, prefix: str = "f") -> list[tuple[str, str, bool]]:
    return [(f"/tc/{prefix}{i}", f"/h/{prefix}{i}", False) for i in range(count)]


def test_a_list_below_one_pair_of_roots_is_one_group():
    (group,) = encode_mappings(items(3))
    assert isinstance(group, EncodedGroup)
    assert (group.root, group.host_root, group.writable, group.names, group.count) == \
        (b"/tc", b"/h", False, b"f0\0f1\0f2", 3)
    assert group.digest == group_digest(b"/tc", b"/h", False, b"f0\0f1\0f2")


def test_writability_changes_cut_groups_and_singles_stay_alone():
    mappings = items(2) + [("/out", "/tmp/out", True), ("/bin/cc", "/usr/bin/gcc")]
    first, out, cc = encode_mappings(mappings)
    assert first.count == 2
    assert out == EncodedGroup(b"/", b"/tmp", True, b"out", 1, out.digest)
    assert cc == Single(b"/bin/cc", b"/usr/bin/gcc", False)


def test_halves_of_one_group_join_up_again():
    mappings = items(5) + [("/bin/cc", "/usr/bin/gcc")] + items(4, "g")
    elements = encode_mappings(mappings)
    assert [e.count if isinstance(e, EncodedGroup) else 1 for e in elements] == [5, 1, 4]


def test_equal_lists_give_equal_digests_whatever_objects_they_are_made_of():
    """What decides "the same group" is what it encodes to, never the caller's objects."""
    tuples = items(100)
    as_lists = [list(t) for t in tuples]
    as_bytes = [(p.encode(), h.encode(), w) for p, h, w in tuples]
    as_paths = [(pathlib.PurePosixPath(p), pathlib.PurePosixPath(h), w) for p, h, w in tuples]
    digests = {encode_mappings(each)[0].digest for each in (tuples, as_lists, as_bytes, as_paths)}
    assert len(digests) == 1


class MutablePath(os.PathLike):
    """A caller's own path object, which it may change after use."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __fspath__(self) -> str:
        return self.path


def test_a_changed_path_object_changes_the_digest():
    hosts = [MutablePath(f"/h/f{i}") for i in range(50)]
    mappings = [(f"/tc/f{i}", host) for i, host in enumerate(hosts)]
    before = encode_mappings(mappings)
    hosts[7].path = "/elsewhere/f7"
    after = encode_mappings(mappings)
    assert [e.digest for e in before if isinstance(e, EncodedGroup)] != \
        [e.digest for e in after if isinstance(e, EncodedGroup)]
    assert [(e.root, e.host_root, e.names) for e in after][1] == (b"/tc", b"/elsewhere", b"f7")


def test_prepared_mappings_keep_what_they_encoded_to():
    hosts = [MutablePath(f"/h/f{i}") for i in range(50)]
    prepared = prepare([(f"/tc/f{i}", host) for i, host in enumerate(hosts)])
    hosts[7].path = "/elsewhere/f7"
    (group,) = prepared.elements
    assert group.count == 50 and b"f7" in group.names.split(b"\0")
    assert len(prepared) == 50


def test_prepared_mappings_mix_with_other_mappings_in_order():
    prepared = prepare(items(10))
    elements = encode_mappings([("/bin/cc", "/usr/bin/gcc"), prepared, ("/out", "/tmp/out", True)])
    assert [type(e).__name__ for e in elements] == ["Single", "EncodedGroup", "EncodedGroup"]
    assert elements[1] is prepared.elements[0]
    assert encode_mappings(prepared) == list(prepared.elements)


def test_a_bad_item_is_still_refused():
    with pytest.raises(TypeError):
        encode_mappings([("/a", "/b"), 7])
