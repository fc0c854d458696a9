"""One lease's action: its sandbox, its command, its outputs and its ActionResult.

The input root becomes a backend slot (``backend.slots``) whose leaves are
``CasFile`` nodes: nothing is downloaded before the command starts but the
directory blobs the worker lacks; for a Command seen before, the files it
looked up then are prefetched in parallel batches while the command runs
(an open of one still on its way waits for its batch).  Every declared
output gets a writable scratch parent (REAPI: the worker creates the
directories leading to outputs, never the outputs themselves), so outputs
live outside the mount and no other action ever sees them; slots are
reused by Merkle diff as for ``sandboxfs serve``.

The command runs with exactly the Command's environment, in its working
directory, in a session of its own (the whole process group is killed at
the timeout or when the lease is cancelled); with ``confine``, through
``run.confined`` in namespaces whose root shows only its sandbox and the
system directories.  Its stdout and stderr go to scratch files and up as
blobs.

Outcomes (``Outcome``): an ActionResult with status OK for any exit code;
DEADLINE_EXCEEDED (with the partial result) at the timeout; FAILED_PRECONDITION
naming the blobs when an input is missing from the CAS; DATA_LOSS when the
CAS sent bytes that do not hash to their digest; INVALID_ARGUMENT for a
malformed action; UNAVAILABLE when the engine failed meanwhile.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time

import attrs
import trio
from google.protobuf.timestamp_pb2 import Timestamp

from sandboxfs.backend.merkle import DirectoryStore
from sandboxfs.backend.proto import remote_execution_pb2 as re
from sandboxfs.backend.proto import sandbox_pb2
from sandboxfs.backend.slots import Slots
from sandboxfs.errors import InvalidRequestError, SandboxfsError
from sandboxfs.worker.engine import Engine, EngineError, digest_of
from sandboxfs.worker.fetch import CasFetcher, InputError, ReadHistory, fetch_tree
from sandboxfs.worker.outputs import collect_outputs

log = logging.getLogger(__name__)

# google.rpc.Code values a lease reports.
OK, CANCELLED, INVALID_ARGUMENT, DEADLINE_EXCEEDED = 0, 1, 3, 4
FAILED_PRECONDITION, INTERNAL, UNAVAILABLE, DATA_LOSS = 9, 13, 14, 15
DEFAULT_TIMEOUT = 3600.0
EXEC_ROOT = "/"  # slots are reused by exec root: one for every worker sandbox


@attrs.define
class Outcome:
    """What a lease reports: a status (google.rpc.Code and message) and maybe a result."""

    code: int
    message: str = ""
    result: re.ActionResult | None = None
    logs: tuple[str, str] | None = None  # the stdout and stderr files behind the result


def _now() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


def manifest_for(command: re.Command, root: re.Digest) -> sandbox_pb2.Manifest:
    """The backend manifest of an action: its input root and one writable parent per output."""
    manifest = sandbox_pb2.Manifest(hash_function="sha256", exec_root=EXEC_ROOT,
                                    mnemonic="remote")
    manifest.input_root_digest.CopyFrom(root)
    for path in output_paths(command):
        manifest.outputs[path].type = "file"  # its parent is made; the action makes it
    return manifest


def output_paths(command: re.Command) -> list[str]:
    """Every declared output, relative to the input root (REAPI's are relative to the
    working directory), without duplicates."""
    declared = list(command.output_paths) or [*command.output_files,
                                             *command.output_directories]
    base = command.working_directory.strip("/")
    seen: dict[str, None] = {}
    for path in declared:
        full = f"{base}/{path}" if base else path
        seen[os.path.normpath(full)] = None
    return list(seen)


class ActionRunner:
    """Runs leases' actions in sandboxes of one mount (one instance per worker)."""

    def __init__(self, engine: Engine, fetcher: CasFetcher, directories: DirectoryStore,
                 slots: Slots, invalidate, scratch_root: str, worker_name: str,
                 history: ReadHistory | None = None, *, prefetch: bool = True,
                 confine: bool = False) -> None:
        self.engine = engine
        self.fetcher = fetcher
        self.directories = directories
        self.slots = slots
        self.invalidate = invalidate
        self.scratch_root = scratch_root
        self.worker_name = worker_name
        self.history = history if history is not None else ReadHistory()
        self.prefetch = prefetch
        self.confine = confine
        self._runs = 0

    async def run(self, lease_id: str, action: re.Action) -> Outcome:
        """Run ``action`` for lease ``lease_id`` (cancel the task to cancel the lease)."""
        meta = re.ExecutedActionMetadata(worker=self.worker_name)
        meta.worker_start_timestamp.CopyFrom(_now())
        since = time.monotonic()
        try:
            meta.input_fetch_start_timestamp.CopyFrom(_now())
            command = await trio.to_thread.run_sync(self._command, action)
            root = action.input_root_digest
            tree = await trio.to_thread.run_sync(
                fetch_tree, self.engine, self.directories, root.hash, root.size_bytes)
        except InputError as exc:
            return _input_outcome(exc.kind, exc.message)
        except InvalidRequestError as exc:
            return Outcome(INVALID_ARGUMENT, f"lease {lease_id}: {exc.message}")
        except EngineError as exc:
            return Outcome(UNAVAILABLE, f"lease {lease_id}: {exc.message}")
        sandbox = f"lease-{lease_id}"
        logs = ""
        try:
            answer, path, changed = self.slots.create(sandbox, manifest_for(command, root))
        except InvalidRequestError as exc:
            return Outcome(INVALID_ARGUMENT, exc.message)
        if answer != "ok":  # not for a lazy Slots; kept for a clear message if it ever is
            return Outcome(INTERNAL, f"lease {lease_id}: sandbox not made: missing {path}")
        try:
            await self.invalidate(changed)
            slot = self.slots.live[sandbox]
            slot.source.looked_up = []
            key = action.command_digest.hash
            wanted = self.history.wanted(key, tree, self.fetcher.store) if self.prefetch else {}
            meta.input_fetch_completed_timestamp.CopyFrom(_now())  # the prefetch goes on
            self._runs += 1
            logs = os.path.join(self.scratch_root, f"run-{self._runs}")
            stop = threading.Event()
            async with trio.open_nursery() as nursery:
                if wanted:
                    nursery.start_soon(self._prefetch, wanted, stop)
                try:
                    outcome = await self._execute(lease_id, action, command, path, logs, meta)
                finally:
                    stop.set()  # what the command did not wait for is not needed now
            self.history.record(key, slot.source.looked_up)
            failed = self.fetcher.failures_since(since, self.slots.file_digests(tree))
            if failed:
                return _fetch_outcome(failed)
            if outcome.result is not None:
                meta.output_upload_start_timestamp.CopyFrom(_now())
                await trio.to_thread.run_sync(self._upload, outcome, slot.outputs, command)
                meta.output_upload_completed_timestamp.CopyFrom(_now())
                meta.worker_completed_timestamp.CopyFrom(_now())
                outcome.result.execution_metadata.CopyFrom(meta)
            return outcome
        except EngineError as exc:
            return Outcome(UNAVAILABLE, f"lease {lease_id}: {exc.message}")
        except SandboxfsError as exc:
            return Outcome(INTERNAL, f"lease {lease_id}: {exc.message}")
        finally:
            with trio.CancelScope(shield=True):
                changed, trash = self.slots.destroy(sandbox)
                await self.invalidate(changed)
                for junk in (trash, logs):
                    if junk:
                        await trio.to_thread.run_sync(shutil.rmtree, junk, True)

    async def _prefetch(self, wanted: dict[str, int], stop: threading.Event) -> None:
        """Fetch ``wanted`` in order until done or ``stop`` (batches under way finish)."""
        self.fetcher.counts["prefetched"] += len(wanted)
        await trio.to_thread.run_sync(
            lambda: self.fetcher.fetch_many(wanted, ordered=True, stop=stop),
            abandon_on_cancel=True)

    def _command(self, action: re.Action) -> re.Command:
        digest = action.command_digest
        if not digest.hash:
            raise InvalidRequestError("the Action has no command_digest")
        replies = list(self.engine.read_batch([digest]))
        if not replies or replies[0][1]:
            code, message = (replies[0][1], replies[0][2]) if replies else (5, "no answer")
            raise InputError(f"command {digest.hash}/{digest.size_bytes}: the CAS answered "
                             f"status {code}: {message}", "missing")
        data = replies[0][3]
        if hashlib.sha256(data).hexdigest() != digest.hash or len(data) != digest.size_bytes:
            raise InputError(f"command {digest.hash}: the CAS sent bytes that do not hash "
                             "to it", "corrupt")
        command = re.Command.FromString(data)
        if not command.arguments:
            raise InvalidRequestError(f"command {digest.hash} has no arguments")
        return command

    async def _execute(self, lease_id: str, action: re.Action, command: re.Command,
                       sandbox_path: str, logs: str, meta) -> Outcome:
        os.makedirs(logs, exist_ok=True)
        cwd = os.path.join(sandbox_path, command.working_directory.strip("/"))
        env = {var.name: var.value for var in command.environment_variables}
        timeout = (action.timeout.seconds + action.timeout.nanos / 1e9
                   if action.HasField("timeout") else DEFAULT_TIMEOUT) or DEFAULT_TIMEOUT
        stdout_path, stderr_path = os.path.join(logs, "stdout"), os.path.join(logs, "stderr")
        result = re.ActionResult()
        code, message = OK, ""
        argv, run_env = list(command.arguments), env
        if self.confine:
            root = os.path.join(logs, "root")  # empty: the namespace mounts a tmpfs on it
            os.mkdir(root)
            spec = {"root": root, "cwd": cwd, "argv": argv, "env": env, "sandbox": sandbox_path}
            argv, run_env = [sys.executable, "-m", "sandboxfs.run.confined",
                             json.dumps(spec)], {}
        meta.execution_start_timestamp.CopyFrom(_now())
        with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
            try:
                with trio.move_on_after(timeout) as deadline:
                    process = await trio.run_process(
                        argv, cwd=cwd, env=run_env, stdin=b"",
                        stdout=out, stderr=err, check=False, start_new_session=True,
                        deliver_cancel=_kill_group)
                    result.exit_code = process.returncode
                if deadline.cancelled_caught:
                    result.exit_code = -signal.SIGKILL
                    code = DEADLINE_EXCEEDED
                    message = f"lease {lease_id}: the action ran past its {timeout:g} s timeout"
            except OSError as exc:  # could not start: as a shell would say it
                err.write(f"sandboxfs worker: cannot run {command.arguments[0]!r}: "
                          f"{exc.strerror}\n".encode())
                result.exit_code = 127 if isinstance(exc, FileNotFoundError) else 126
        meta.execution_completed_timestamp.CopyFrom(_now())
        return Outcome(code, message, result, (stdout_path, stderr_path))

    def _upload(self, outcome: Outcome, outputs, command: re.Command) -> None:
        """Hash the logs and outputs into the result and put every blob the engine lacks."""
        result = outcome.result
        blobs: dict[str, tuple[int, object]] = {}
        stdout_path, stderr_path = outcome.logs
        for path, field in ((stdout_path, result.stdout_digest),
                            (stderr_path, result.stderr_digest)):
            digest = file_digest(path)
            field.CopyFrom(digest)
            blobs[digest.hash] = (digest.size_bytes, path)
        collect_outputs(result, outputs, command, blobs)
        self.engine.upload(blobs)


def file_digest(path: str) -> re.Digest:
    """The digest of the file at ``path`` (read in chunks)."""
    hasher = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            hasher.update(chunk)
            size += len(chunk)
    return digest_of(hasher.hexdigest(), size)


async def _kill_group(process: trio.Process) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _input_outcome(kind: str, message: str) -> Outcome:
    code = DATA_LOSS if kind == "corrupt" else FAILED_PRECONDITION if kind == "missing" \
        else UNAVAILABLE
    return Outcome(code, message)


def _fetch_outcome(failed: dict) -> Outcome:
    """A run that could not read some of its inputs: say which, not only the exit code."""
    kinds = {failure.kind for failure in failed.values()}
    kind = "corrupt" if "corrupt" in kinds else "missing" if "missing" in kinds else "engine"
    names = "; ".join(f"{digest}: {failure.why}" for digest, failure in sorted(failed.items())[:5])
    more = f" (and {len(failed) - 5} more)" if len(failed) > 5 else ""
    return _input_outcome(kind, f"{len(failed)} input file(s) could not be fetched: "
                                f"{names}{more}")

