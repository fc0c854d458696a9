"""A FUSE server in a child process: started, waited for until it serves, always stopped.

Used wherever one process needs a mount of its own: ``sandboxfs run`` (a
private mount), the test harness, the benchmark (sandboxfs and bindfs), and
test filesystems.  ``start`` returns once the mount point is mounted *and*
the child is alive *and* the caller's ``ready`` check passes (the control
socket answers, say); a child that died is reported with its log.  ``stop``
ends it by SIGTERM (a sandboxfs unmounts itself), then ``fusermount3 -u -z``
and SIGKILL -- by PID, never by name -- and checks that nothing is left
mounted.  A dead FUSE mount makes ``os.path.ismount`` say False, so mounts
are read from /proc/self/mountinfo, which never touches the filesystem.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from sandboxfs.errors import ChildMountError

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


def mount_ids(path: str | os.PathLike) -> set[str]:
    """IDs of the mounts at ``path`` (also dead ones: reading mountinfo touches no filesystem)."""
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return {
            line.split()[0]
            for line in f
            if line.split()[4].encode().decode("unicode_escape") == target
        }


def is_mounted(path: str | os.PathLike) -> bool:
    """True if ``path`` is a mount point (also when the mount is dead: ENOTCONN)."""
    return bool(mount_ids(path))


def lazy_unmount(path: str | os.PathLike) -> None:
    """``fusermount3 -u -z``: detach a FUSE mount even while it is busy (or dead)."""
    tool = shutil.which("fusermount3") or "fusermount3"
    subprocess.run([tool, "-u", "-z", str(path)], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False)


def sandboxfs_command(mount_point: str | os.PathLike, args: Sequence[str] = ()) -> list[str]:
    """``python -m sandboxfs mount ARGS MOUNT_POINT`` with this interpreter."""
    return [sys.executable, "-m", "sandboxfs", "mount", *args, str(mount_point)]


class ChildMount:
    """One FUSE server run in the foreground as a child process."""

    def __init__(self, command: Sequence[str], mount_point: str | os.PathLike,
                 log_path: str | os.PathLike, *, ready: Callable[[], bool] | None = None,
                 own_session: bool = False, stdout=None,
                 start_timeout: float = START_TIMEOUT, stop_timeout: float = STOP_TIMEOUT) -> None:
        self.command = list(command)
        self.mount_point = Path(mount_point)
        self.log_path = Path(log_path)
        self.ready = ready
        self.own_session = own_session  # Ctrl-C reaches only the parent, which stops us in order
        self.stdout = stdout  # default: the log
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.proc: subprocess.Popen | None = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> "ChildMount":
        """Start the child and wait until it serves; on failure nothing is left behind."""
        replacing = is_mounted(self.mount_point)  # a dead mount may already be there
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=self.stdout or log, stderr=log,
                start_new_session=self.own_session,
            )
        try:
            self._wait_serving(replacing)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_serving(self, replacing: bool) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ChildMountError(
                    f"{self.command[0]} exited with {self.proc.returncode} before mounting "
                    f"{self.mount_point}:\n{self.log()}")
            if (is_mounted(self.mount_point) and (not replacing or self._answers())
                    and (self.ready is None or self.ready())):
                return
            time.sleep(0.01)
        raise ChildMountError(
            f"{self.command[0]} did not mount {self.mount_point} within "
            f"{self.start_timeout:g} s:\n{self.log()}")

    def _answers(self) -> bool:
        """The mount point answers (a dead mount says ENOTCONN; mount IDs get reused)."""
        try:
            os.statvfs(self.mount_point)
            return True
        except OSError:
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: int = signal.SIGTERM) -> None:
        if self.alive():
            self.proc.send_signal(signum)

    def wait(self, timeout: float | None = None) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=self.stop_timeout if timeout is None else timeout)

    def stop(self) -> int | None:
        """End the child and the mount by every means needed; return the child's status."""
        status = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    status = self.proc.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    lazy_unmount(self.mount_point)
                    self.proc.kill()
                    status = self.proc.wait(timeout=self.stop_timeout)
            else:
                status = self.proc.returncode
        if is_mounted(self.mount_point):
            lazy_unmount(self.mount_point)
        if is_mounted(self.mount_point):
            raise ChildMountError(f"{self.mount_point} is still mounted after cleanup")
        return status

    def __enter__(self) -> "ChildMount":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
