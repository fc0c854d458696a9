"""A real BuildGrid remote-execution engine (and the PostgreSQL it needs), for tests.

``sandboxfs worker`` is a Remote Workers API bot for BuildGrid.  Its tests have to talk
to a real engine, not a fake: the lease protocol (when leases arrive, what happens
to them when a bot dies or the engine restarts) is exactly what they check.  So the
tests start the engine themselves, with this module:

    with PostgreSQL() as pg, BuildGrid(pg, tmp_path, keepalive_timeout=15) as bg:
        ...  # bg.endpoint == "grpc://127.0.0.1:<port>"
        bg.stop(); bg.start()       # same port, same database and CAS

What it costs:

* The first use installs BuildGrid 0.9.1 (which needs Python 3.13) into a venv in
  ``~/.cache/sandboxfs-tests/buildgrid-0.9.1/venv`` (``SANDBOXFS_TEST_BUILDGRID_VENV``
  overrides): about 30 s, once per machine.  Later uses only check it.
* ``PostgreSQL()``: initdb + start + role/database, 1-2 s; stopping it well under 1 s.  Debian's
  ``postgresql`` package provides the binaries (``scripts/ensure-system.sh`` installs it);
  the cluster is our own, in a temp dir, on a free port, never the system one.
* ``BuildGrid.start()``: 5-7 s until it serves (most of that is importing BuildGrid);
  the database migration before the first start takes another ~2 s; stop() ~1.5 s.

How BuildGrid 0.9.1 treats bots (observed by experiment, see also the source of
``buildgrid/server/scheduler/impl.py``):

* ``keepalive_timeout`` (``bot-session-keepalive-timeout``, a number >= 1, default
  here 120 s, BuildGrid's own default 600 s) is how long a bot session lives without a
  Create/UpdateBotSession: each one sets the session's ``expire_time`` to now +
  keepalive_timeout.  Both calls long-poll for work when the bot has no lease, for up
  to 80 % of keepalive_timeout (or the call's deadline, if shorter); a waiting job is
  handed out at once, even by CreateBotSession.
* A reaper thread looks for expired sessions every ``session-expiry-timer-interval``
  (``expiry_interval`` here, BuildGrid's default 10 s), so a silent bot is noticed
  between keepalive_timeout and keepalive_timeout + expiry_interval after its last
  update (measured: keepalive 5 s, interval 10 s -> lease re-assigned 9.8 s after the
  bot's last update; interval 1 s -> 5.8 s).  It logs ``BotSession has expired.``,
  deletes the session and re-queues the job of every lease the bot held, ACTIVE ones
  included (a retry, status UNAVAILABLE "Bot session is closed"): the Execute stream
  goes back to QUEUED then EXECUTING, and the next bot that asks gets a lease with the
  *same* lease id; its result completes the Execute normally.  After
  ``max-job-attempts`` tries (default 5) the job completes as ABORTED instead.  An
  UpdateBotSession for the reaped session fails with INVALID_ARGUMENT "Bot does not
  exist while validating leases." (a worker must then CreateBotSession again).
* ``max-execution-timeout`` (seconds, default 7200) exists too: Execute requests whose
  Action.timeout is longer are rejected, and running jobs older than it are cancelled
  (checked every ``execution-timer-interval``, 60 s).  Pass such settings with
  ``scheduler_options={"max-execution-timeout": 30, ...}``.
* The ``assigners:`` block in the config is essential: without it a waiting bot gets
  its lease only ~96 s after the Execute.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from tests.buildgrid_venv import EngineUnavailable, buildgrid_python

PG_USER = "postgres"  # the system user Debian's postgresql package creates
DB_NAME = "bgd"
DB_ROLE = "bgd"
DB_PASSWORD = "insecure"

BGD_START_TIMEOUT = 60.0
BGD_STOP_GRACE = 10.0


# --- helpers ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_accepts(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError as e:
        return f"(no log: {e})"


# --- PostgreSQL -----------------------------------------------------------------------


def _pg_bindir() -> Path:
    root = Path("/usr/lib/postgresql")
    versions = sorted(
        (d for d in root.glob("*") if d.name.isdigit() and (d / "bin" / "initdb").exists()),
        key=lambda d: int(d.name),
        reverse=True,
    )
    if not versions:
        raise EngineUnavailable(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): run "
            "scripts/ensure-system.sh as root, or apt-get install postgresql"
        )
    return versions[0] / "bin"


class PostgreSQL:
    """A throwaway PostgreSQL cluster on 127.0.0.1:<free port>, with role and database ``bgd``.

    As root it runs as the ``postgres`` system user (PostgreSQL refuses root) in a temp
    dir under /tmp owned by that user.  ``url`` is the SQLAlchemy/psycopg URL for BuildGrid.
    """

    def __init__(self, port: int | None = None) -> None:
        self.bindir = _pg_bindir()
        self.port = port or free_port()
        self.dir: Path | None = None
        self.pid: int | None = None  # the postmaster, once started
        self._started = False

    @property
    def url(self) -> str:
        return f"postgresql://{DB_ROLE}:{DB_PASSWORD}@127.0.0.1:{self.port}/{DB_NAME}"

    @property
    def datadir(self) -> Path:
        assert self.dir is not None
        return self.dir / "data"

    def _as_pg_user(self, cmd: Sequence[str]) -> list[str]:
        if os.geteuid() != 0:
            return list(cmd)
        return [
            "setpriv", f"--reuid={PG_USER}", f"--regid={PG_USER}", "--init-groups",
            "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", *cmd,
        ]

    def _run(self, cmd: Sequence[str], what: str, timeout: float = 60) -> str:
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        r = subprocess.run(
            self._as_pg_user(cmd), cwd=self.dir, env=env, capture_output=True, text=True, timeout=timeout, check=False,
        )
        if r.returncode != 0:
            log = _tail(self.dir / "log") if self.dir else ""
            raise RuntimeError(f"PostgreSQL {what} failed ({r.returncode}): {r.stdout}{r.stderr}\n{log}")
        return r.stdout

    def _psql(self, sql: str) -> None:
        self._run(
            [str(self.bindir / "psql"), "-h", str(self.dir), "-p", str(self.port), "-U", PG_USER,
             "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q", "-c", sql],
            "psql",
        )

    def __enter__(self) -> Self:
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam(PG_USER)
            except KeyError:
                raise EngineUnavailable(
                    f"no '{PG_USER}' user (Debian's postgresql package creates it)"
                ) from None
        # /tmp, not pytest's tmp_path: that is under /root (0700), where postgres cannot go.
        self.dir = Path(tempfile.mkdtemp(prefix="sandboxfs-pg-", dir="/tmp"))
        try:
            if os.geteuid() == 0:
                os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._run(
                [str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", PG_USER, "--auth=trust",
                 "--no-locale", "-E", "UTF8", "--no-sync"],
                "initdb",
            )
            opts = (
                f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
            )
            self._run(
                [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.dir / "log"),
                 "-w", "-t", "60", "-o", opts, "start"],
                "start",
                timeout=90,
            )
            self._started = True
            self.pid = int((self.datadir / "postmaster.pid").read_text().split()[0])
            self._psql(f"CREATE ROLE {DB_ROLE} LOGIN PASSWORD '{DB_PASSWORD}'")
            self._psql(f"CREATE DATABASE {DB_NAME} OWNER {DB_ROLE}")
        except BaseException:
            self.close()
            raise
        return self

    def log_text(self) -> str:
        return _tail(self.dir / "log", 10**9) if self.dir else ""

    def close(self) -> None:
        try:
            if self._started and self.dir is not None:
                try:
                    self._run(
                        [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "-t", "30",
                         "stop"],
                        "stop",
                        timeout=60,
                    )
                except (RuntimeError, subprocess.TimeoutExpired):
                    # Our own postmaster only: the PID it wrote when we started it.
                    if self.pid and pid_alive(self.pid):
                        os.kill(self.pid, signal.SIGKILL)
                        _wait_gone(self.pid, 10)
                self._started = False
        finally:
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)

    def __exit__(self, *exc: object) -> None:
        self.close()


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# --- BuildGrid ------------------------------------------------------------------------

_CONFIG = """\
server:
  - !channel
    address: {address}
    insecure-mode: true
authorization:
  method: none
connections:
  - !sql-connection &sql
    connection-string: {url}
    pool-size: 5
    pool-timeout: 30
    max-overflow: 10
storages:
  - !disk-storage &main-storage
    path: {cas}
caches:
  - !lru-action-cache &main-action
    storage: *main-storage
    max-cached-refs: 1024
    allow-updates: true
    cache-failed-actions: true
schedulers:
  - !sql-scheduler &state-database
    sql: *sql
    storage: *main-storage
    action-cache: *main-action
    property-set: !dynamic-property-set
      match-property-keys: []
      wildcard-property-keys: []
    bot-session-keepalive-timeout: {keepalive}
    session-expiry-timer-interval: {expiry_interval}
{extra}    # Essential: without an assigner a waiting bot gets its lease ~96 s late.
    assigners:
      - !priority-age-assigner
        count: 1
        interval: 0.1
        jitter-factor: 0.1
instances:
  - name: ""
    services:
      - !action-cache
        cache: *main-action
      - !execution
        scheduler: *state-database
      - !cas
        storage: *main-storage
      - !bytestream
        storage: *main-storage
thread-pool-size: 20
"""


class BuildGrid:
    """A BuildGrid server (Execution, Bots, CAS, ByteStream, ActionCache; instance "").

    ``workdir`` holds the config, the disk CAS, the log and the PID file; the engine
    keeps its port, database and CAS across ``stop()``/``start()``.
    """

    def __init__(
        self,
        pg: PostgreSQL,
        workdir: os.PathLike[str] | str,
        port: int | None = None,
        *,
        keepalive_timeout: float = 120,
        expiry_interval: float = 10,
        scheduler_options: Mapping[str, Any] | None = None,
    ) -> None:
        if keepalive_timeout < 1:
            raise ValueError("BuildGrid requires bot-session-keepalive-timeout >= 1")
        self.pg = pg
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.keepalive_timeout = keepalive_timeout
        self.expiry_interval = expiry_interval
        self.scheduler_options = dict(scheduler_options or {})
        self.python = buildgrid_python()
        self.bgd = self.python.parent / "bgd"
        self.dir = self.workdir / f"buildgrid-{self.port}"
        self.cas = self.dir / "cas"
        self.config = self.dir / "bgd.yml"
        self.log = self.dir / "bgd.log"
        self.pid_file = self.dir / "bgd.pid"
        self.pids: list[int] = []  # every bgd server process started, in order
        self._proc: subprocess.Popen[bytes] | None = None
        self._migrated = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> str:
        return f"grpc://{self.address}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def _write_config(self) -> None:
        extra = "".join(f"    {k}: {json.dumps(v)}\n" for k, v in self.scheduler_options.items())
        self.config.write_text(
            _CONFIG.format(
                address=json.dumps(self.address),
                url=json.dumps(self.pg.url),
                cas=json.dumps(str(self.cas)),
                keepalive=json.dumps(self.keepalive_timeout),
                expiry_interval=json.dumps(self.expiry_interval),
                extra=extra,
            )
        )

    def _migrate(self) -> None:
        with open(self.log, "ab") as out:
            out.write(f"=== bgd migrate apply ({time.strftime('%H:%M:%S')})\n".encode())
            out.flush()
            r = subprocess.run(
                [str(self.bgd), "migrate", "apply", self.pg.url],
                stdout=out, stderr=subprocess.STDOUT, timeout=120, check=False,
            )
        if r.returncode != 0:
            raise RuntimeError(f"bgd migrate apply failed ({r.returncode}):\n{_tail(self.log)}")
        self._migrated = True

    def start(self, timeout: float = BGD_START_TIMEOUT) -> None:
        if self.running():
            raise RuntimeError("BuildGrid is already running")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cas.mkdir(exist_ok=True)
        self._write_config()
        if not self._migrated:
            self._migrate()
        self.pid_file.unlink(missing_ok=True)
        with open(self.log, "ab") as out:
            out.write(f"=== bgd server start ({time.strftime('%H:%M:%S')})\n".encode())
            out.flush()
            self._proc = subprocess.Popen(
                [str(self.bgd), "server", "start", "-v", "--pid-file", str(self.pid_file), str(self.config)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,  # its own process group: signals to us don't reach it
            )
        self.pids.append(self._proc.pid)
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                rc = self._proc.returncode
                self._proc = None
                raise RuntimeError(f"bgd server exited ({rc}) while starting:\n{_tail(self.log)}")
            # It writes the PID file once gRPC serves; check the port too.
            if self._started_marker() and port_accepts(self.port):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"bgd server did not start within {timeout:.0f} s:\n{_tail(self.log)}")
            time.sleep(0.1)

    def _started_marker(self) -> bool:
        try:
            return int(self.pid_file.read_text().strip() or 0) == self._proc.pid
        except (OSError, ValueError):
            return False

    def stop(self, grace: float = BGD_STOP_GRACE) -> None:
        """SIGTERM the server, SIGKILL its process group after ``grace`` seconds."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        # Anything it forked is in the group we created for it (start_new_session).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":  # a manual check: python -m tests.engine
    t = time.monotonic()
    print("python:", buildgrid_python(), f"({time.monotonic() - t:.1f} s)")
    with tempfile.TemporaryDirectory() as d:
        t = time.monotonic()
        with PostgreSQL() as pg:
            print("postgres:", pg.url, f"({time.monotonic() - t:.1f} s)")
            t = time.monotonic()
            with BuildGrid(pg, d) as bg:
                print("buildgrid:", bg.endpoint, f"({time.monotonic() - t:.1f} s)")
                if len(sys.argv) > 1 and sys.argv[1] == "--wait":
                    input("press enter to stop ")
