"""Unit tests of sandboxfs.tree.existence: existence checks of host paths.

``find_missing`` takes (host directory, names) entries in request order and
checks small groups with one ``lstat`` per name, groups of
``LISTING_THRESHOLD`` or more names against one listing of the directory
(falling back to ``lstat`` when the directory cannot be listed).  Listings
are cached and revalidated with the directory's mtime, but only once that
mtime is a few seconds old.  Host trees are made in ``tmp_path``;
``os.listdir``/``os.lstat`` are only *counted* (spied), never replaced.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from sandboxfs.tree import existence
from sandboxfs.errors import errno_name
from sandboxfs.tree.existence import LISTING_THRESHOLD, find_missing, split_host_path

ENOENT = errno_name(errno.ENOENT)
ENOTDIR = errno_name(errno.ENOTDIR)


def b(path: Path | str) -> bytes:
    return os.fsencode(path)


@pytest.fixture(autouse=True)
def empty_listing_cache(monkeypatch):
    """Each test starts with no cached directory listings."""
    monkeypatch.setattr(existence, "_listings", {})


@pytest.fixture
def syscalls(monkeypatch) -> dict[str, list[bytes]]:
    """Record the paths find_missing passes to os.listdir and os.lstat."""
    calls: dict[str, list[bytes]] = {"listdir": [], "lstat": []}
    real_listdir, real_lstat = os.listdir, os.lstat

    def listdir(path):
        calls["listdir"].append(path)
        return real_listdir(path)

    def lstat(path, *args, **kwargs):
        calls["lstat"].append(path)
        return real_lstat(path, *args, **kwargs)

    monkeypatch.setattr(existence.os, "listdir", listdir)
    monkeypatch.setattr(existence.os, "lstat", lstat)
    return calls


def make_files(directory: Path, names) -> list[bytes]:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_text(name)
    return [b(name) for name in names]


def age(directory: Path, seconds: float = 60) -> None:
    """Make the directory's mtime old enough for its listing to be cached."""
    past = time.time() - seconds
    os.utime(directory, (past, past))


def entry(path: Path | bytes) -> tuple[bytes, list[bytes]]:
    """One host path as a (directory, [name]) entry."""
    directory, name = split_host_path(os.fsencode(path))
    return directory, [name]


def test_errno_name_spells_symbol_and_text():
    assert ENOENT == "ENOENT (No such file or directory)"


@pytest.mark.parametrize(
    "path, expected",
    [
        (b"/a/b", (b"/a", b"b")),
        (b"/a", (b"/", b"a")),
        (b"/", (b"/", b"")),
        (b"/a/b\xff", (b"/a", b"b\xff")),
    ],
)
def test_split_host_path(path, expected):
    assert split_host_path(path) == expected


def test_empty_request_has_nothing_missing():
    assert find_missing([]) == {}
    assert find_missing([(b"/", [])]) == {}


def test_all_present_small_group(tmp_path, syscalls):
    names = make_files(tmp_path, ["a", "b"])
    assert find_missing([(b(tmp_path), names)]) == {}
    assert syscalls["listdir"] == []
    assert sorted(syscalls["lstat"]) == sorted(b(tmp_path / n.decode()) for n in names)


def test_missing_path_reason_names_errno(tmp_path, syscalls):
    make_files(tmp_path, ["a"])
    request = [entry(tmp_path / "a"), entry(tmp_path / "nope"), entry(tmp_path / "gone" / "deeper")]
    assert find_missing(request) == {1: ENOENT, 2: ENOENT}
    assert syscalls["listdir"] == []


def test_indices_count_names_across_entries(tmp_path):
    make_files(tmp_path / "d1", ["a", "b"])
    make_files(tmp_path / "d2", ["c"])
    request = [
        (b(tmp_path / "d1"), [b"a", b"x", b"b"]),  # indices 0..2
        (b(tmp_path / "d2"), [b"y", b"c"]),  # indices 3..4
        (b(tmp_path / "d1"), [b"z"]),  # index 5: same directory again
    ]
    assert find_missing(request) == {1: ENOENT, 3: ENOENT, 5: ENOENT}


def test_empty_name_stands_for_the_directory(tmp_path):
    request = [(b(tmp_path), [b""]), (b(tmp_path / "nope"), [b""]), (b"/", [b""])]
    assert find_missing(request) == {1: ENOENT}


def test_listing_branch_for_large_group(tmp_path, syscalls):
    names = make_files(tmp_path / "d", [f"f{i}" for i in range(LISTING_THRESHOLD + 2)])
    request = [(b(tmp_path / "d"), names[:2] + [b"absent"] + names[2:])]
    assert find_missing(request) == {2: ENOENT}
    assert syscalls["listdir"] == [b(tmp_path / "d")]
    # Names found in the listing are not lstat'ed; only the missing one is, for its reason.
    assert syscalls["lstat"] == [b(tmp_path / "d" / "absent")]


def test_threshold_counts_names_of_all_entries_for_one_directory(tmp_path, syscalls):
    names = make_files(tmp_path, [f"x{i}" for i in range(LISTING_THRESHOLD)])
    request = [(b(tmp_path), [name]) for name in names]  # one name per entry
    assert find_missing(request) == {}
    assert syscalls["listdir"] == [b(tmp_path)]
    assert syscalls["lstat"] == []


def test_group_below_threshold_uses_lstat(tmp_path, syscalls):
    names = make_files(tmp_path, [f"x{i}" for i in range(LISTING_THRESHOLD - 1)])
    assert find_missing([(b(tmp_path), names)]) == {}
    assert syscalls["listdir"] == []
    assert len(syscalls["lstat"]) == LISTING_THRESHOLD - 1


@pytest.mark.parametrize("count", [1, LISTING_THRESHOLD + 1], ids=["lstat", "listing"])
def test_dangling_symlink_counts_as_existing(tmp_path, count):
    names = []
    for i in range(count):
        (tmp_path / f"link{i}").symlink_to(tmp_path / "no-such-target")
        names.append(b"link%d" % i)
    assert find_missing([(b(tmp_path), names)]) == {}


def test_parent_is_a_file_gives_enotdir_in_listing_fallback(tmp_path, syscalls):
    make_files(tmp_path, ["plain"])
    plain = b(tmp_path / "plain")
    names = [b"child%d" % i for i in range(LISTING_THRESHOLD)]
    # Listing "plain" fails (ENOTDIR); the per-name fallback names the exact reason.
    assert find_missing([(plain, names)]) == {i: ENOTDIR for i in range(LISTING_THRESHOLD)}
    assert len(syscalls["lstat"]) == LISTING_THRESHOLD


def test_missing_directory_in_listing_fallback(tmp_path):
    names = [b"c%d" % i for i in range(LISTING_THRESHOLD)]
    assert find_missing([(b(tmp_path / "nodir"), names)]) == {i: ENOENT for i in range(LISTING_THRESHOLD)}


def test_unreadable_directory(tmp_path):
    locked = tmp_path / "locked"
    names = make_files(locked, [f"f{i}" for i in range(LISTING_THRESHOLD)])
    locked.chmod(0)
    try:
        result = find_missing([(b(locked), names + [b"absent"])])
    finally:
        locked.chmod(0o755)
    if os.geteuid() == 0:  # root lists and searches it anyway
        assert result == {len(names): ENOENT}
    else:  # the listing fails (EACCES); the lstat fallback reports EACCES for every name
        assert result == {i: errno_name(errno.EACCES) for i in range(len(names) + 1)}


def test_paths_directly_below_root():
    request = [entry(b"/proc"), entry(b"/no-such-entry-below-root-for-sandboxfs-tests")]
    assert find_missing(request) == {1: ENOENT}


def test_non_utf8_names(tmp_path):
    name = b"caf\xe9"
    with open(b(tmp_path) + b"/" + name, "wb"):
        pass
    assert find_missing([(b(tmp_path), [name, name + b"\xff"])]) == {1: ENOENT}
    many = [name] * LISTING_THRESHOLD + [name + b"\xff"]
    assert find_missing([(b(tmp_path), many)]) == {LISTING_THRESHOLD: ENOENT}


# -- the listing cache ---------------------------------------------------------------------


def big_request(directory: Path, names: list[bytes]) -> list[tuple[bytes, list[bytes]]]:
    assert len(names) >= LISTING_THRESHOLD
    return [(b(directory), names)]


def test_old_directory_listing_is_cached(tmp_path, syscalls):
    d = tmp_path / "d"
    names = make_files(d, [f"f{i}" for i in range(LISTING_THRESHOLD)])
    age(d)
    assert find_missing(big_request(d, names)) == {}
    assert find_missing(big_request(d, names)) == {}
    assert syscalls["listdir"] == [b(d)]  # the second check used the cached listing
    assert syscalls["lstat"] == []


def test_recently_changed_directory_is_not_cached(tmp_path, syscalls):
    d = tmp_path / "d"
    names = make_files(d, [f"f{i}" for i in range(LISTING_THRESHOLD)])  # mtime: now
    find_missing(big_request(d, names))
    find_missing(big_request(d, names))
    assert syscalls["listdir"] == [b(d), b(d)]


def test_cached_listing_sees_added_entry(tmp_path):
    d = tmp_path / "d"
    names = make_files(d, [f"f{i}" for i in range(LISTING_THRESHOLD)])
    age(d)
    request = big_request(d, names + [b"late"])
    assert find_missing(request) == {LISTING_THRESHOLD: ENOENT}
    (d / "late").write_text("now here")  # changes the directory's mtime
    assert find_missing(request) == {}


def test_cached_listing_sees_removed_entry(tmp_path):
    d = tmp_path / "d"
    names = make_files(d, [f"f{i}" for i in range(LISTING_THRESHOLD)])
    age(d)
    assert find_missing(big_request(d, names)) == {}
    (d / "f0").unlink()  # changes the directory's mtime
    assert find_missing(big_request(d, names)) == {0: ENOENT}


def test_cached_listing_of_directory_that_vanished(tmp_path):
    d = tmp_path / "d"
    names = make_files(d, [f"f{i}" for i in range(LISTING_THRESHOLD)])
    age(d)
    assert find_missing(big_request(d, names)) == {}
    for name in names:
        (d / os.fsdecode(name)).unlink()
    d.rmdir()
    assert find_missing(big_request(d, names)) == {i: ENOENT for i in range(len(names))}


# -- name lists a cached listing already covered ---------------------------------------------


def test_a_covered_name_list_is_not_looked_up_again(tmp_path, monkeypatch):
    d = tmp_path / "d"
    names = make_files(d, [f"f{i}" for i in range(LISTING_THRESHOLD)])
    age(d)
    assert find_missing(big_request(d, names)) == {}
    lookups = []

    class Spy(frozenset):
        def issuperset(self, other):
            lookups.append(other)
            return frozenset.issuperset(self, other)

    listing = existence._listings[b(d)]
    listing.names = Spy(listing.names)
    assert find_missing(big_request(d, names)) == {}  # the same list object: known
    assert lookups == []
    assert find_missing(big_request(d, list(names))) == {}  # an equal copy: looked up
    assert len(lookups) == 1


def test_a_covered_name_list_is_checked_again_once_the_directory_changes(tmp_path):
    d = tmp_path / "d"
    names = make_files(d, [f"f{i}" for i in range(LISTING_THRESHOLD)])
    age(d)
    assert find_missing(big_request(d, names)) == {}
    (d / "f1").unlink()
    age(d, 30)  # a new mtime, still old enough to be cached
    assert find_missing(big_request(d, names)) == {1: ENOENT}


def test_a_listing_remembers_only_a_few_name_lists(tmp_path):
    d = tmp_path / "d"
    names = make_files(d, [f"f{i}" for i in range(LISTING_THRESHOLD)])
    age(d)
    lists = [list(names) for _ in range(existence._MAX_COVERED + 3)]
    for each in lists:
        assert find_missing(big_request(d, each)) == {}
    covered = existence._listings[b(d)].covered
    assert len(covered) == existence._MAX_COVERED
    assert all(any(known is each for each in lists) for known in covered)
