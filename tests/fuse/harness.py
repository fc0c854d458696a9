"""Real mounts for tests: ``python -m sandboxfs mount`` in a child, always cleaned up.

pyfuse3 keeps its state in module globals, so each mount is its own process.
``Mount`` is ``sandboxfs.fuse.child_mount.ChildMount`` for a sandboxfs mount:
``start`` returns once the mount point is mounted *and* the child is alive,
``stop`` ends it by SIGTERM, then ``fusermount3 -u -z``, then SIGKILL -- by
PID, never by name -- and checks that nothing is left mounted.  Tests get
mounts from the ``sandboxfs_mount`` fixture, whose teardown stops every mount
even when the test failed.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Sequence

from sandboxfs.errors import ChildMountError
from sandboxfs.mount import default_transport
from sandboxfs.fuse.child_mount import (
    START_TIMEOUT, STOP_TIMEOUT, ChildMount, is_mounted, lazy_unmount, mount_ids, sandboxfs_command,
)

__all__ = ["PASSTHROUGH", "check_read_after_the_server_ended", "START_TIMEOUT", "STOP_TIMEOUT", "TRANSPORT", "Mount", "MountFailed",
           "fusermount_lazy",
           "is_mounted", "mount_ids", "stop_all", "world_traversable_tempdir"]

MountFailed = ChildMountError
fusermount_lazy = lazy_unmount

# The transport every mount of this test run uses: the suite runs under each
# (``make test`` with our kernel transport, ``make test-pyfuse3`` with pyfuse3).
TRANSPORT = default_transport()
# Root on our transport: reads of read-only files go through FUSE passthrough (but for
# small files whose inode a second sandbox shares: fs/shared_files.py).
PASSTHROUGH = TRANSPORT == "kernel" and os.geteuid() == 0


def check_read_after_the_server_ended(fd: int, host_file: Path) -> None:
    """What an fd opened read-only before the server ended gives now.

    Through passthrough the kernel holds the host file itself, so it goes on
    reading the real file (never wrong data); otherwise the read fails ENOTCONN.
    ``host_file`` is of a read-only mapping, untracked, opened read-only, seen through
    one sandbox or mapping only.
    """
    if PASSTHROUGH:
        assert os.pread(fd, 10, 0) == host_file.read_bytes()[:10]
        return
    try:
        os.pread(fd, 10, 0)
    except OSError as exc:
        assert exc.errno == errno.ENOTCONN, exc
    else:
        raise AssertionError("a read after the server ended succeeded")


def world_traversable_tempdir(prefix: str = "sbxtest-") -> Path:
    """A temp dir other users can traverse (pytest's tmp_path is 0700 for root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


class Mount(ChildMount):
    """One sandboxfs child process and its mount point."""

    def __init__(self, mount_point: Path, args: Sequence[str], log_path: Path) -> None:
        self.args = list(args)
        super().__init__(sandboxfs_command(mount_point, self.args), mount_point, log_path)

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
