"""Unit tests of sandboxfs.tree.groups: splitting a group's names per directory, digests,
and the store that keeps groups by digest.

Pure: no filesystem.  ``make_group`` returns a Group whose parts are the
names per directory in the order sent, or None when any name is unusable
(the protocol decoder then names it).
"""

from __future__ import annotations

import pytest

from sandboxfs.control.group_encoding import encode_mappings
from sandboxfs.tree.groups import (
    DirectoryGroup, Group, GroupStore, group_digest, group_of, make_group, split_names,
)
from sandboxfs.tree.nodes import LazyFile


def split(blob: bytes, directory=(b"tc",), host=b"/opt/tc", writable=False):
    return split_names(directory, host, writable, blob)


def big_blob(count: int, prefix: str = "d") -> bytes:
    return b"\0".join(f"{prefix}{i // 20}/f{i}".encode() for i in range(count))


def fields(part: DirectoryGroup) -> tuple:
    return part.directory, part.host_dir, part.writable, list(part.names)


def test_flat_names_make_one_part():
    (part,) = split(b"a\0b")
    assert fields(part) == ((b"tc",), b"/opt/tc", False, [b"a", b"b"])


def test_relative_paths_make_one_part_per_directory_in_order():
    result = split(b"x\0inc/a\0inc/b\0inc/sys/c\0lib/d\0inc/e", writable=True)
    assert [fields(part) for part in result] == [
        ((b"tc",), b"/opt/tc", True, [b"x"]),
        ((b"tc", b"inc"), b"/opt/tc/inc", True, [b"a", b"b"]),
        ((b"tc", b"inc", b"sys"), b"/opt/tc/inc/sys", True, [b"c"]),
        ((b"tc", b"lib"), b"/opt/tc/lib", True, [b"d"]),
        ((b"tc", b"inc"), b"/opt/tc/inc", True, [b"e"]),
    ]
    assert all(part.template is None for part in result)  # writable: a node per name


def test_read_only_parts_carry_one_shared_lazy_file_per_directory():
    (first, second) = split(b"a\0b\0sub/c")
    assert list(first.template) == [b"a", b"b"]
    (lazy,) = set(map(id, first.template.values()))
    assert isinstance(first.template[b"a"], LazyFile)
    assert first.template[b"a"].host_dir == b"/opt/tc"
    assert second.template[b"c"].host_dir == b"/opt/tc/sub"


def test_host_root_makes_no_double_slash():
    (part,) = split(b"usr/bin/cc", directory=(), host=b"/")
    assert fields(part) == ((b"usr", b"bin"), b"/usr/bin", False, [b"cc"])


@pytest.mark.parametrize(
    "blob",
    [b"", b"a\0", b".", b"a\0..", b"/a", b"a/", b"a//b", b"./a", b"a/../b", b"a/.", b"x\0/etc/passwd"],
)
def test_unusable_names_give_none(blob):
    assert make_group((b"tc",), b"/opt/tc", False, blob, blob.count(b"\0") + 1) is None


def test_a_nul_inside_a_name_gives_none():
    assert make_group((), b"/h", False, b"a\0b", 1) is None
    assert make_group((), b"/h", False, b"", 0) is None


def test_group_paths_count_and_cost():
    group = group_of((b"inc",), b"/usr/include", False, [b"a.h", b"sys/b.h", b"sys/c.h"])
    assert group.count == 3
    assert [group.path(i) for i in range(3)] == [b"/inc/a.h", b"/inc/sys/b.h", b"/inc/sys/c.h"]
    assert group.cost > len(b"a.h\0sys/b.h\0sys/c.h")
    with pytest.raises(IndexError):
        group.path(3)
    with pytest.raises(ValueError):
        group_of((), b"/h", False, [b"ok", b"../up"])


# -- digests ---------------------------------------------------------------------------


def test_the_digest_covers_every_field():
    base = group_digest(b"/tc", b"/opt/tc", False, b"a\0b")
    assert len(base) == 32
    assert group_digest(b"/tc", b"/opt/tc", False, b"a\0b") == base
    others = {group_digest(b"/tc2", b"/opt/tc", False, b"a\0b"),
              group_digest(b"/tc", b"/opt/tc2", False, b"a\0b"),
              group_digest(b"/tc", b"/opt/tc", True, b"a\0b"),
              group_digest(b"/tc", b"/opt/tc", False, b"a\0c")}
    assert base not in others and len(others) == 4


def test_the_digest_cannot_be_shifted_between_fields():
    # The same bytes split differently between root and names must not collide.
    assert group_digest(b"/a", b"/h", False, b"b") != group_digest(b"/a\0b", b"/h", False, b"")


def test_client_and_server_compute_the_same_digest():
    (element,) = encode_mappings([(f"/tc/d{i}/f", f"/opt/tc/d{i}/f") for i in range(50)])
    assert (element.root, element.host_root) == (b"/", b"/opt")  # roots as short as can be
    group = make_group((), element.host_root, False, element.names, element.count)
    assert group.digest == element.digest


# -- the store -------------------------------------------------------------------------


def stored(k: int, count: int = 100) -> Group:
    return make_group((b"tc",), b"/opt/tc", False, big_blob(count, prefix=f"p{k}_"), count)


def test_the_store_finds_groups_by_digest_and_counts_hits():
    store = GroupStore()
    group = stored(0)
    assert store.get(group.digest) is None
    assert store.add(group) is group
    assert store.get(group.digest) is group
    assert store.stats()["group_hits"] == 1 and store.stats()["group_misses"] == 1


def test_an_equal_group_added_again_gives_back_the_one_kept():
    store = GroupStore()
    first = store.add(stored(0))
    again = stored(0)
    assert again is not first
    assert store.add(again) is first
    assert len(store) == 1


def test_the_store_keeps_its_budget_dropping_the_least_recently_used():
    groups = [stored(k) for k in range(5)]
    store = GroupStore(budget_bytes=3 * groups[0].cost + 10)
    for group in groups[:3]:
        store.add(group)
    store.get(groups[0].digest)  # now the most recent: groups[1] is the oldest
    store.add(groups[3])
    assert store.get(groups[1].digest) is None
    assert all(store.get(g.digest) is g for g in (groups[0], groups[2], groups[3]))
    assert store.stats()["group_bytes"] <= store.budget_bytes


def test_a_group_larger_than_the_budget_is_used_but_not_kept():
    group = stored(0, count=1000)
    store = GroupStore(budget_bytes=group.cost - 1)
    assert store.add(group) is group
    assert store.get(group.digest) is None
    assert store.stats()["group_bytes"] == 0


def test_discard_and_clear():
    store = GroupStore()
    a, b = store.add(stored(0)), store.add(stored(1))
    store.discard(a.digest)
    assert store.get(a.digest) is None and store.get(b.digest) is b
    store.clear()
    assert len(store) == 0 and store.stats()["group_bytes"] == 0
