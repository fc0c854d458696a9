"""Real mounts for tests: start ``python -m sandboxfs mount`` in a child, always clean up.

pyfuse3 keeps its state in module globals, so each mount is its own process.
``Mount.start`` returns once the mount point is mounted *and* the child is
alive (a child that died is reported with its log).  ``Mount.stop`` ends it by
SIGTERM, then ``fusermount3 -u -z``, then SIGKILL -- by PID, never by name --
and checks that nothing is left mounted.  Tests get mounts from the
``sandboxfs_mount`` fixture, whose teardown stops every mount even when the
test failed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


def is_mounted(path: str | os.PathLike) -> bool:
    """True if ``path`` is a mount point (also when the mount is dead: ENOTCONN)."""
    return bool(mount_ids(path))


def mount_ids(path: str | os.PathLike) -> set[str]:
    """IDs of the mounts at ``path`` (reading mountinfo never touches the filesystem)."""
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return {
            line.split()[0]
            for line in f
            if line.split()[4].encode().decode("unicode_escape") == target
        }


def fusermount_lazy(path: str | os.PathLike) -> None:
    subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)


def world_traversable_tempdir(prefix: str = "sbxtest-") -> Path:
    """A temp dir other users can traverse (pytest's tmp_path is 0700 for root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


class MountFailed(AssertionError):
    pass


class Mount:
    """One sandboxfs child process and its mount point."""

    def __init__(self, mount_point: Path, args: Sequence[str], log_path: Path) -> None:
        self.mount_point = Path(mount_point)
        self.args = list(args)
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "sandboxfs", "mount", *self.args, str(self.mount_point)]

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def start(self) -> "Mount":
        replacing = is_mounted(self.mount_point)  # a dead mount may already be there
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise MountFailed(
                    f"sandboxfs exited with {self.proc.returncode} before mounting:\n{self.log()}"
                )
            if is_mounted(self.mount_point) and (not replacing or self._answers()):
                return self
            time.sleep(0.02)
        self.stop()
        raise MountFailed(f"sandboxfs did not mount within {START_TIMEOUT}s:\n{self.log()}")

    def _answers(self) -> bool:
        """The mount point answers stat (a dead mount says ENOTCONN; IDs get reused)."""
        try:
            os.stat(self.mount_point)
            return True
        except OSError:
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: int = signal.SIGTERM) -> None:
        if self.alive():
            self.proc.send_signal(signum)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> int | None:
        """End the child and the mount by every means needed; return the child's status."""
        status = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    status = self.proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    fusermount_lazy(self.mount_point)
                    self.proc.kill()
                    status = self.proc.wait(timeout=STOP_TIMEOUT)
            else:
                status = self.proc.returncode
        if is_mounted(self.mount_point):
            fusermount_lazy(self.mount_point)
        if is_mounted(self.mount_point):
            raise AssertionError(f"{self.mount_point} is still mounted after cleanup")
        return status

    def __enter__(self) -> "Mount":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __truediv__(self, other: str) -> Path:
        return self.mount_point / other


def stop_all(children) -> None:
    """Stop every child (newest first) even if some fail; then raise the first failure."""
    errors = []
    for child in reversed(children):
        try:
            child.stop()
        except Exception as exc:  # keep stopping the others
            errors.append(exc)
    if errors:
        raise errors[0]
