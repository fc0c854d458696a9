"""Start-up and shut-down of a mount: check, mount, serve, unmount.

Everything that can be checked is checked before anything is mounted, so a bad
flag or a missing path never leaves a half-made mount behind.  One trio
nursery then runs the FUSE main loop, the signal watcher and (when asked) the
control server; whichever ends first ends the others.  The kernel mount is
released in ``finally`` whatever happened: libfuse detaches lazily
(``umount2(MNT_DETACH)``, or ``fusermount3 -u -z`` when not root), so a signal
that arrives while files are still open never hangs; those files then fail
with ENOTCONN.

Owns: pyfuse3.init/main/close, signals, dead-mount recovery.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import subprocess
from typing import Awaitable, Callable, Sequence

import attrs
import pyfuse3
import trio

from .errors import SandboxfsError, describe_oserror
from .mapping import Mapping
from .ops import Operations
from .tree import Tree

log = logging.getLogger(__name__)

SHUTDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class MountError(SandboxfsError):
    """The mount point is unusable or the kernel refused the mount."""

    code = "mount"


@attrs.frozen
class MountConfig:
    """What ``sandboxfs mount`` was asked to do, already validated by the CLI."""

    mount_point: str
    mappings: tuple[Mapping, ...] = ()
    allow: str = "self"  # self | other | root
    ttl: float = 60.0
    xattrs: bool = False

    def fuse_options(self) -> set[str]:
        options = {"fsname=sandboxfs", "subtype=sandboxfs", "default_permissions"}
        if self.allow == "other":
            options.add("allow_other")
        elif self.allow == "root":
            options.add("allow_root")
        return options


# A service runs beside the FUSE loop until cancelled; started with nursery.start.
Service = Callable[..., Awaitable[None]]


def _unmount_lazily(path: str) -> None:
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is None:
        raise MountError(f"mount point {path}: a dead FUSE mount is there and fusermount3 is missing")
    result = subprocess.run([tool, "-u", "-z", path], capture_output=True, text=True)
    if result.returncode != 0:
        raise MountError(f"mount point {path}: cannot remove the dead mount: {result.stderr.strip()}")


def prepare_mount_point(path: str) -> None:
    """Check the mount point; clear a dead FUSE mount a crashed instance left there."""
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise MountError(f"mount point {path}: {describe_oserror(exc)}") from None
        log.warning("mount point %s holds a dead FUSE mount (ENOTCONN); unmounting it", path)
        _unmount_lazily(path)
        try:
            st = os.stat(path)
        except OSError as exc2:
            raise MountError(f"mount point {path}: {describe_oserror(exc2)}") from None
    if not os.path.isdir(path):
        raise MountError(f"mount point {path}: ENOTDIR (Not a directory)")
    del st


async def _watch_signals(cancel_scope: trio.CancelScope, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    with trio.open_signal_receiver(*SHUTDOWN_SIGNALS) as signals:
        task_status.started()
        async for signum in signals:
            log.info("received %s; unmounting", signal.Signals(signum).name)
            cancel_scope.cancel()
            return


async def _serve(services: Sequence[Service]) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(_watch_signals, nursery.cancel_scope)
        for service in services:
            await nursery.start(service)
        await pyfuse3.main(min_tasks=2, max_tasks=64)
        log.info("the kernel ended the session (unmounted from outside)")
        nursery.cancel_scope.cancel()


def run(config: MountConfig, services_for: Callable[[Tree, Operations], Sequence[Service]] | None = None) -> int:
    """Mount, serve until a signal or an external unmount, unmount; return the exit status."""
    tree = Tree(config.mappings)  # raises MappingError before anything is mounted
    prepare_mount_point(config.mount_point)
    ops = Operations(tree, ttl=config.ttl, xattrs=config.xattrs)
    services = list(services_for(tree, ops)) if services_for else []
    # Modes of created files come from the caller (the kernel already applied
    # its umask); ours must not mask them again.
    os.umask(0)
    try:
        pyfuse3.init(ops, config.mount_point, config.fuse_options())
    except RuntimeError as exc:
        raise MountError(
            f"mount point {config.mount_point}: the kernel refused the mount ({exc}); "
            "is /dev/fuse usable and, for --allow other, user_allow_other set?"
        ) from None
    log.info("mounted at %s with %d mapping(s)", config.mount_point, len(config.mappings))
    try:
        trio.run(_serve, services)
    finally:
        pyfuse3.close(unmount=True)
        log.info("unmounted %s", config.mount_point)
    return 0
