"""Bazel 2.1.0 as the Bazel test and the Bazel benchmark drive it: installed once, run, cleaned up.

``tests/fuse/test_bazel.py`` and ``bench/scenarios/bazel.py`` need the same
things, so they live here once:

* ``bazel_binary``: the binary, from ``SANDBOXFS_TEST_BAZEL``, from the cache
  (``~/.cache/sandboxfs-tests``) or installed there now from the npm registry
  (``@bazel/bazel@2.1.0``, the last Bazel line that ships the sandboxfs 0.2
  integration).  ``BazelUnavailable`` says why there is none (npm missing).
* ``Bazel``: one workspace's commands with fixed startup options (an output
  root of the caller's, a shared install base in the cache so each new output
  root does not extract Bazel again, no rc files), and a ``shutdown`` that
  falls back to ending the server by its PID.
* ``write_sandboxfs_wrapper``: what ``--experimental_sandboxfs_path`` names.
  It ``exec``s our sandboxfs (so Bazel's SIGTERM reaches the server itself),
  records the server's PID, and puts a ``relay`` on each side of its JSON
  stream that copies the bytes through and logs them with the time they
  passed.  ``ServerStreams`` reads those logs back: which sandboxes Bazel
  created and destroyed, the answers, and how long the server took for each.
* ``stop_leftovers``: unmount and end (by PID) whatever a failed run left
  below a directory.

``python -m bench.bazel_tool relay LOG`` is the relay itself; it must stay
light to import (Bazel waits for the server's first answer on every build).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

BAZEL_VERSION = "2.1.0"
BINARY_ENV = "SANDBOXFS_TEST_BAZEL"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sandboxfs-tests"
REPO = Path(__file__).resolve().parent.parent
COMMAND_TIMEOUT = 900.0
SHUTDOWN_TIMEOUT = 60.0


class BazelUnavailable(Exception):
    """There is no Bazel to run here, and nothing this code could do about it."""


def bazel_binary(install: bool = True) -> Path:
    """The Bazel 2.1.0 binary: given, cached, or (``install``) fetched from the npm registry now.

    Raises BazelUnavailable when npm is missing (or, without ``install``, when
    nothing is cached), RuntimeError when ``npm install`` fails.
    """
    given = os.environ.get(BINARY_ENV)
    if given:
        if not os.access(given, os.X_OK):
            raise BazelUnavailable(f"{BINARY_ENV}={given} is not an executable file")
        return Path(given)
    binary = CACHE / f"bazel-{BAZEL_VERSION}"
    if binary.exists():
        return binary
    npm = shutil.which("npm")
    if npm is None:
        raise BazelUnavailable("npm is not installed: it is needed to fetch @bazel/bazel "
                               f"{BAZEL_VERSION} from the npm registry")
    if not install:
        raise BazelUnavailable(f"Bazel {BAZEL_VERSION} is not in {CACHE} yet")
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".install.lock", "w") as lock:  # the test and the bench may race here
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not binary.exists():
            _npm_install(npm, binary)
    return binary


def _npm_install(npm: str, binary: Path) -> None:
    prefix = CACHE / f"npm-bazel-{BAZEL_VERSION}"
    result = subprocess.run(
        [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund",
         f"@bazel/bazel@{BAZEL_VERSION}"],
        capture_output=True, text=True, timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL,
        check=False)
    found = list((prefix / "node_modules" / "@bazel").glob(
        f"bazel-linux_x64/bazel-{BAZEL_VERSION}-linux-*"))
    if result.returncode != 0 or not found:
        raise RuntimeError(f"npm install @bazel/bazel@{BAZEL_VERSION} failed:\n"
                           f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    partial = binary.with_suffix(".partial")
    shutil.copyfile(found[0], partial)
    partial.chmod(0o755)
    partial.rename(binary)


class BazelFailed(AssertionError):
    """A Bazel command that had to succeed did not (an AssertionError, so pytest shows it plainly)."""


class Bazel:
    """Commands in one workspace, all with the same startup options (so one server serves them)."""

    def __init__(self, binary: Path, workspace: Path, output_user_root: Path,
                 cpus: Iterable[int] | None = None, max_idle_secs: int = 300) -> None:
        self.binary = binary
        self.workspace = workspace
        self.startup = [f"--output_user_root={output_user_root}",
                        f"--install_base={CACHE / f'install-{BAZEL_VERSION}'}",
                        "--bazelrc=/dev/null", f"--max_idle_secs={max_idle_secs}"]
        # The server inherits the client's CPUs, and the actions and sandboxfs the server's.
        self.prefix = ["taskset", "-c", ",".join(map(str, sorted(cpus)))] if cpus else []
        self._output_base: Path | None = None

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [*self.prefix, str(self.binary), *self.startup, *args], cwd=self.workspace,
            capture_output=True, text=True, timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL,
            check=False)
        if check and result.returncode != 0:
            raise BazelFailed(f"bazel {' '.join(args)} failed (exit {result.returncode}):\n"
                              f"{result.stderr[-6000:]}")
        return result

    def build(self, *flags: str, targets: Sequence[str] = ("//...",),
              check: bool = True) -> subprocess.CompletedProcess:
        return self("build", "--verbose_failures", *flags, "--", *targets, check=check)

    def clean(self) -> None:
        self("clean")

    def info(self, key: str) -> Path:
        return Path(self("info", key).stdout.strip())

    @property
    def output_base(self) -> Path:
        if self._output_base is None:
            self._output_base = self.info("output_base")
        return self._output_base

    def start(self) -> int | None:
        """Start the server (if it is not up) and learn its output base; returns its PID."""
        self._output_base = self.info("output_base")
        return self.server_pid()

    def server_pid(self) -> int | None:
        """The running server's PID (from its output base), or None."""
        if self._output_base is None:
            return None
        try:
            pid = int((self._output_base / "server" / "server.pid.txt").read_text())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def shutdown(self) -> None:
        """``bazel shutdown``; a server that outlives it is ended by its PID."""
        pid = self.server_pid()
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run([*self.prefix, str(self.binary), *self.startup, "shutdown"],
                           cwd=self.workspace, capture_output=True, timeout=SHUTDOWN_TIMEOUT,
                           stdin=subprocess.DEVNULL, check=False)
        if pid is not None:
            _wait_gone([pid], 10.0)
            _end(pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _wait_gone(pids: list[int], seconds: float) -> list[int]:
    """Wait up to ``seconds`` for processes to end by themselves; returns those still alive."""
    deadline = time.monotonic() + seconds
    while True:
        alive = [pid for pid in pids if _alive(pid)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def _end(pid: int, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds: one process, by PID."""
    for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if not _alive(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
        _wait_gone([pid], wait)


def write_sandboxfs_wrapper(path: Path, stream_dir: Path, transport: str,
                            cpus: Iterable[int] | None = None, cpu_profile: bool = False) -> Path:
    """The executable Bazel runs as sandboxfs: our 0.2 front end from this checkout.

    Each server appends its PID to ``stream_dir/servers`` and logs its input
    and output to ``stream_dir/{requests,responses}.PID`` (see ``relay``);
    with ``cpu_profile`` it also writes ``--cpu_profile=stream_dir/profile.PID``.
    """
    stream_dir.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    pin = f"taskset -c {','.join(map(str, sorted(cpus)))} " if cpus else ""
    relay = f"{python} -m bench.bazel_tool relay"
    profile = f"--cpu_profile={stream_dir}/profile.$$ " if cpu_profile else ""
    path.write_text(f"""#!/bin/bash
# Bazel's --experimental_sandboxfs_path: our sandboxfs, its JSON stream logged both ways.
export PYTHONPATH={REPO}
export SANDBOXFS_TRANSPORT={transport}
case "$1" in --version|--help) exec {python} -m sandboxfs "$@";; esac
echo $$ >> {stream_dir}/servers
exec {pin}{python} -m sandboxfs {profile}"$@" \\
    < <(exec {relay} {stream_dir}/requests.$$) > >(exec {relay} {stream_dir}/responses.$$)
""")
    path.chmod(0o755)
    return path


def relay(log_path: str) -> int:
    """Copy stdin to stdout as it comes; log each chunk as ``[monotonic time, text]`` per line."""
    with open(log_path, "w", buffering=1) as log:
        while True:
            chunk = os.read(0, 1 << 16)
            now = time.monotonic()
            if not chunk:
                return 0
            try:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(1, view):]
            except BrokenPipeError:  # Bazel stopped reading: the command is over
                return 0
            log.write(json.dumps([now, chunk.decode("utf-8", "surrogateescape")]) + "\n")


def _objects(log_path: Path) -> list[tuple[float, object]]:
    """The JSON values of a relay log, each with the time of the chunk that completed it."""
    if not log_path.exists():
        return []
    decoder = json.JSONDecoder()
    buffer, out = "", []
    for line in log_path.read_text().splitlines():
        stamp, text = json.loads(line)
        buffer += text
        while True:
            stripped = buffer.lstrip()
            if not stripped:
                buffer = ""
                break
            try:
                value, end = decoder.raw_decode(stripped)
            except json.JSONDecodeError:  # incomplete: the rest comes in a later chunk
                buffer = stripped
                break
            out.append((stamp, value))
            buffer = stripped[end:]
    return out


class ServerStreams:
    """What one sandboxfs server was asked and answered (read back from the relay logs).

    ``answers`` holds ``(op, id, seconds)`` per answered request, ``op`` being
    ``create`` or ``destroy`` and ``seconds`` the time from the request passing
    the input relay to its answer passing the output relay.  Bazel's first
    request (the sandbox ``empty``) is sent as the server starts, so its time
    is the server's start-up, not a create.
    """

    def __init__(self, stream_dir: Path, pid: int) -> None:
        self.pid = pid
        self.requests = _objects(stream_dir / f"requests.{pid}")
        self.responses = _objects(stream_dir / f"responses.{pid}")
        self.created: list[str] = []
        self.destroyed: list[str] = []
        self.mappings: list[int] = []
        self.errors = [r for _, r in self.responses if isinstance(r, dict) and r.get("error")]
        pending: dict[str, list[tuple[str, float]]] = {}
        for stamp, request in self.requests:
            op, body = next(iter(request.items()))
            if op in ("CreateSandbox", "C"):
                ident = body.get("id", body.get("i"))
                self.created.append(ident)
                self.mappings.append(len(body.get("mappings", body.get("m", []))))
                pending.setdefault(ident, []).append(("create", stamp))
            else:
                self.destroyed.append(body)
                pending.setdefault(body, []).append(("destroy", stamp))
        self.answers: list[tuple[str, str, float]] = []
        for stamp, response in self.responses:  # per id, answers come in request order
            ident = response.get("id") if isinstance(response, dict) else None
            if pending.get(ident):
                op, sent = pending[ident].pop(0)
                self.answers.append((op, ident, stamp - sent))

    def seconds(self, op: str, first: bool = False) -> list[float]:
        """Times of the answered ``op`` requests; without ``first``, not Bazel's first create."""
        got = [(ident, t) for o, ident, t in self.answers if o == op]
        if not first and op == "create" and self.created and got and got[0][0] == self.created[0]:
            got = got[1:]
        return [t for _, t in got]

    @classmethod
    def all(cls, stream_dir: Path) -> list[ServerStreams]:
        """Every server the wrapper started whose logs are in ``stream_dir``, oldest first."""
        servers = stream_dir / "servers"
        pids = [int(p) for p in servers.read_text().split()] if servers.exists() else []
        return [cls(stream_dir, pid) for pid in pids]


def clear_streams(stream_dir: Path) -> None:
    """Forget earlier servers' logs (between builds)."""
    for entry in stream_dir.iterdir():
        entry.unlink()


def mounts_below(directory: Path) -> list[str]:
    """Mount points at or below ``directory`` (read from mountinfo: dead mounts too)."""
    prefix = os.path.realpath(directory)
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4].encode().decode("unicode_escape") for line in f]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


def stop_leftovers(directory: Path) -> list[str]:
    """Unmount what is mounted below ``directory`` and end (by PID) every process with an
    argument below it (a sandboxfs, a relay, a Bazel server).  Returns what it had to do:
    after a clean run, nothing."""
    # Imported here, not at the top: the relay runs this module and must import little.
    from sandboxfs.fuse.child_mount import lazy_unmount
    done = []
    for point in mounts_below(directory):
        lazy_unmount(point)
        done.append(f"unmounted {point}")
    root = os.fsencode(os.path.realpath(directory))
    for pid in _wait_gone(list(_processes_using(root)), 3.0):  # a relay may be just ending
        _end(pid)
        done.append(f"ended process {pid}")
    return done


def _processes_using(root: bytes) -> Iterator[int]:
    ours = {os.getpid(), os.getppid()}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in ours:
            continue
        try:
            args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        below = any(a == root or a.startswith(root + b"/") or b"=" + root + b"/" in a for a in args)
        if below and _alive(int(entry)):
            yield int(entry)


@contextlib.contextmanager
def session(bazel: Bazel, directory: Path) -> Iterator[Bazel]:
    """Yield ``bazel``; afterwards (also after a failure) shut its server down and stop
    whatever is left below ``directory``."""
    try:
        yield bazel
    finally:
        bazel.shutdown()
        stop_leftovers(directory)


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "relay":
        return relay(argv[1])
    print("usage: python -m bench.bazel_tool relay LOG", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
