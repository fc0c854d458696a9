"""A private sandboxfs mount for one ``sandboxfs run``, started and always stopped.

When ``run`` is not pointed at a running mount, it starts ``sandboxfs
mount`` as a child (``fuse.child_mount``) on a fresh temporary directory,
waits until its control socket answers too, and at the end stops it and
removes the directory.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from sandboxfs.control.client import Client
from sandboxfs.errors import SandboxfsError
from sandboxfs.fuse.child_mount import ChildMount, sandboxfs_command


class PrivateMount:
    """``with PrivateMount() as mount:`` -> ``mount.control`` is its socket."""

    def __init__(self, ttl: float = 60.0) -> None:
        self.directory = tempfile.mkdtemp(prefix="sandboxfs-run-")
        self.mount_point = os.path.join(self.directory, "mnt")
        self.control = os.path.join(self.directory, "control.sock")
        args = ["--log-level", "warning", "--ttl", str(ttl), "--control", self.control]
        self.child = ChildMount(sandboxfs_command(self.mount_point, args), self.mount_point,
                                os.path.join(self.directory, "mount.log"), ready=self._answers,
                                own_session=True)

    def __enter__(self) -> "PrivateMount":
        try:
            os.mkdir(self.mount_point)
            self.child.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _answers(self) -> bool:
        try:
            with Client(self.control, timeout=2) as client:
                client.ping()
            return True
        except (OSError, SandboxfsError):
            return False

    def stop(self) -> None:
        """Stop the server and remove the directory, by every means needed."""
        self.child.stop()  # raises if the mount is still there: then nothing is removed
        shutil.rmtree(self.directory, ignore_errors=True)
