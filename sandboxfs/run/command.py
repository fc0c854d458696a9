"""``sandboxfs run``: one command in a fresh sandbox, and everything cleaned up after.

Creates the sandbox (in a running mount, or in a private one started for
this run), runs the command in it -- with its working directory there, or
with ``--confine`` with the sandbox as its root filesystem (``confine``) --
passes its output and exit status through, writes the access report when
asked, and destroys the sandbox whatever happened: the command exited, was
killed, timed out, or left children behind.

Exit status: the command's; 128 + N if it died of signal N; 124 after
``--timeout``; 125 when sandboxfs itself failed; 126/127 when the command
could not be executed or found (the conventions of env(1) and timeout(1)).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import signal
import subprocess
import sys
import tempfile
from typing import Iterator, Sequence

import attrs
import msgpack

from sandboxfs.control.client import Client
from sandboxfs.errors import (
    EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND, EXIT_RUN_FAILED, EXIT_RUN_TIMEOUT, RunError,
)
from sandboxfs.run import confine
from sandboxfs.run.private_mount import PrivateMount
from sandboxfs.tree.mapping import Mapping

# What --map-system maps read-only: the toolchain's directories, and /etc
# entry by entry without credentials and keys.


class _Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@attrs.frozen
class RunConfig:
    argv: tuple[str, ...]
    mappings: tuple[Mapping, ...] = ()
    control: str | None = None  # a running mount's socket; None: a private mount
    confine: bool = False
    network: bool = False
    map_system: bool = False
    rw_tmp: bool = False
    cwd: str = "/"
    timeout: float | None = None
    report: str | None = None  # a file, "-" for stderr, None for no tracking


def system_mappings() -> list[Mapping]:
    """The host's toolchain, read-only, for ``--map-system``."""
    return [Mapping.of(path, path, False) for path in confine.system_paths()]


def _mapped(mappings: Sequence[Mapping], path: str) -> bool:
    return any(os.fsdecode(m.path) == path for m in mappings)


def run(config: RunConfig) -> int:
    """Run the command as configured; returns the exit status for ``sandboxfs run``."""
    with contextlib.ExitStack() as stack:
        control = config.control
        if control is None:
            control = stack.enter_context(PrivateMount()).control
        scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="sandboxfs-run-"))
        mappings = list(config.mappings)
        added: list[str] = []  # mappings of our own, not the caller's: never "unused"
        if config.map_system:
            system = [m for m in system_mappings() if not _mapped(mappings, os.fsdecode(m.path))]
            mappings += system
            added += [os.fsdecode(m.path).lstrip("/") for m in system]
        env = dict(os.environ)
        if config.confine:
            empty = os.path.join(scratch, "empty")
            os.mkdir(empty, 0o555)
            mounted_on = [d for d in confine.SANDBOX_DIRS if not _mapped(mappings, f"/{d}")]
            mappings += [Mapping.of(f"/{d}", empty, False) for d in mounted_on]
            added += mounted_on
            env["TMPDIR"] = "/tmp"
        elif config.rw_tmp and not _mapped(mappings, "/tmp"):
            tmp = os.path.join(scratch, "tmp")
            os.mkdir(tmp, 0o1777)
            mappings.append(Mapping.of("/tmp", tmp, True))
            added.append("tmp")
        client = stack.enter_context(Client(control))
        name = f"run-{os.getpid()}-{secrets.token_hex(4)}"
        created = client.create_sandbox(name, mappings, track_access=config.report is not None)
        try:
            root = created["path"]
            if config.rw_tmp and not config.confine:
                env["TMPDIR"] = os.path.join(root, "tmp")
            status = _run_command(config, root, env)
        finally:
            destroyed = client.destroy_sandbox(name)
        if config.report is not None:
            report = destroyed.get("access_report", {})
            ours = set(added)
            report["unused"] = [p for p in report.get("unused", []) if p not in ours]
            _write_report(config.report, report)
        return status


def _run_command(config: RunConfig, root: str, env: dict[str, str]) -> int:
    with _signals_interrupt():
        if config.confine:
            pid, errors = confine.spawn(root, config.cwd, config.argv, env, config.network)
            return _supervise(pid, config.timeout, lambda: _kill(pid), errors)
        cwd = os.path.join(root, config.cwd.lstrip("/"))
        try:
            process = subprocess.Popen(config.argv, cwd=cwd, env=env, process_group=0)
        except FileNotFoundError as exc:
            missing = "--cwd " + config.cwd if exc.filename == cwd else config.argv[0]
            print(f"sandboxfs run: {missing}: {exc.strerror}", file=sys.stderr)
            return EXIT_NOT_FOUND if missing == config.argv[0] else EXIT_RUN_FAILED
        except OSError as exc:  # EACCES, ENOEXEC...: found but cannot be executed
            print(f"sandboxfs run: {config.argv[0]}: {exc.strerror}", file=sys.stderr)
            return EXIT_CANNOT_EXECUTE

        def kill_group() -> None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

        try:
            return _supervise(process.pid, config.timeout, kill_group)
        finally:
            kill_group()  # children it left behind in its process group
            process.returncode = 0  # reaped by _supervise; keep Popen from waiting again


def _supervise(pid: int, timeout: float | None, kill, errors: int | None = None) -> int:
    """Wait for ``pid`` (at most ``timeout`` s), killing it on timeout or interruption."""
    try:
        if errors is not None:
            problem = _read_all(errors)
            if problem:
                os.waitpid(pid, 0)
                print(f"sandboxfs run: --confine: {problem.strip()}", file=sys.stderr)
                return EXIT_RUN_FAILED
        with _pidfd(pid) as fd:
            if not select.select([fd], [], [], timeout)[0]:
                print(f"sandboxfs run: timed out after {timeout:g} s; killing the command",
                      file=sys.stderr)
                kill()
                os.waitpid(pid, 0)
                return EXIT_RUN_TIMEOUT
        return confine.exit_code(os.waitpid(pid, 0)[1])
    except _Interrupted as exc:
        kill()
        os.waitpid(pid, 0)
        return 128 + exc.signum


def _read_all(fd: int) -> str:
    chunks = []
    try:
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode(errors="replace")


@contextlib.contextmanager
def _pidfd(pid: int) -> Iterator[int]:
    fd = os.pidfd_open(pid)
    try:
        yield fd
    finally:
        os.close(fd)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGINT/SIGTERM/SIGHUP to ``run`` end the command (then we clean up)."""

    def interrupt(signum, _frame):
        raise _Interrupted(signum)

    numbers = [signal.SIGINT, signal.SIGTERM]
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # not under nohup
        numbers.append(signal.SIGHUP)
    previous = {n: signal.signal(n, interrupt) for n in numbers}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def report_json(report: dict) -> str:
    """The report as JSON, one path per line.  Bytes paths (not UTF-8) become
    str with surrogate escapes, which JSON writes as ``\\udcXX``."""

    def text(value) -> str:
        return json.dumps(os.fsdecode(value) if isinstance(value, bytes) else value)

    accessed = [f"  {text(path)}: {json.dumps(kinds)}"
                for path, kinds in report.get("accessed", {}).items()]
    lists = [f' "{key}": [' + ",".join(f"\n  {text(p)}" for p in report.get(key, [])) + "\n ]"
             for key in ("missing", "unused")]
    return "{\n" + ' "accessed": {\n' + ",\n".join(accessed) + "\n },\n" + ",\n".join(lists) + "\n}"


def _write_report(target: str, report: dict) -> None:
    """JSON (msgpack for a ``.msgpack`` file); ``-`` writes JSON to stderr."""
    if target == "-":
        print(report_json(report), file=sys.stderr)
        return
    try:
        if target.endswith(".msgpack"):
            with open(target, "wb") as f:
                f.write(msgpack.packb(report, use_bin_type=True))
        else:
            with open(target, "w") as f:
                f.write(report_json(report) + "\n")
    except OSError as exc:
        raise RunError(f"--report {target}: {exc.strerror}") from None
