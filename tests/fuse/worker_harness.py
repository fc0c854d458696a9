"""``sandboxfs worker`` processes for tests: started against an engine, stopped by PID.

Each worker gets its own state directory (so its own mount) under the
test's temporary directory; ``stop`` sends SIGTERM and waits, ``kill`` sends
SIGKILL (the killed-worker tests), and ``close`` makes sure that nothing of
it is left: its process, its mount (checked in /proc/self/mounts, where a
dead FUSE mount still shows).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .harness import TRANSPORT


def mounted(path: Path) -> bool:
    target = os.fsencode(os.path.realpath(path))
    with open("/proc/self/mounts", "rb") as f:
        return any(line.split()[1] == target for line in f)


class WorkerProcess:
    """One ``sandboxfs worker`` subprocess (use as a context manager)."""

    def __init__(self, endpoint: str, state_dir: Path, *, name: str, concurrency: int = 1,
                 extra: tuple[str, ...] = (), cpu: int | None = None) -> None:
        self.endpoint = endpoint
        self.state_dir = state_dir
        self.name = name
        self.concurrency = concurrency
        self.extra = extra
        self.cpu = cpu  # run it under ``taskset -c CPU`` (the benchmark pins it)
        self.log = state_dir.parent / f"{state_dir.name}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def mount_point(self) -> Path:
        return self.state_dir / "mnt"

    def start(self, timeout: float = 30) -> "WorkerProcess":
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            pin = ["taskset", "-c", str(self.cpu)] if self.cpu is not None else []
            self.proc = subprocess.Popen(
                [*pin, sys.executable, "-m", "sandboxfs", "worker", "--engine", self.endpoint,
                 "--name", self.name, "--concurrency", str(self.concurrency),
                 "--state-dir", str(self.state_dir), "--transport", TRANSPORT,
                 "--log-level", "info", *self.extra],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not (mounted(self.mount_point) and self.log_text().count(": session ")
                   >= self.concurrency * self.starts()):
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited {self.proc.returncode}:\n{self.log_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker not ready in {timeout} s:\n{self.log_text()}")
            time.sleep(0.05)
        return self

    def starts(self) -> int:
        return self.log_text().count("bot session(s) on")

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                return proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
                raise RuntimeError(f"worker did not stop in {timeout} s:\n{self.log_text()}")
        return proc.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            if mounted(self.mount_point):  # a killed worker's dead mount
                subprocess.run(["umount", "-l", str(self.mount_point)], check=False)

    def __enter__(self) -> "WorkerProcess":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()
