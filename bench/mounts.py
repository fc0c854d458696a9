"""FUSE mounts in child processes (sandboxfs, bindfs), always cleaned up.

Each mount is a child process in its own session (so Ctrl-C reaches only us and
we stop it in order), ended by PID: SIGTERM, then ``fusermount3 -u -z``, then
SIGKILL.  ``stop`` is idempotent and verifies nothing is left mounted; callers
register it on an ``ExitStack`` right after ``start``.  ``interrupts_as_keyboard``
turns SIGTERM into KeyboardInterrupt so the same ``finally`` blocks run.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

log = logging.getLogger(__name__)

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


def is_mounted(path: str | os.PathLike) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4].encode().decode("unicode_escape") == target for line in f)


def fusermount_lazy(path: str | os.PathLike) -> None:
    subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)


class FuseChild:
    """One FUSE daemon run in the foreground as a child process."""

    def __init__(self, name: str, command: Sequence[str], mount_point: Path, log_path: Path,
                 ready: Path | None = None) -> None:
        self.name = name
        self.command = list(command)
        self.mount_point = Path(mount_point)
        self.log_path = log_path
        self.ready = ready  # a path that must exist too (the control socket)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "FuseChild":
        self.mount_point.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=out, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before "
                                   f"mounting:\n{self.log_path.read_text(errors='replace')}")
            if is_mounted(self.mount_point) and (self.ready is None or self.ready.exists()):
                log.debug("%s mounted at %s (pid %d)", self.name, self.mount_point, self.proc.pid)
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{self.name} did not mount within {START_TIMEOUT}s")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                fusermount_lazy(self.mount_point)
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT)
        if is_mounted(self.mount_point):
            fusermount_lazy(self.mount_point)
        if is_mounted(self.mount_point):
            raise RuntimeError(f"{self.mount_point} is still mounted after cleanup")


def sandboxfs(workdir: Path, mappings: Sequence[str] = (), ttl: float = 60.0,
              name: str = "sandboxfs") -> FuseChild:
    """A sandboxfs mount with a control socket at ``<mount point>.sock``."""
    mount_point = workdir / name
    socket = Path(str(mount_point) + ".sock")
    command = [sys.executable, "-m", "sandboxfs", "mount", "--log-level", "warning",
               "--ttl", str(ttl), "--control", str(socket)]
    for m in mappings:
        command += ["--mapping", m]
    child = FuseChild(name, command + [str(mount_point)], mount_point,
                      workdir / f"{name}.log", ready=socket)
    child.socket = str(socket)  # type: ignore[attr-defined]
    return child


# bindfs with every cache it has on: the kernel keeps pages, entries, attributes and
# negative entries, like sandboxfs with --ttl 60.  Single-threaded is bindfs's default;
# --multithreaded lets the two parallel actions of the actions scenario overlap.
BINDFS_OPTIONS = "kernel_cache,entry_timeout=60,attr_timeout=60,negative_timeout=60"


def bindfs(workdir: Path, source: Path, name: str = "bindfs") -> FuseChild:
    mount_point = workdir / name
    command = ["bindfs", "-f", "--multithreaded", "-o", BINDFS_OPTIONS, str(source),
               str(mount_point)]
    return FuseChild(name, command, mount_point, workdir / f"{name}.log")


class _Interrupted(KeyboardInterrupt):
    pass


def interrupts_as_keyboard() -> None:
    """SIGTERM and SIGHUP raise KeyboardInterrupt, so cleanup runs as for Ctrl-C."""
    def handler(signum, frame):
        raise _Interrupted(f"signal {signum}")
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, handler)
