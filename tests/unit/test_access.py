"""Tests of sandboxfs.access without a mount: paths per inode, kinds per path, the report."""

from __future__ import annotations

from sandboxfs.fs.access import (
    CREATE, LIST, LOOKUP, OPEN, READ, REMOVE, ROOT_INODE, WRITE, AccessLog, AccessTracker,
)
from sandboxfs.control.protocol import name_value


def tracked(name: bytes = b"s") -> tuple[AccessTracker, AccessLog]:
    tracker = AccessTracker()
    return tracker, tracker.track(name)


def test_an_empty_tracker_is_false_and_a_tracked_one_true():
    tracker = AccessTracker()
    assert not tracker
    tracker.track(b"s")
    assert tracker
    tracker.untrack(b"s")
    assert not tracker


def test_paths_are_built_from_the_sandbox_root_down():
    tracker, log = tracked()
    assert tracker.entry(ROOT_INODE, b"s", 10, LOOKUP)  # the sandbox root itself
    assert tracker.entry(10, b"src", 11, LOOKUP)
    assert tracker.entry(11, b"a.c", 12, LOOKUP)
    tracker.note(12, OPEN | READ)
    assert log.paths == {b"src": LOOKUP, b"src/a.c": LOOKUP | OPEN | READ}


def test_other_sandboxes_and_mount_mappings_are_not_tracked():
    tracker, log = tracked()
    assert not tracker.entry(ROOT_INODE, b"other", 20, LOOKUP)
    assert not tracker.entry(20, b"file", 21, LOOKUP)
    tracker.note(21, READ)
    tracker.missing(20, b"nope")
    tracker.missing(ROOT_INODE, b"nope")
    assert log.paths == {} and log.missing == set()
    assert tracker.at == {}


def test_missing_names_and_later_creation():
    tracker, log = tracked()
    tracker.entry(ROOT_INODE, b"s", 10)
    tracker.missing(10, b"gone.h")
    tracker.missing(10, b"out.o")
    tracker.note_child(10, b"out.o", CREATE)
    report = log.report([], name_value)
    assert report["missing"] == ["gone.h"]  # out.o was the action's output
    assert report["accessed"] == {"out.o": ["create"]}


def test_untrack_forgets_the_inodes_of_that_sandbox_only():
    tracker = AccessTracker()
    tracker.track(b"a")
    tracker.track(b"b")
    tracker.entry(ROOT_INODE, b"a", 10)
    tracker.entry(ROOT_INODE, b"b", 20)
    tracker.entry(20, b"x", 21)
    tracker.untrack(b"a")
    assert set(tracker.at) == {20, 21}
    assert tracker.untrack(b"a") is None


def test_unused_is_declared_paths_with_nothing_used_at_or_below_them():
    _tracker, log = tracked()
    log.note(b"inc/used.h", LOOKUP | OPEN | READ)
    log.note(b"inc/probed.h", LOOKUP)  # looked up only: not a use
    log.note(b"lib", LIST)
    log.note(b"tree/deep/file", READ)
    log.note(b"out/new", CREATE)
    declared = [b"inc/used.h", b"inc/probed.h", b"inc/never.h", b"lib", b"tree", b"out", b"tool"]
    report = log.report(declared, name_value)
    assert report["unused"] == ["inc/never.h", "inc/probed.h", "tool"]


def test_kinds_are_listed_by_name_in_a_fixed_order():
    _tracker, log = tracked()
    log.note(b"f", REMOVE | READ | LOOKUP | WRITE)
    assert log.report([], name_value)["accessed"] == {"f": ["lookup", "read", "write", "remove"]}


def test_non_utf8_paths_stay_bytes_and_the_root_is_never_a_path():
    tracker, log = tracked()
    tracker.entry(ROOT_INODE, b"s", 10, LOOKUP)
    tracker.entry(10, b"caf\xe9", 11, LOOKUP)
    report = log.report([b"caf\xe9"], name_value)
    assert report["accessed"] == {b"caf\xe9": ["lookup"]}
    assert report["unused"] == [b"caf\xe9"]


def test_a_rename_moves_the_inode_to_its_new_path():
    tracker, log = tracked()
    tracker.entry(ROOT_INODE, b"s", 10)
    tracker.entry(10, b"out", 11)
    tracker.entry(11, b"tmp.o", 12, CREATE)
    tracker.note_child(11, b"tmp.o", REMOVE)
    tracker.note_child(11, b"a.o", CREATE)
    tracker.moved(12, 11, b"a.o")
    tracker.note(12, WRITE)
    assert log.paths == {b"out/tmp.o": CREATE | REMOVE, b"out/a.o": CREATE | WRITE}
