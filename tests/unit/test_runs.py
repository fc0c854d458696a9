"""Unit tests of sandboxfs.runs: finding runs, and the runs a session remembers.

Pure: strings and lists only.  How runs end up on the wire is tested through
the client session (test_client_session.py).
"""

from __future__ import annotations

import pytest

from sandboxfs import runs
from sandboxfs.runs import REMEMBERED_MIN, KnownRuns, roots, subtree


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


def test_a_known_run_is_found_at_the_start_of_any_longer_range():
    known = KnownRuns()
    mine = items(REMEMBERED_MIN)
    known.remember(mine, 0, len(mine), "encoded")
    later = [("/src/x.c", "/ws/x.c", False)] + [tuple(i) for i in mine] + items(3, "g")
    assert known.find(later, 1, len(later)) == (1 + len(mine), "encoded")
    assert known.find(later, 0, len(later)) is None
    assert known.find(later, 1, len(mine)) is None  # the range is shorter than the run


def test_a_run_with_one_mapping_changed_is_not_found():
    known = KnownRuns()
    mine = items(REMEMBERED_MIN)
    known.remember(mine, 0, len(mine), "encoded")
    changed = list(mine)
    changed[-1] = ("/tc/f999", "/h/f999", True)
    assert known.find(changed, 0, len(changed)) is None


def test_small_and_unhashable_runs_are_not_remembered():
    known = KnownRuns()
    small = items(REMEMBERED_MIN - 1)
    known.remember(small, 0, len(small), "x")
    assert known.find(small, 0, len(small)) is None
    lists = [list(i) for i in items(REMEMBERED_MIN)]
    known.remember(lists, 0, len(lists), "x")
    assert known.find(lists, 0, len(lists)) is None


def test_the_oldest_runs_go_first_beyond_the_bound(monkeypatch):
    monkeypatch.setattr(runs, "REMEMBERED_MAX", 2 * REMEMBERED_MIN)
    known = KnownRuns()
    lists = [items(REMEMBERED_MIN, prefix) for prefix in "abc"]
    for number, each in enumerate(lists):
        known.remember(each, 0, len(each), number)
    assert known.find(lists[0], 0, REMEMBERED_MIN) is None
    assert known.find(lists[1], 0, REMEMBERED_MIN) == (REMEMBERED_MIN, 1)
    assert known.find(lists[2], 0, REMEMBERED_MIN) == (REMEMBERED_MIN, 2)
