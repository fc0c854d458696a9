"""Start-up and shut-down of a mount: check, mount, serve, unmount.

Everything that can be checked is checked before anything is mounted, so a bad
flag or a missing path never leaves a half-made mount behind.  One trio
nursery then runs the FUSE main loop, the signal watcher and (when asked) the
control server; whichever ends first ends the others.  The kernel mount is
released in ``finally`` whatever happened: libfuse detaches lazily
(``umount2(MNT_DETACH)``, or ``fusermount3 -u -z`` when not root), so a signal
that arrives while files are still open never hangs; those files then fail
with ENOTCONN.

Owns: the order of start-up and shut-down, signals, dead-mount recovery.
The transport (``sandboxfs.fuse``) mounts, serves and unmounts.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import subprocess
from typing import Awaitable, Callable, Sequence

import attrs
import trio

from sandboxfs.control.framing import DEFAULT_MAX_MESSAGE_SIZE
from sandboxfs.control.reconfig import Reconfigurer
from sandboxfs.control.server import ControlServer, bind_control_socket, remove_socket_file
from sandboxfs.errors import MountError, UsageError, describe_oserror
from sandboxfs.fs.kernel_cache import KernelCache
from sandboxfs.fs.operations import Operations
from sandboxfs.tree.groups import DEFAULT_BUDGET_BYTES, GroupStore
from sandboxfs.tree.mapping import Mapping
from sandboxfs.tree.sandboxes import Tree

log = logging.getLogger(__name__)

# The signals that end a mount, as in sandboxfs 0.2.
SHUTDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
# Between two plain unmounts of a busy mount (``MountConfig.unmount_timeout``), as in 0.2.
UNMOUNT_RETRY_INTERVAL = 1.0


@attrs.frozen
class MountConfig:
    """What ``sandboxfs mount`` was asked to do, already validated by the CLI."""

    mount_point: str
    mappings: tuple[Mapping, ...] = ()
    allow: str = "self"  # self | other | root
    ttl: float = 60.0
    xattrs: bool = False
    control: str | None = None  # control socket path; None: no socket
    control_allow_uids: tuple[int, ...] = ()
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    control_timeout: float = 30.0  # a half-sent message or an unread answer, in seconds
    group_memory: int = DEFAULT_BUDGET_BYTES  # groups kept by digest (tree.groups)
    transport: str = "kernel"  # kernel | pyfuse3 (TRANSPORTS)
    passthrough: bool = True   # kernel transport: FUSE passthrough where the kernel allows it
    spin_us: float | None = None  # kernel transport: polling before sleeping (None: its default)
    no_open: bool = False  # kernel transport: FUSE no_open (fs.inode_files, docs/design.md)
    shared_inodes: bool = True  # one kernel inode per read-only host file (fs.shared_files)
    # After a shutdown signal: 0 detaches the mount lazily at once; more tries a
    # plain unmount every UNMOUNT_RETRY_INTERVAL for this many seconds while the
    # mount is busy, serving meanwhile, then detaches it (the 0.2 front end).
    unmount_timeout: float = 0.0

    def fuse_options(self) -> set[str]:
        options = {"fsname=sandboxfs", "subtype=sandboxfs", "default_permissions"}
        if self.allow == "other":
            options.add("allow_other")
        elif self.allow == "root" and os.getuid() != 0:
            # libfuse enforces allow_root in user space on top of the kernel's
            # allow_other, so the kernel would answer others from its caches;
            # for a root mounter "root" is "self", enforced by the kernel.
            options.add("allow_root")
        return options


TRANSPORTS = ("kernel", "pyfuse3")


def default_transport() -> str:
    """``$SANDBOXFS_TRANSPORT`` if set (the test suite runs under both), else ``kernel``."""
    chosen = os.environ.get("SANDBOXFS_TRANSPORT", "kernel")
    return chosen if chosen in TRANSPORTS else "kernel"


def make_transport(config: MountConfig, ops: Operations):
    """The transport the config names; only pyfuse3's loads libfuse."""
    if config.transport == "pyfuse3":
        if config.no_open:
            raise UsageError("--no-open needs the kernel transport: pyfuse3 cannot read "
                             "by inode")
        from sandboxfs.fuse.pyfuse3_transport import Pyfuse3Transport

        return Pyfuse3Transport(ops)
    from sandboxfs.fuse.kernel.transport import KernelTransport

    return KernelTransport(ops, passthrough=config.passthrough, spin_us=config.spin_us,
                           no_open=config.no_open)


# A service runs beside the FUSE loop until cancelled; started with nursery.start.
Service = Callable[..., Awaitable[None]]


def _fusermount() -> str | None:
    return shutil.which("fusermount3") or shutil.which("fusermount")


def _unmount_lazily(path: str) -> None:
    tool = _fusermount()
    if tool is None:
        raise MountError(f"mount point {path}: a dead FUSE mount is there and fusermount3 is missing")
    result = subprocess.run([tool, "-u", "-z", path], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise MountError(f"mount point {path}: cannot remove the dead mount: {result.stderr.strip()}")


def _unmount_plainly(tool: str, path: str) -> str | None:
    """``fusermount3 -u`` (not lazy): None once unmounted, else why not (EBUSY while in use).

    The kernel then ends the session, so the FUSE loop returns by itself.
    """
    result = subprocess.run([tool, "-u", "--", path], capture_output=True, text=True, check=False)
    if result.returncode == 0:
        return None
    return result.stderr.strip() or f"{tool} -u exited with status {result.returncode}"


def prepare_mount_point(path: str) -> None:
    """Check the mount point; clear a dead FUSE mount a crashed instance left there."""
    try:
        # statvfs always reaches a FUSE server; stat may be answered from the
        # kernel's attribute cache for --ttl seconds after the server died.
        os.statvfs(path)
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


class _Ending:
    """How the mount ended: the signal number, or 0 for an external unmount."""

    signum = 0


class _EarlySignals:
    """Records shutdown signals that arrive before trio watches them.

    The kernel mount exists from ``pyfuse3.init`` on; a signal between then
    and the trio watcher must still unmount, not kill us with the mount left
    behind.
    """

    def __init__(self) -> None:
        self.received: list[int] = []
        # SIGHUP ignored from the start means ``nohup sandboxfs mount``: keep ignoring it.
        self.signals = tuple(s for s in SHUTDOWN_SIGNALS
                             if s != signal.SIGHUP or signal.getsignal(s) is not signal.SIG_IGN)
        for signum in self.signals:
            signal.signal(signum, self._record)

    def _record(self, signum: int, frame) -> None:
        self.received.append(signum)


async def _watch_signals(
    cancel_scope: trio.CancelScope,
    early: _EarlySignals,
    ending: _Ending,
    config: MountConfig,
    *,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Wait for a shutdown signal, then end the mount as ``config.unmount_timeout`` says.

    Cancelling ``cancel_scope`` ends the loop; ``run``'s ``finally`` then
    detaches whatever is still mounted.
    """
    with trio.open_signal_receiver(*early.signals) as signals:
        task_status.started()
        when = ""
        if early.received:
            ending.signum, when = early.received[0], " during start-up"
        else:
            async for signum in signals:
                ending.signum = signum
                break
        name = signal.Signals(ending.signum).name
        log.info("received %s%s; unmounting %s", name, when, config.mount_point)
        if config.unmount_timeout > 0:
            await _unmount_when_free(config.mount_point, config.unmount_timeout, signals)
        cancel_scope.cancel()


async def _unmount_when_free(mount_point: str, timeout: float, signals) -> None:
    """0.2's shutdown: a plain unmount, retried while the mount is busy, serving meanwhile.

    A process still inside (an open file, a working directory) keeps its
    files until it is done, instead of losing them mid-action.  Returns once
    the mount is gone, or when it must be detached lazily after all: the
    ``timeout`` passed, or another shutdown signal came (the caller's way to
    say "now").
    """
    tool = _fusermount()
    if tool is None:
        log.warning("fusermount3 is missing, so %s cannot be unmounted plainly; detaching it now "
                    "(lazy unmount)", mount_point)
        return
    deadline = trio.current_time() + timeout
    attempt = 0
    while True:
        attempt += 1
        failure = await trio.to_thread.run_sync(_unmount_plainly, tool, mount_point)
        if failure is None:
            log.info("unmounted %s (plain unmount)", mount_point)
            return
        left = deadline - trio.current_time()
        if left <= 0:
            break
        log.warning("Unmounting %s failed with '%s'; will retry in %g s (attempt %d; lazy "
                    "unmount in %.0f s, or at once on another signal)", mount_point, failure,
                    min(UNMOUNT_RETRY_INTERVAL, left), attempt, left)
        with trio.move_on_after(min(UNMOUNT_RETRY_INTERVAL, left)):
            async for signum in signals:
                log.warning("received %s while %s is busy; detaching it now (lazy unmount): "
                            "processes still using it get ENOTCONN",
                            signal.Signals(signum).name, mount_point)
                return
    log.warning("Unmounting %s still failed after %g s ('%s'); detaching it now (lazy unmount): "
                "processes still using it get ENOTCONN", mount_point, timeout, failure)


class ServiceDone(Exception):
    """Raised by a service whose input ended and that ends the mount with it (``serve``)."""


async def _serve(transport, services: Sequence[Service], early: _EarlySignals,
                 ending: _Ending, config: MountConfig) -> None:
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(_watch_signals, nursery.cancel_scope, early, ending, config)
            for service in services:
                await nursery.start(service)
            await transport.serve()
            if ending.signum:
                log.info("the kernel ended the session")
            else:
                log.info("the kernel ended the session (unmounted from outside)")
            nursery.cancel_scope.cancel()
    except* ServiceDone:
        log.info("a service ended the mount")


def default_control_path(mount_point: str) -> str:
    """The control socket's default place: beside the mount point, ``MOUNT_POINT.sock``."""
    path = os.path.abspath(mount_point)
    return (path if path != "/" else "/sandboxfs") + ".sock"


def run(
    config: MountConfig,
    services_for: Callable[[Reconfigurer], Sequence[Service]] | None = None,
) -> int:
    """Mount, serve until a signal or an external unmount, unmount.

    ``services_for`` adds services that run beside the FUSE loop and may
    change the tree through the given Reconfigurer (the 0.2 JSON front end).
    Returns the number of the signal that ended the mount, or 0 when it was
    unmounted from outside.
    """
    tree = Tree(config.mappings)  # raises MappingError before anything is mounted
    prepare_mount_point(config.mount_point)
    ops = Operations(tree, ttl=config.ttl, xattrs=config.xattrs,
                     shared_inodes=config.shared_inodes)
    transport = make_transport(config, ops)
    reconfigurer = Reconfigurer(
        tree,
        KernelCache(transport.notifier),
        fuse_counts=transport.counts,
        inode_counts=ops.inodes.stats,
        mount_point=os.path.abspath(config.mount_point),
        access=ops.access,
        groups=GroupStore(config.group_memory),
    )
    services: list[Service] = list(services_for(reconfigurer)) if services_for else []
    with contextlib.ExitStack() as cleanup:
        if config.control:
            sock = bind_control_socket(config.control, shared=bool(config.control_allow_uids))
            cleanup.callback(remove_socket_file, config.control, os.stat(config.control))
            cleanup.callback(sock.close)
            server = ControlServer(
                reconfigurer,
                path=config.control,
                sock=sock,
                allow_uids=config.control_allow_uids,
                max_message_size=config.max_message_size,
                stall_timeout=config.control_timeout,
            )
            services.append(server.run)
        early = _EarlySignals()
        # Modes of created files come from the caller (the kernel already
        # applied its umask); ours must not mask them again.
        os.umask(0)
        try:
            transport.mount(config.mount_point, config.fuse_options())
        except RuntimeError as exc:
            raise MountError(
                f"mount point {config.mount_point}: the kernel refused the mount ({exc}); "
                "is /dev/fuse usable and, for --allow other, user_allow_other set?"
            ) from None
        cleanup.callback(_unmount, transport, config.mount_point)
        log.info(
            "mounted at %s with %d mapping(s)%s", config.mount_point, len(config.mappings),
            f"; control socket {config.control}" if config.control else "",
        )
        ending = _Ending()
        trio.run(_serve, transport, services, early, ending, config)
    return ending.signum


def _unmount(transport, mount_point: str) -> None:
    transport.unmount()
    log.info("unmounted %s", mount_point)
