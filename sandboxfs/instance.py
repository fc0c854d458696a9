"""A private sandboxfs mount for one ``sandboxfs run``, started and always stopped.

When ``run`` is not pointed at a running mount, it starts ``sandboxfs
mount`` as a child process on a fresh temporary directory, waits until the
mount is there and its control socket answers, and at the end stops it with
SIGTERM (the mount unmounts itself), falling back to a lazy unmount and
SIGKILL, and removes the directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from .client import Client
from .errors import SandboxfsError

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


class InstanceError(SandboxfsError):
    code = "instance"


class PrivateInstance:
    """``with PrivateInstance() as instance:`` -> ``instance.control`` is its socket."""

    def __init__(self, ttl: float = 60.0) -> None:
        self.ttl = ttl
        self.directory = tempfile.mkdtemp(prefix="sandboxfs-run-")
        self.mount_point = os.path.join(self.directory, "mnt")
        self.control = os.path.join(self.directory, "control.sock")
        self.log_path = os.path.join(self.directory, "mount.log")
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "PrivateInstance":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        os.mkdir(self.mount_point)
        command = [sys.executable, "-m", "sandboxfs", "mount", "--log-level", "warning",
                   "--ttl", str(self.ttl), "--control", self.control, self.mount_point]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=log, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise InstanceError(f"the private sandboxfs mount failed to start:\n{self._log()}")
            if os.path.ismount(self.mount_point) and self._answers():
                return
            time.sleep(0.01)
        raise InstanceError(f"the private sandboxfs mount did not start within {START_TIMEOUT:g} s")

    def _answers(self) -> bool:
        try:
            with Client(self.control, timeout=2) as client:
                client.ping()
            return True
        except (OSError, SandboxfsError):
            return False

    def _log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read().strip()
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the server and remove the directory, by every means needed."""
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                _lazy_unmount(self.mount_point)
                process.kill()
                process.wait()
        if os.path.ismount(self.mount_point):
            _lazy_unmount(self.mount_point)
        shutil.rmtree(self.directory, ignore_errors=True)


def _lazy_unmount(path: str) -> None:
    tool = shutil.which("fusermount3") or "fusermount3"
    subprocess.run([tool, "-u", "-z", path], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False)
