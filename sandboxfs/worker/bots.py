"""The Remote Workers API side of ``sandboxfs worker``: bot sessions and their leases.

Each of the worker's ``--concurrency`` slots is one bot session holding at
most one lease, so that the engine, not the worker, decides how work is
spread (BuildGrid gives a bot one lease at a time).  A session's life:

* ``CreateBotSession`` with the bot's id (stable across restarts of the
  same worker, so the engine can tell a restarted bot from a new one).
* Idle: ``UpdateBotSession`` with a long deadline; the engine holds the
  call until it has work, and answers with a lease.
* Working: the lease is marked ACTIVE and its action runs as a task.
  Every ``HEARTBEAT`` seconds an update tells the engine the bot lives and
  brings back the lease's state: CANCELLED (or the lease gone) cancels the
  task, which kills the action's process group and removes its sandbox.
  When the action ends, an update in flight is cancelled (it can carry no
  new lease while this one is active) and the result is reported at once:
  state COMPLETED, ``status`` and, if there is one, ``result`` (an
  ActionResult in an Any).  That update is also the next idle one.
* The engine unreachable or restarting: every update is retried with
  backoff for as long as it takes, and the running action goes on.  A
  session the engine no longer knows (NOT_FOUND, INVALID_ARGUMENT) is
  created again; a finished lease not yet reported travels in it.
"""

from __future__ import annotations

import logging
import math
import socket
import time

import grpc
import trio
from google.protobuf import any_pb2, duration_pb2

from sandboxfs.backend.proto import bots_pb2 as bots
from sandboxfs.backend.proto import remote_execution_pb2 as re
from sandboxfs.backend.proto import worker_pb2
from sandboxfs.worker.action import INTERNAL, ActionRunner, Outcome
from sandboxfs.worker.engine import Engine, EngineError

log = logging.getLogger(__name__)

HEARTBEAT = 5.0  # seconds between updates while a lease runs
HEARTBEAT_DEADLINE = 10.0
IDLE_DEADLINE = 30.0  # the engine answers an idle update when work comes, or near this
_SESSION_GONE = frozenset((grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT,
                           grpc.StatusCode.FAILED_PRECONDITION))


def default_bot_name() -> str:
    return socket.gethostname()


def worker_description() -> worker_pb2.Worker:
    """What the bot offers: one Linux device (the engine matches platform properties on it)."""
    worker = worker_pb2.Worker()
    device = worker.devices.add(handle="sandboxfs")
    device.properties.add(key="OSFamily", value="linux")
    return worker


class BotSession:
    """One bot session of the worker, serving one lease at a time until cancelled."""

    def __init__(self, engine: Engine, runner: ActionRunner, bot_id: str) -> None:
        self.engine = engine
        self.runner = runner
        self.bot_id = bot_id
        self.session: bots.BotSession | None = None
        self.leases_done = 0

    # -- calls ----------------------------------------------------------------------------

    async def _create(self) -> None:
        wanted = bots.BotSession(bot_id=self.bot_id, status=bots.BotStatus.OK,
                                 worker=worker_description())
        if self.session is not None:  # carry what was not reported yet
            wanted.leases.extend(lease for lease in self.session.leases
                                 if lease.state == bots.LeaseState.COMPLETED)
        request = bots.CreateBotSessionRequest(parent=self.engine.instance, bot_session=wanted)
        self.session = await trio.to_thread.run_sync(
            lambda: self.engine.call("CreateBotSession", request, 30, retry_for=math.inf))
        log.info("bot %s: session %s", self.bot_id, self.session.name)

    async def _update(self, deadline: float) -> None:
        """One update (retried through engine outages; a lost session is created again)."""
        request = bots.UpdateBotSessionRequest(name=self.session.name, bot_session=self.session)
        try:
            self.session = await trio.to_thread.run_sync(
                lambda: self.engine.call("UpdateBotSession", request, deadline,
                                         retry_for=math.inf),
                abandon_on_cancel=True)
        except EngineError as exc:
            if exc.code not in _SESSION_GONE:
                raise
            log.warning("bot %s: %s; making a new session", self.bot_id, exc.message)
            await self._create()

    async def _heartbeat(self, done: trio.Event) -> bool:
        """An update while a lease runs, given up if the lease ends first.  True if answered."""
        request = bots.UpdateBotSessionRequest(name=self.session.name, bot_session=self.session)
        future = self.engine.future("UpdateBotSession", request, HEARTBEAT_DEADLINE)
        answered = trio.Event()
        token = trio.lowlevel.current_trio_token()
        future.add_done_callback(lambda _f: token.run_sync_soon(answered.set))
        async with trio.open_nursery() as nursery:
            async def stop_on(event: trio.Event) -> None:
                await event.wait()
                nursery.cancel_scope.cancel()
            nursery.start_soon(stop_on, answered)
            nursery.start_soon(stop_on, done)
        if not answered.is_set():
            future.cancel()
            return False
        try:
            self.session = future.result()
        except grpc.RpcError as exc:
            if exc.code() in _SESSION_GONE:
                await self._create()
            else:  # the engine is away or slow: the action goes on; retried next beat
                log.info("bot %s: heartbeat: %s", self.bot_id, exc.code().name)
            return False
        return True

    # -- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        await self._create()
        while True:
            lease = self._new_lease()
            if lease is None:
                await self._update(IDLE_DEADLINE)
                continue
            await self._serve(lease)

    def _new_lease(self) -> bots.Lease | None:
        for lease in self.session.leases:
            if lease.state in (bots.LeaseState.PENDING, bots.LeaseState.ACTIVE):
                return lease
        return None

    def _lease(self, lease_id: str) -> bots.Lease | None:
        for lease in self.session.leases:
            if lease.id == lease_id:
                return lease
        return None

    async def _serve(self, lease: bots.Lease) -> None:
        started = time.perf_counter_ns()
        lease_id = lease.id
        lease.state = bots.LeaseState.ACTIVE
        outcome: list[Outcome] = []
        done = trio.Event()
        action = re.Action()
        if lease.payload.Is(re.Action.DESCRIPTOR):
            lease.payload.Unpack(action)
        else:
            outcome.append(Outcome(INTERNAL, f"lease {lease_id}: payload "
                                             f"{lease.payload.type_url!r} is not an Action"))
            done.set()
        log.info("bot %s: lease %s", self.bot_id, lease_id)
        async with trio.open_nursery() as nursery:
            cancelled = False
            if not done.is_set():
                async def work() -> None:
                    try:
                        outcome.append(await self.runner.run(lease_id, action))
                    finally:
                        done.set()
                nursery.start_soon(work)
            while not done.is_set():
                with trio.move_on_after(HEARTBEAT):
                    await done.wait()
                if done.is_set():
                    break
                if await self._heartbeat(done):
                    current = self._lease(lease_id)
                    if current is None or current.state == bots.LeaseState.CANCELLED:
                        log.info("bot %s: lease %s cancelled by the engine", self.bot_id,
                                 lease_id)
                        cancelled = True
                        nursery.cancel_scope.cancel()
                        break
        self.leases_done += 1
        current = self._lease(lease_id)
        if cancelled or current is None:
            if current is not None:
                self.session.leases.remove(current)
            return
        result = outcome[0] if outcome else Outcome(INTERNAL, f"lease {lease_id}: no outcome")
        current.state = bots.LeaseState.COMPLETED
        current.status.code = result.code
        current.status.message = result.message
        if result.result is not None:
            # The worker's own time, lease in hand to result ready: BuildGrid replaces
            # worker_start/worker_completed with its own assignment and report times.
            own = duration_pb2.Duration()
            own.FromNanoseconds(time.perf_counter_ns() - started)
            result.result.execution_metadata.auxiliary_metadata.add().Pack(own)
            packed = any_pb2.Any()
            packed.Pack(result.result)
            current.result.CopyFrom(packed)
        log.info("bot %s: lease %s done: status %d%s", self.bot_id, lease_id, result.code,
                 f" ({result.message})" if result.message else "")
        await self._update(IDLE_DEADLINE)
