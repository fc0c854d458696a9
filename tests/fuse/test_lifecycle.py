"""The life of a mount through the real CLI: start, serve, end, and what is left behind.

Covered here:

* shutdown: SIGTERM/SIGINT/SIGHUP and an external ``fusermount3 -u`` end the
  child with status 0 and nothing mounted; a signal while files are open
  detaches lazily, and the open files then fail with ENOTCONN;
* dead-mount recovery: a SIGKILLed instance leaves an ENOTCONN mount that the
  next ``sandboxfs mount`` on the same point clears;
* the test harness's own cleanup (``Mount.stop``/``Mount.start``) on a child
  that ignores SIGTERM, a killed child, and a child that fails to start;
* CLI errors before mounting: exit status, the message, nothing mounted;
* ``--allow``: who besides the mounting user may use the mount.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from . import harness
from .conftest import SYSTEM_PYTHON, run_as
from .harness import Mount, MountFailed, check_read_after_the_server_ended, is_mounted

# The system python: the test venv's interpreter may not be readable by other users.
# Prints the names in a directory, or the errno name and exit status 1.
LISTDIR_SCRIPT = """
import errno, os, sys
try:
    print(" ".join(sorted(os.listdir(sys.argv[1]))))
except OSError as e:
    print(errno.errorcode[e.errno])
    sys.exit(1)
"""


# -- helpers -----------------------------------------------------------------------------


def make_source(workdir: Path) -> Path:
    """A small host tree ``src/`` (other users may read it): ``hello.txt`` and ``sub/``."""
    src = workdir / "src"
    src.mkdir()
    (src / "hello.txt").write_text("hello\n")
    (src / "sub").mkdir()
    return src


def mount_points() -> list[str]:
    """Every mount point in /proc/self/mountinfo, in order (stacked mounts repeat)."""
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4].encode().decode("unicode_escape") for line in f]


def mount_entries(path: Path) -> int:
    """How many mounts are stacked on ``path``."""
    return mount_points().count(os.path.realpath(path))


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or below ``directory``: what a failed command must not leave."""
    prefix = os.path.realpath(directory)
    return [p for p in mount_points() if p == prefix or p.startswith(prefix + "/")]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sandboxfs", *args],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )


def wait_until_served(mount: Mount) -> None:
    """Make one request, so the child is inside its loop (signal handlers installed)."""
    os.listdir(mount.mount_point)


def wait_for_log(mount: Mount, text: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in mount.log():
        assert mount.alive(), f"sandboxfs exited with {mount.proc.returncode}:\n{mount.log()}"
        assert time.monotonic() < deadline, f"no {text!r} in the log within {timeout}s:\n{mount.log()}"
        time.sleep(0.02)


def end_process(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()


def close_dead_fd(fd: int) -> None:
    """Close an fd of a mount whose server is gone: the fd is released, close may say ENOTCONN."""
    try:
        os.close(fd)
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise


def assert_cleanly_gone(mount: Mount, status: int) -> None:
    assert status == 0, f"sandboxfs exited with {status}:\n{mount.log()}"
    assert not is_mounted(mount.mount_point), f"{mount.mount_point} still mounted"
    assert f"unmounted {mount.mount_point}" in mount.log()


# -- shutdown ------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT],
                         ids=lambda s: signal.Signals(s).name)
def test_signal_unmounts_and_exits_zero(sandboxfs_mount, workdir, signum):
    mount = sandboxfs_mount(["--mapping", f"ro:/src:{make_source(workdir)}"])
    wait_until_served(mount)
    mount.signal(signum)
    assert_cleanly_gone(mount, mount.wait())
    assert f"received {signal.Signals(signum).name}" in mount.log()


def test_sighup_ignored_at_start_stays_ignored(sandboxfs_mount, workdir):
    """``nohup sandboxfs mount``: the hangup of the terminal must not unmount."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # what nohup does; inherited
    try:
        mount = sandboxfs_mount(["--mapping", f"ro:/src:{make_source(workdir)}"])
    finally:
        signal.signal(signal.SIGHUP, previous)
    wait_until_served(mount)
    mount.signal(signal.SIGHUP)
    time.sleep(0.5)
    assert mount.alive() and is_mounted(mount.mount_point)
    wait_until_served(mount)
    mount.signal(signal.SIGTERM)
    assert_cleanly_gone(mount, mount.wait())


def test_external_unmount_ends_the_child(sandboxfs_mount, workdir):
    mount = sandboxfs_mount(["--mapping", f"ro:/src:{make_source(workdir)}"])
    wait_until_served(mount)
    subprocess.run(["fusermount3", "-u", str(mount.mount_point)], check=True)
    assert_cleanly_gone(mount, mount.wait(timeout=10))
    assert "unmounted from outside" in mount.log()


def test_signal_with_open_files_detaches_lazily(sandboxfs_mount, workdir):
    mount = sandboxfs_mount(["--mapping", f"ro:/src:{make_source(workdir)}"])
    with contextlib.ExitStack() as cleanup:
        # A process whose cwd is in the mount, and an open fd here: the mount is busy.
        holder = subprocess.Popen(["sleep", "30"], cwd=mount / "src")
        cleanup.callback(end_process, holder)
        fd = os.open(mount / "src" / "hello.txt", os.O_RDONLY)  # not read: nothing cached
        cleanup.callback(close_dead_fd, fd)

        mount.signal(signal.SIGTERM)
        assert_cleanly_gone(mount, mount.wait(timeout=10))
        assert os.listdir(mount.mount_point) == []  # the bare directory again
        check_read_after_the_server_ended(fd, workdir / "src" / "hello.txt")
        assert holder.poll() is None  # the busy process was left alone


def test_dead_mount_is_recovered_by_the_next_mount(sandboxfs_mount, workdir):
    src = make_source(workdir)
    args = ["--mapping", f"ro:/src:{src}"]
    crashed = sandboxfs_mount(args)
    wait_until_served(crashed)
    crashed.proc.kill()
    crashed.wait()
    with pytest.raises(OSError) as raised:
        os.stat(crashed.mount_point)
    assert raised.value.errno == errno.ENOTCONN
    assert is_mounted(crashed.mount_point)

    # Not through the fixture: it would mkdir the point, and that stat fails with ENOTCONN.
    fresh = Mount(crashed.mount_point, args, workdir / "fresh.log")
    try:
        fresh.start()  # returns at once: the dead mount already makes the point "mounted"
        wait_for_log(fresh, f"mounted at {fresh.mount_point}")
        notices = [line for line in fresh.log().splitlines() if "dead FUSE mount" in line]
        assert notices and str(crashed.mount_point) in notices[0], fresh.log()
        assert mount_entries(fresh.mount_point) == 1  # the dead mount was removed, not stacked on
        assert (fresh / "src" / "hello.txt").read_text() == "hello\n"
        assert sorted(os.listdir(fresh / "src")) == ["hello.txt", "sub"]
    finally:
        fresh.stop()


# -- the harness's own cleanup ---------------------------------------------------------------


def test_harness_stop_kills_a_child_that_ignores_sigterm(sandboxfs_mount, workdir, monkeypatch):
    mount = sandboxfs_mount(["--mapping", f"ro:/src:{make_source(workdir)}"])
    wait_until_served(mount)
    mount.proc.send_signal(signal.SIGSTOP)  # a stopped process does not act on SIGTERM
    monkeypatch.setattr(harness, "STOP_TIMEOUT", 1.0)
    assert mount.stop() == -signal.SIGKILL
    assert not is_mounted(mount.mount_point)


def test_harness_stop_clears_the_dead_mount_of_a_killed_child(sandboxfs_mount, workdir):
    mount = sandboxfs_mount(["--mapping", f"ro:/src:{make_source(workdir)}"])
    mount.proc.kill()
    mount.wait()
    assert is_mounted(mount.mount_point)  # dead, still there
    assert mount.stop() == -signal.SIGKILL
    assert not is_mounted(mount.mount_point)


def test_harness_start_reports_a_child_that_fails(workdir):
    missing = workdir / "no-such-dir"
    mount = Mount(missing, [], workdir / "failed.log")
    try:
        with pytest.raises(MountFailed) as raised:
            mount.start()
        assert "exited with 1" in str(raised.value)
        assert str(missing) in str(raised.value)
    finally:
        mount.stop()
    assert not mount.alive()


# -- command-line errors -----------------------------------------------------------------------


def _missing_mount_point(workdir, src):
    point = workdir / "no-such-dir"
    return [f"--mapping=ro:/src:{src}", str(point)], 1, [str(point), "ENOENT"]


def _mount_point_is_a_file(workdir, src):
    point = workdir / "a-file"
    point.write_text("")
    return [f"--mapping=ro:/src:{src}", str(point)], 1, [str(point), "ENOTDIR"]


def _missing_underlying(workdir, src):
    gone = workdir / "gone"
    return [f"--mapping=ro:/src:{gone}", str(workdir / "mnt")], 1, [str(gone), "ENOENT"]


def _bad_mapping_type(workdir, src):
    return [f"--mapping=xx:/src:{src}", str(workdir / "mnt")], 2, ["--mapping", "xx"]


def _relative_mapping_path(workdir, src):
    return [f"--mapping=ro:src:{src}", str(workdir / "mnt")], 2, ["--mapping", "not absolute"]


def _ttl_not_a_number(workdir, src):
    return ["--ttl", "abc", str(workdir / "mnt")], 2, ["--ttl", "abc"]


@pytest.mark.parametrize("case", [
    _missing_mount_point, _mount_point_is_a_file, _missing_underlying,
    _bad_mapping_type, _relative_mapping_path, _ttl_not_a_number,
], ids=lambda case: case.__name__.lstrip("_"))
def test_cli_error_exits_without_mounting(workdir, case):
    src = make_source(workdir)
    (workdir / "mnt").mkdir()
    args, status, mentions = case(workdir, src)
    result = run_cli("mount", *args)
    assert result.returncode == status, result.stderr
    for text in mentions:
        assert text in result.stderr
    assert "Traceback" not in result.stderr
    assert mounts_under(workdir) == []


# -- who may use the mount -----------------------------------------------------------------------


@pytest.mark.parametrize("allow, expected", [
    ("other", "hello.txt sub"),
    ("self", "EACCES"),
    ("root", "EACCES"),
])
def test_allow_decides_whether_another_user_may_list(
    sandboxfs_mount, workdir, unprivileged_user, allow, expected
):
    mount = sandboxfs_mount(["--allow", allow, "--mapping", f"ro:/src:{make_source(workdir)}"])
    result = run_as(unprivileged_user, [SYSTEM_PYTHON, "-c", LISTDIR_SCRIPT, str(mount / "src")])
    assert result.stdout.strip() == expected, result.stderr
    assert os.listdir(mount / "src")  # the mounting user is never refused
