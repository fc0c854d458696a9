"""``sandboxfs serve --workspace DIR``: the sandbox backend Bazel starts, from options to exit.

Everything lives under one state directory (``--state-dir``; by default
``~/.cache/sandboxfs/serve/<hash of the workspace path>``, outside the
workspace and on the filesystem where Bazel keeps its output base, so that
Collect renames instead of copying):

* ``mnt/``: the mount; sandbox ``N`` is ``mnt/N``;
* ``store/``: the content store (``backend.store``), emptied at start-up, removed at exit;
* ``scratch/``: per-sandbox writable directories, emptied at start-up, removed at exit;
* ``lock``: held while serving, so two servers never share a state directory.

The protocol runs on stdin/stdout; logs go to stderr.  Exit status: 0 at
the end of the input, 2 when the input broke the framing, 1 after a signal.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
from typing import TYPE_CHECKING

from sandboxfs.backend.merkle import DirectoryStore
from sandboxfs.backend.service import BackendService, parse_size
from sandboxfs.backend.slots import MAX_IDLE_SLOTS, Slots
from sandboxfs.backend.store import DEFAULT_BUDGET_BYTES, ContentStore
from sandboxfs.errors import MountError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    from sandboxfs.control.reconfig import Reconfigurer

log = logging.getLogger(__name__)


def default_state_dir(workspace: str) -> str:
    """``$XDG_CACHE_HOME`` (or ``~/.cache``)``/sandboxfs/serve/<16 hex digits of the workspace>``."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    tag = hashlib.sha256(os.fsencode(os.path.realpath(workspace))).hexdigest()[:16]
    return os.path.join(cache, "sandboxfs", "serve", tag)


def lock_state_dir(state_dir: str, what: str = "sandboxfs serve") -> int:
    """Hold the state directory's lock file (flock) so that two servers never share it."""
    fd = os.open(os.path.join(state_dir, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise MountError(f"state directory {state_dir}: another {what} is using it") \
            from None
    return fd


def fresh_dir(path: str) -> str:
    """``path`` as a new, empty directory (whatever was there is removed)."""
    if os.path.lexists(path):
        shutil.rmtree(path)
    os.makedirs(path, mode=0o755)
    return path


def run_serve(args: argparse.Namespace) -> int:
    from sandboxfs import mount  # the FUSE side only when serving

    workspace = os.path.abspath(args.workspace)
    if not os.path.isdir(workspace):
        raise UsageError(f"--workspace {args.workspace}: not a directory")
    try:
        budget = DEFAULT_BUDGET_BYTES if args.store_budget is None else parse_size(args.store_budget)
    except ValueError:
        raise UsageError(f"--store-budget {args.store_budget!r}: not a size") from None
    state_dir = os.path.abspath(args.state_dir or default_state_dir(workspace))
    if (state_dir + "/").startswith(os.path.realpath(workspace) + "/"):
        raise UsageError(f"--state-dir {state_dir} is inside the workspace {workspace}: Bazel "
                         "would see the sandboxes as sources")
    os.makedirs(state_dir, mode=0o755, exist_ok=True)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(os.close, lock_state_dir(state_dir))
        mount_point = os.path.join(state_dir, "mnt")
        os.makedirs(mount_point, exist_ok=True)
        scratch = fresh_dir(os.path.join(state_dir, "scratch"))
        store = ContentStore(os.path.join(state_dir, "store"), budget)
        directories = DirectoryStore()
        config = mount.MountConfig(
            mount_point=mount_point, ttl=args.ttl,
            transport=args.transport or mount.default_transport(), no_open=args.no_open,
        )
        services: list[BackendService] = []

        def services_for(reconfigurer: "Reconfigurer"):
            slots = Slots(reconfigurer.tree, directories, store, mount_point, scratch,
                          max_idle=MAX_IDLE_SLOTS if args.max_idle_slots is None
                          else args.max_idle_slots)
            service = BackendService(slots, directories, store, reconfigurer.kernel.invalidate)
            services.append(service)
            return [service.run]

        log.info("serving workspace %s; state in %s", workspace, state_dir)
        signum = mount.run(config, services_for=services_for)
        # Nothing of either is valid for the next server (it starts empty, as Bazel's
        # record of what it pushed does): give the disk back now.
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(store.state_dir, ignore_errors=True)
    if signum:
        return 1
    return services[0].status if services else 0
