"""``sandboxfs worker --engine grpc://HOST:PORT``: a remote-execution bot, from options to exit.

One mount serves every lease the worker runs.  Its state directory
(``--state-dir``; by default ``~/.cache/sandboxfs/worker/<hash of engine,
instance and bot name>``) holds:

* ``mnt/``: the mount; a lease's input root is ``mnt/<slot>``;
* ``store/``: the local content store (files fetched from the engine's CAS),
  bounded by ``--store-budget``, emptied at start-up, removed at exit;
* ``scratch/``: outputs and logs of running actions, emptied at start-up;
* ``lock``: held while working, so two workers never share the directory.

A worker killed mid-action leaves a dead mount and a stale scratch
directory; the next start on the same state directory clears both (as
``sandboxfs serve`` does), and the engine gives the lost lease to a bot
again once the killed bot's session expires.  SIGINT or SIGTERM end the
worker: running actions are killed, their sandboxes removed, the mount
unmounted; exit status 1 (0 if the mount was unmounted from outside).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import shutil
from typing import TYPE_CHECKING

import trio

from sandboxfs.backend.merkle import DirectoryStore
from sandboxfs.backend.serve import fresh_dir, lock_state_dir
from sandboxfs.backend.service import parse_size
from sandboxfs.backend.slots import Slots
from sandboxfs.backend.store import ContentStore
from sandboxfs.errors import UsageError
from sandboxfs.worker.action import ActionRunner
from sandboxfs.worker.bots import BotSession, default_bot_name
from sandboxfs.worker.engine import Engine, grpc_target
from sandboxfs.worker.fetch import CasFetcher, CasLeafSource, ReadHistory, put_empty

if TYPE_CHECKING:  # pragma: no cover
    from sandboxfs.control.reconfig import Reconfigurer

log = logging.getLogger(__name__)

DEFAULT_STORE_BUDGET = 16 << 30
MAX_IDLE_SLOTS = 8


def default_state_dir(engine: str, instance: str, name: str) -> str:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    tag = hashlib.sha256(f"{engine}\0{instance}\0{name}".encode()).hexdigest()[:16]
    return os.path.join(cache, "sandboxfs", "worker", tag)


class Worker:
    """The worker's parts over one mounted tree: the engine, the fetcher, the bot sessions."""

    def __init__(self, args: argparse.Namespace, state_dir: str, store: ContentStore,
                 scratch: str, reconfigurer: "Reconfigurer") -> None:
        self.engine = Engine(args.engine, args.instance)
        self.fetcher = CasFetcher(self.engine, store)
        self.directories = DirectoryStore()
        mount_point = os.path.join(state_dir, "mnt")

        def source(exec_root: bytes, files) -> CasLeafSource:
            return CasLeafSource(store, self.fetcher, exec_root, files)

        self.slots = Slots(reconfigurer.tree, self.directories, store, mount_point, scratch,
                           max_idle=MAX_IDLE_SLOTS, source_factory=source)
        self.runner = ActionRunner(self.engine, self.fetcher, self.directories, self.slots,
                                   reconfigurer.kernel.invalidate, scratch,
                                   worker_name=args.name, history=ReadHistory(),
                                   prefetch=not args.no_prefetch, confine=args.confine)
        self.sessions = [BotSession(self.engine, self.runner, f"{args.name}/{index}")
                         for index in range(args.concurrency)]

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                for session in self.sessions:
                    nursery.start_soon(session.run)
        finally:
            self.engine.close()

    def stats(self) -> dict[str, int]:
        return {"leases": sum(s.leases_done for s in self.sessions), **self.fetcher.counts,
                **{f"slots_{k}": v for k, v in self.slots.stats().items()}}


def run_worker(args: argparse.Namespace) -> int:
    from sandboxfs import mount  # the FUSE side only when working

    grpc_target(args.engine)  # UsageError-like message for a bad scheme, before mounting
    if args.concurrency < 1:
        raise UsageError(f"--concurrency {args.concurrency}: must be at least 1")
    try:
        budget = DEFAULT_STORE_BUDGET if args.store_budget is None else parse_size(args.store_budget)
    except ValueError:
        raise UsageError(f"--store-budget {args.store_budget!r}: not a size") from None
    args.name = args.name or default_bot_name()
    state_dir = os.path.abspath(args.state_dir or
                                default_state_dir(args.engine, args.instance, args.name))
    os.makedirs(state_dir, mode=0o755, exist_ok=True)
    workers: list[Worker] = []
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(os.close, lock_state_dir(state_dir, "sandboxfs worker"))
        mount_point = os.path.join(state_dir, "mnt")
        os.makedirs(mount_point, exist_ok=True)
        scratch = fresh_dir(os.path.join(state_dir, "scratch"))
        store = ContentStore(os.path.join(state_dir, "store"), budget)
        put_empty(store)
        config = mount.MountConfig(mount_point=mount_point, ttl=args.ttl,
                                   transport=args.transport or mount.default_transport(),
                                   no_open=args.no_open)

        def services_for(reconfigurer: "Reconfigurer"):
            worker = Worker(args, state_dir, store, scratch, reconfigurer)
            workers.append(worker)
            return [worker.run]

        log.warning("worker %s: %d bot session(s) on %s (instance %r); state in %s",
                    args.name, args.concurrency, args.engine, args.instance, state_dir)
        signum = mount.run(config, services_for=services_for)
        if workers:
            log.warning("worker %s: stopped; %s", args.name, workers[0].stats())
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(store.state_dir, ignore_errors=True)
    return 1 if signum else 0
