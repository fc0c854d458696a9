"""Unit tests of sandboxfs.groups: splitting a group's names by directory, and the cache.

Pure: no filesystem.  ``split_group`` returns MappingGroups per directory in
the order sent, or None when any name is unusable (the protocol decoder then
names it); large groups are cached by their exact bytes, within a bound.
"""

from __future__ import annotations

import pytest

from sandboxfs import groups
from sandboxfs.groups import CACHED_MIN_NAMES, split_group
from sandboxfs.mapping import MappingGroup


@pytest.fixture(autouse=True)
def empty_cache():
    groups.clear_cache()
    yield
    groups.clear_cache()


def split(blob: bytes, directory=(b"tc",), host=b"/opt/tc", writable=False):
    return split_group(directory, host, writable, blob, blob.count(b"\0") + 1)


def big_blob(count: int, prefix: str = "d") -> bytes:
    return b"\0".join(f"{prefix}{i // 20}/f{i}".encode() for i in range(count))


def test_flat_names_make_one_group():
    assert split(b"a\0b") == (MappingGroup((b"tc",), b"/opt/tc", False, [b"a", b"b"]),)


def test_relative_paths_make_one_group_per_directory_in_order():
    result = split(b"x\0inc/a\0inc/b\0inc/sys/c\0lib/d\0inc/e", writable=True)
    assert [(g.directory, g.host_dir, g.writable, list(g.names)) for g in result] == [
        ((b"tc",), b"/opt/tc", True, [b"x"]),
        ((b"tc", b"inc"), b"/opt/tc/inc", True, [b"a", b"b"]),
        ((b"tc", b"inc", b"sys"), b"/opt/tc/inc/sys", True, [b"c"]),
        ((b"tc", b"lib"), b"/opt/tc/lib", True, [b"d"]),
        ((b"tc", b"inc"), b"/opt/tc/inc", True, [b"e"]),
    ]
    assert all(type(g) is MappingGroup for g in result)


def test_host_root_makes_no_double_slash():
    (group,) = split(b"usr/bin/cc", directory=(), host=b"/")
    assert group == MappingGroup((b"usr", b"bin"), b"/usr/bin", False, [b"cc"])


@pytest.mark.parametrize(
    "blob",
    [b"", b"a\0", b".", b"a\0..", b"/a", b"a/", b"a//b", b"./a", b"a/../b", b"a/.", b"x\0/etc/passwd"],
)
def test_unusable_names_give_none(blob):
    assert split(blob) is None


def test_a_nul_inside_a_name_gives_none():
    assert split_group((), b"/h", False, b"a\0b", 1) is None
    assert split_group((), b"/h", False, b"", 0) is None


def test_a_large_group_is_split_once_and_handed_back_as_the_same_objects():
    blob = big_blob(CACHED_MIN_NAMES)
    first = split(blob)
    again = split(bytes(bytearray(blob)))  # equal bytes, another object: as from a new request
    assert again is first
    assert again[0].names is first[0].names


def test_small_groups_are_not_cached():
    blob = big_blob(CACHED_MIN_NAMES - 1)
    assert split(blob) is not split(blob)
    assert split(blob) == split(blob)


def test_the_cache_key_is_the_whole_group():
    blob = big_blob(CACHED_MIN_NAMES)
    first = split(blob)
    assert split(blob, writable=True) is not first
    assert split(blob, host=b"/other") is not first
    assert split(blob, host=b"/other")[0].host_dir == b"/other/d0"


def test_the_cache_keeps_at_most_its_bound_of_names(monkeypatch):
    monkeypatch.setattr(groups, "CACHE_MAX_NAMES", 3 * CACHED_MIN_NAMES)
    blobs = [big_blob(CACHED_MIN_NAMES, prefix=f"p{k}_") for k in range(5)]
    kept = [split(blob) for blob in blobs]
    assert groups._cached_names == 3 * CACHED_MIN_NAMES
    assert split(blobs[4]) is kept[4]  # the newest are kept
    assert split(blobs[0]) is not kept[0]  # the oldest were dropped


def test_a_group_larger_than_the_bound_is_not_cached(monkeypatch):
    monkeypatch.setattr(groups, "CACHE_MAX_NAMES", CACHED_MIN_NAMES)
    blob = big_blob(CACHED_MIN_NAMES + 1)
    assert split(blob) is not split(blob)
    assert groups._cached_names == 0
