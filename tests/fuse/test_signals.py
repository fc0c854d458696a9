"""Shutdown signals on a busy mount: detached at once, or 0.2's plain unmount retried.

Both command lines unmount on SIGHUP, SIGINT, SIGQUIT and SIGTERM alike
(test_lifecycle and test_compat send each to an idle mount).  On a busy one,
``sandboxfs mount`` detaches at once (lazily); the 0.2 command line tries a
plain unmount first, as 0.2 did, and while something in the mount is still in
use it keeps serving and retries every second -- until the mount is free,
``SANDBOXFS_UNMOUNT_TIMEOUT`` seconds have passed, or a second signal comes;
the last two detach it lazily (docs/compat.md, "Signals and exit status").

Every child is started through the ``sandboxfs_mount``/``sandboxfs02``
fixtures, whose teardown ends it by PID and checks /proc/self/mountinfo;
files a test opens in a mount are closed in ``finally``.
"""

from __future__ import annotations

import os
import signal

import pytest

from . import test_compat
from .harness import STOP_TIMEOUT, check_read_after_the_server_ended, is_mounted
from .test_lifecycle import close_dead_fd

sandboxfs02 = test_compat.sandboxfs02  # fixtures: 0.2 children, the host tree
tree = test_compat.tree

# Longer than any retry a test below lets run: a child that should still be
# serving has not merely been slow to exit.
RETRY_TIMEOUT = 15.0


# -- the native CLI: a busy mount is detached at once ----------------------------------------


def test_native_mount_detaches_a_busy_mount_at_once(sandboxfs_mount, tree):
    mount = sandboxfs_mount(["--mapping", f"ro:/src:{tree}"])
    fd = os.open(mount / "src" / "file", os.O_RDONLY)
    try:
        mount.signal(signal.SIGTERM)
        assert mount.wait() == 0, mount.log()
        assert not is_mounted(mount.mount_point)
        assert "will retry" not in mount.log()
        check_read_after_the_server_ended(fd, tree / "file")
    finally:
        close_dead_fd(fd)


# -- the 0.2 command line: a busy mount is unmounted once it is free --------------------------


def open_busy(child, name: str = "file") -> int:
    """Open a file through the mount (which makes a plain unmount fail with EBUSY)."""
    return os.open(child.mount_point / name, os.O_RDONLY)


def test_02_keeps_serving_a_busy_mount_and_unmounts_when_it_is_free(sandboxfs02, tree):
    child = sandboxfs02([f"--mapping=ro:/:{tree}"])
    fd = open_busy(child)
    try:
        child.proc.send_signal(signal.SIGTERM)
        child.wait_for_log("will retry")
        assert f"Unmounting {child.mount_point} failed" in child.log()
        assert os.pread(fd, 100, 0) == b"plain\n"  # the open file still reads
        assert sorted(os.listdir(child.mount_point)) == ["dir", "file", "rw", "subdir"]
        assert (child.mount_point / "dir" / "a.txt").read_text() == "from dir\n"
        assert child.proc.poll() is None and is_mounted(child.mount_point)
    finally:
        close_dead_fd(fd)
    assert child.proc.wait(timeout=RETRY_TIMEOUT) == 1, child.log()
    assert not is_mounted(child.mount_point)
    log = child.log()
    assert "Caught signal 15 (SIGTERM)" in log
    assert f"unmounted {child.mount_point} (plain unmount)" in log
    assert "detaching it now" not in log


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM, signal.SIGQUIT],
                         ids=lambda s: signal.Signals(s).name)
def test_02_second_signal_detaches_a_busy_mount_at_once(sandboxfs02, tree, second):
    child = sandboxfs02([f"--mapping=ro:/:{tree}"])
    fd = open_busy(child)
    try:
        child.proc.send_signal(signal.SIGTERM)
        child.wait_for_log("will retry")
        child.proc.send_signal(second)
        assert child.proc.wait(timeout=STOP_TIMEOUT) == 1, child.log()
        assert not is_mounted(child.mount_point)
        log = child.log()
        assert f"received {signal.Signals(second).name} while" in log
        assert "detaching it now (lazy unmount)" in log
        assert "Caught signal 15 (SIGTERM)" in log  # the signal that began the shutdown
        check_read_after_the_server_ended(fd, tree / "file")
    finally:
        close_dead_fd(fd)


def test_02_detaches_a_mount_still_busy_at_the_bound(sandboxfs02, tree, monkeypatch):
    monkeypatch.setenv("SANDBOXFS_UNMOUNT_TIMEOUT", "2")
    child = sandboxfs02([f"--mapping=ro:/:{tree}"])
    fd = open_busy(child)
    try:
        child.proc.send_signal(signal.SIGHUP)
        child.wait_for_log("will retry")
        assert child.proc.wait(timeout=RETRY_TIMEOUT) == 1, child.log()
        assert not is_mounted(child.mount_point)
        log = child.log()
        assert f"Unmounting {child.mount_point} still failed after 2 s" in log
        assert "detaching it now (lazy unmount)" in log
        assert "Caught signal 1 (SIGHUP)" in log
        check_read_after_the_server_ended(fd, tree / "file")
    finally:
        close_dead_fd(fd)


def test_02_open_directory_holds_the_unmount_too(sandboxfs02, tree):
    """An open directory (or a working directory) keeps the mount busy, as an open file does."""
    child = sandboxfs02([f"--mapping=ro:/:{tree}"])
    fd = os.open(child.mount_point / "dir", os.O_RDONLY | os.O_DIRECTORY)
    try:
        child.proc.send_signal(signal.SIGINT)
        child.wait_for_log("will retry")
        assert os.listdir(fd) == ["a.txt"]
    finally:
        close_dead_fd(fd)
    assert child.proc.wait(timeout=RETRY_TIMEOUT) == 1, child.log()
    assert not is_mounted(child.mount_point)
    assert "Caught signal 2 (SIGINT)" in child.log()


def test_02_timeout_zero_detaches_at_once(sandboxfs02, tree, monkeypatch):
    monkeypatch.setenv("SANDBOXFS_UNMOUNT_TIMEOUT", "0")
    child = sandboxfs02([f"--mapping=ro:/:{tree}"])
    fd = open_busy(child)
    try:
        child.proc.send_signal(signal.SIGTERM)
        assert child.proc.wait(timeout=STOP_TIMEOUT) == 1, child.log()
        assert not is_mounted(child.mount_point)
        assert "will retry" not in child.log()
    finally:
        close_dead_fd(fd)
