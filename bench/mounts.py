"""FUSE mounts in child processes (sandboxfs, bindfs), always cleaned up.

Each mount is a ``sandboxfs.fuse.child_mount.ChildMount`` in its own session (so
Ctrl-C reaches only us and we stop it in order); ``stop`` is idempotent and
verifies nothing is left mounted; callers register it on an ``ExitStack`` right
after ``start``.  ``interrupts_as_keyboard``
turns SIGTERM into KeyboardInterrupt so the same ``finally`` blocks run.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Sequence

from sandboxfs.fuse.child_mount import ChildMount, sandboxfs_command


# The machine has 2 vCPUs: servers run on the last one, the measuring process on the
# first (``pin_client``), so a vCPU wake-up does not decide which side waits.
SERVER_CPU = (os.cpu_count() or 1) - 1
CLIENT_CPU = 0


def pinned(command: Sequence[str]) -> list[str]:
    """``command`` run on ``SERVER_CPU`` (taskset execs it: the PID stays the server's)."""
    return ["taskset", "-c", str(SERVER_CPU), *command] if SERVER_CPU > CLIENT_CPU else list(command)


def pin_client() -> None:
    """Keep this process (and what it starts: forests' cp, actions) off the servers' CPU."""
    if SERVER_CPU > CLIENT_CPU:
        os.sched_setaffinity(0, {CLIENT_CPU})


class FuseChild(ChildMount):
    """One FUSE daemon run in the foreground as a child process in its own session,
    pinned to ``SERVER_CPU``."""

    def __init__(self, name: str, command: Sequence[str], mount_point: Path, log_path: Path,
                 ready: Path | None = None) -> None:
        super().__init__(pinned(command), mount_point, log_path, own_session=True,
                         ready=(lambda: ready.exists()) if ready is not None else None)
        self.name = name

    def start(self) -> "FuseChild":
        self.mount_point.mkdir(parents=True, exist_ok=True)
        super().start()
        return self


def sandboxfs(workdir: Path, mappings: Sequence[str] = (), ttl: float = 60.0,
              name: str = "sandboxfs", transport: str = "kernel",
              extra: Sequence[str] = ()) -> FuseChild:
    """A sandboxfs mount with a control socket at ``<mount point>.sock``."""
    mount_point = workdir / name
    socket = Path(str(mount_point) + ".sock")
    args = ["--log-level", "warning", "--ttl", str(ttl), "--control", str(socket),
            "--transport", transport, *extra]
    for m in mappings:
        args += ["--mapping", m]
    child = FuseChild(name, sandboxfs_command(mount_point, args), mount_point,
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_ns(pid: int) -> int:
    """CPU time of process ``pid``'s live threads so far, in ns, as the scheduler counts it
    (the first field of each /proc/PID/task/TID/schedstat: user and kernel time, wake-ups
    and syscalls included).  Finer than ``cpu_seconds`` (clock ticks), but a thread that
    has exited no longer counts: use it over short phases."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # the thread ended meanwhile
    return total
