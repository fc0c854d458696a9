"""``sandboxfs run`` for real: private and shared mounts, confinement, reports, clean-up.

Every test runs ``python -m sandboxfs run`` as a real process.  After each
one, ``nothing_left`` checks that no private mount, temporary directory or
sandbox was left behind.  Covered:
* the command's stdout, stderr and exit status pass through (also 128+N for
  a signal, 124 for --timeout, 126/127, 125 for our own failures);
* the working directory is in the sandbox, --rw-tmp, --mount-point to a
  running mount (the sandbox is destroyed afterwards);
* children left behind are killed, with and without --confine; SIGTERM to
  ``run`` ends the command and still cleans up;
* --confine: a gcc compile with its headers mapped succeeds; with one missing
  it fails and the report names the header; an over-declared input is
  reported unused; the command cannot see /etc/shadow, /root, the real source
  tree or the network (unless --network); its PID namespace, /dev and /tmp.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import pytest

from sandboxfs.control.client import Client

from .conftest import SYSTEM_PYTHON, run_as
from .harness import is_mounted

RUN = [sys.executable, "-m", "sandboxfs", "run"]
TIMEOUT = 120


def private_leftovers() -> set[str]:
    """Private mounts and temporary directories of ``run`` that exist now."""
    with open("/proc/self/mountinfo") as f:
        mounted = {line.split()[4] for line in f if "sandboxfs-run-" in line}
    return mounted | set(glob.glob("/tmp/sandboxfs-run-*"))


@pytest.fixture(autouse=True)
def nothing_left():
    before = private_leftovers()
    yield
    assert private_leftovers() - before == set()


def run(args: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*RUN, *args], capture_output=True, text=True, timeout=TIMEOUT, **kwargs)


@pytest.fixture
def source(workdir: Path) -> Path:
    """A tiny C project: main.c includes a.h and b.h; unused.h is declared but never read."""
    src = workdir / "src"
    src.mkdir()
    (src / "main.c").write_text('#include "a.h"\n#include "b.h"\nint main(void) { return A + B; }\n')
    (src / "a.h").write_text("#define A 3\n")
    (src / "b.h").write_text("#define B 4\n")
    (src / "unused.h").write_text("#define UNUSED 1\n")
    return src


def src_mappings(src: Path, names: Sequence[str]) -> list[str]:
    return [arg for name in names for arg in ("--mapping", f"ro:/src/{name}:{src / name}")]


# -- without confinement -----------------------------------------------------------------


def test_output_and_exit_status_pass_through(source):
    result = run([*src_mappings(source, ["a.h"]), "--cwd", "/src", "--",
                  "sh", "-c", "cat a.h; echo to-stderr >&2; exit 3"])
    assert (result.returncode, result.stdout, result.stderr) == (3, "#define A 3\n", "to-stderr\n")


def test_the_working_directory_is_the_sandbox_with_only_the_mappings(source):
    result = run([*src_mappings(source, ["a.h", "b.h"]), "--", "sh", "-c", "pwd; ls -R ."])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("/tmp/sandboxfs-run-") and lines[0].endswith(lines[0].split("/")[-1])
    assert lines[1:] == [".:", "src", "", "./src:", "a.h", "b.h"]


def test_rw_tmp_is_a_fresh_writable_tmp(source):
    result = run(["--rw-tmp", "--", "sh", "-c", 'echo x > "$TMPDIR/f" && cat "$TMPDIR/f" && echo "$TMPDIR"'])
    assert result.returncode == 0, result.stderr
    data, tmpdir = result.stdout.splitlines()
    assert data == "x" and tmpdir.endswith("/tmp") and "/sandboxfs-run-" in tmpdir


@pytest.mark.parametrize(
    "argv, status",
    [
        pytest.param(["sh", "-c", "kill -9 $$"], 128 + 9, id="killed by SIGKILL"),
        pytest.param(["no-such-command-anywhere"], 127, id="not found"),
        pytest.param(["/etc/hostname"], 126, id="not executable"),
    ],
)
def test_statuses_of_commands_that_do_not_exit_normally(argv, status):
    assert run(["--", *argv]).returncode == status


def test_our_own_failures_are_125_with_a_message(workdir):
    result = run(["--mapping", f"ro:/x:{workdir}/missing", "--", "true"])
    assert result.returncode == 125
    assert "mapping 0 (/x)" in result.stderr and "does not exist" in result.stderr
    result = run(["--cwd", "/nowhere", "--", "true"])
    assert (result.returncode, result.stderr.strip()) == (
        125, "sandboxfs run: --cwd /nowhere: No such file or directory")


@pytest.mark.parametrize("args, message", [
    ([], "give the command to run after --"),
    (["--network", "--", "true"], "--network only means something with --confine"),
])
def test_usage_errors_exit_2(args, message):
    result = run(args)
    assert result.returncode == 2 and message in result.stderr


@pytest.mark.parametrize("confine", [False, True], ids=["plain", "confined"])
def test_timeout_kills_the_command_and_cleans_up(confine):
    args = ["--confine", "--map-system"] if confine else []
    started = time.monotonic()
    result = run([*args, "--timeout", "1", "--", "sleep", "60"])
    assert result.returncode == 124
    assert "timed out after 1 s" in result.stderr
    assert time.monotonic() - started < 30  # not the 60 s of the command


@pytest.mark.parametrize("confine", [False, True], ids=["plain", "confined"])
def test_children_left_behind_are_killed(workdir, confine):
    pid_file = workdir / "child.pid"
    args = ["--confine", "--map-system", "--mapping", f"rw:/out:{workdir}"] if confine else []
    where = "/out" if confine else str(workdir)
    # The child records its host-visible identity: its start time in /proc is unique.
    script = f"sleep 600 & echo $! > {where}/child.pid; echo started"
    result = run([*args, "--", "sh", "-c", script])
    assert (result.returncode, result.stdout) == (0, "started\n"), result.stderr
    if confine:
        assert not any(_is_sleep_600(pid) for pid in _pids()), "a confined child survived"
    else:
        assert _gone(int(pid_file.read_text()))


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _is_sleep_600(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if f.read() != b"sleep\x00600\x00":
                return False
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # zombies are dead
    except OSError:
        return False


def _gone(pid: int) -> bool:
    """The process is dead (a zombie waiting for init to reap it counts as dead)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_sigterm_to_run_ends_the_command_and_cleans_up(workdir):
    marker = workdir / "started"
    process = subprocess.Popen([*RUN, "--", "sh", "-c", f"touch {marker}; exec sleep 600"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_running_mount_is_used_and_left_without_the_sandbox(sandboxfs_mount, source):
    mount = sandboxfs_mount([])
    result = run(["--mount-point", str(mount.mount_point), *src_mappings(source, ["a.h"]),
                  "--cwd", "/src", "--", "sh", "-c", 'cat a.h; basename "$(dirname "$PWD")"'])
    assert result.returncode == 0, result.stderr
    content, name = result.stdout.splitlines()
    assert content == "#define A 3" and name.startswith("run-")
    with Client(str(mount.mount_point) + ".sock") as client:
        assert client.list() == []
    assert is_mounted(mount.mount_point)


# -- confined ----------------------------------------------------------------------------

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is installed by make test")


def compile_in_sandbox(source: Path, headers: Sequence[str], report: Path) -> subprocess.CompletedProcess:
    return run(["--confine", "--map-system", *src_mappings(source, ["main.c", *headers]),
                "--cwd", "/src", "--report", str(report), "--",
                "sh", "-c", "gcc -o /tmp/main main.c && /tmp/main; echo status=$?"])


@needs_gcc
def test_gcc_compiles_when_its_headers_are_mapped(source, workdir):
    report_path = workdir / "report.json"
    result = compile_in_sandbox(source, ["a.h", "b.h", "unused.h"], report_path)
    assert (result.returncode, result.stdout) == (0, "status=7\n"), result.stderr
    report = json.loads(report_path.read_text())
    for name in ("main.c", "a.h", "b.h"):
        assert "read" in report["accessed"][f"src/{name}"]
    # Over-declared; and nothing of what run itself mapped (--map-system, /proc, /dev, /tmp).
    assert report["unused"] == ["src/unused.h"]


@needs_gcc
def test_gcc_fails_without_a_header_and_the_report_names_it(source, workdir):
    report_path = workdir / "report.json"
    result = compile_in_sandbox(source, ["a.h"], report_path)
    assert "b.h: No such file or directory" in result.stderr
    assert result.stdout == "status=1\n"
    assert "src/b.h" in json.loads(report_path.read_text())["missing"]


def test_confined_command_sees_nothing_outside_its_mappings(source):
    probe = (
        f"for p in /etc/shadow /root {source} {source.parent} /home; do "
        'if [ -e "$p" ]; then echo "visible $p"; fi; done; '
        f"touch /etc/x 2>/dev/null && echo 'wrote /etc'; "
        f"cat /src/a.h"
    )
    result = run(["--confine", "--map-system", *src_mappings(source, ["a.h"]), "--",
                  "sh", "-c", probe])
    assert (result.returncode, result.stdout) == (0, "#define A 3\n"), result.stderr


def test_confined_command_has_no_network_unless_asked(workdir):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    connect = ("import socket,sys\n"
               f"try: socket.create_connection(('127.0.0.1', {port}), timeout=5); print('connected')\n"
               "except OSError as e: print(type(e).__name__)\n")
    python = SYSTEM_PYTHON  # under /usr, mapped by --map-system
    try:
        cut = run(["--confine", "--map-system", "--", python, "-I", "-c", connect])
        kept = run(["--confine", "--map-system", "--network", "--", python, "-I", "-c", connect])
    finally:
        listener.close()
    assert cut.stdout == "ConnectionRefusedError\n", cut.stderr  # its own loopback only
    assert kept.stdout == "connected\n", kept.stderr


def test_confined_process_tree_dev_and_tmp():
    script = ('echo pid=$$; ls /proc | grep -c "^[0-9]"; ls /dev | tr "\\n" " "; echo; '
              "echo data > /tmp/t && cat /tmp/t; stat -f -c %T /tmp")
    result = run(["--confine", "--map-system", "--", "sh", "-c", script])
    assert result.returncode == 0, result.stderr
    pid, processes, dev, data, tmp_type = result.stdout.splitlines()
    assert pid == "pid=2"  # PID 1 is our init, the command its child
    assert int(processes) <= 5  # init, sh, ls, grep (and nothing of the host)
    assert dev.split() == ["fd", "full", "null", "random", "stderr", "stdin", "stdout", "tty",
                           "urandom", "zero"]
    assert (data, tmp_type) == ("data", "tmpfs")


# -- confined, as a user who is not root ---------------------------------------------------

# What ``python -m sandboxfs`` imports, copied where the second user can read it:
# the project's venv lives under /root (mode 0700).
PACKAGES = ("sandboxfs", "pyfuse3", "trio", "msgpack", "attr", "attrs", "outcome", "sniffio",
            "sortedcontainers", "idna")


@pytest.fixture
def readable_python_path(workdir: Path) -> Path:
    import importlib

    target = workdir / "pythonpath"
    for name in PACKAGES:
        module = importlib.import_module(name)
        shutil.copytree(Path(module.__file__).parent, target / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["chmod", "-R", "a+rX", str(workdir)], check=True)
    return target


def test_a_user_who_is_not_root_is_confined_through_a_user_namespace(
    sandboxfs_mount, source, unprivileged_user, readable_python_path
):
    """The mount is root's (/dev/fuse is 0600 here), shared with the user; the
    user's ``run --confine`` then needs an unprivileged user namespace."""
    mount = sandboxfs_mount(["--allow", "other", "--control-allow-uid", str(unprivileged_user.pw_uid)])
    source.chmod(0o755)
    for path in source.iterdir():
        path.chmod(0o644)
    command = [SYSTEM_PYTHON, "-m", "sandboxfs", "run", "--mount-point", str(mount.mount_point),
               "--confine", "--map-system", *src_mappings(source, ["a.h"]), "--",
               "sh", "-c", "id -u; cat /src/a.h; ls /root /etc/shadow 2>&1 | wc -l; touch /src/x"]
    result = run_as(unprivileged_user, command, cwd="/",
                    env={"PYTHONPATH": str(readable_python_path), "PATH": os.environ["PATH"]},
                    timeout=TIMEOUT)
    if "cannot create a user namespace" in result.stderr:
        pytest.fail(f"this kernel refuses unprivileged user namespaces: {result.stderr}")
    uid, header, errors = result.stdout.splitlines()
    assert (uid, header, errors) == ("0", "#define A 3", "2"), result.stderr  # root only inside
    assert "touch: cannot touch '/src/x'" in result.stderr
    assert result.returncode == 1
    assert not (source / "x").exists()
