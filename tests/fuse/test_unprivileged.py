"""``sandboxfs mount`` run by a user who is not root: mounted and unmounted through ``fusermount3``.

As root ``device.mount`` calls mount(2) itself; as anyone else the setuid
``fusermount3`` mounts and passes the /dev/fuse descriptor back over a socket
pair (``_FUSE_COMMFD``), and shutdown detaches with ``fusermount3 -u -z``.
libfuse (the pyfuse3 transport) does the same, so each run of the suite tests
its own transport (``SANDBOXFS_TRANSPORT``) here.

The server runs as ``nobody`` (uid 65534, no groups, no capabilities).
``fusermount3`` opens /dev/fuse as the calling user, and in this container
/dev/fuse is 0600 (a Debian host has 0666).  The real node is left alone:
each test runs a driver (this module's ``__main__``) as root in a mount and
PID namespace of its own, which bind-mounts a copy of the node over /dev/fuse
there (0666; 0600 for the test of a refused mount), starts the server as
nobody, makes the checks (file access as nobody: the mount is ``--allow
self``), stops it with SIGTERM and prints what it saw as JSON.  Everything it
mounted lives only in that namespace, and when the driver (the namespace's
init) ends, the kernel kills whatever is left in it; ``unshare --kill-child``
ends the driver if we kill ``unshare``.

The project's venv may live where nobody cannot reach it (its interpreter is
under /root here), so the server runs Debian's ``python3`` on a world-readable
copy of the packages ``sandboxfs mount`` imports.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

from .conftest import SYSTEM_PYTHON
from .harness import TRANSPORT, is_mounted

pytestmark = pytest.mark.fuse

NOBODY = 65534
# The driver gives up after this long (SIGALRM), stopping what it started; we kill it
# (by PID) if it still runs DRIVER_TIMEOUT + 30 s after it started.
DRIVER_TIMEOUT = 90
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ROOT = Path(__file__).resolve().parents[2]
CONTENT = "read by nobody through the mount\n"

# Prints {top-level name: ["package", its dirs] or ["module", [its file]]} for every
# module outside the standard library that the mount command's code imports.
IMPORTED = r"""
import json, sys
import sandboxfs.cli.main, sandboxfs.client, sandboxfs.mount
import sandboxfs.fuse.kernel.transport, sandboxfs.fuse.pyfuse3_transport

found = {}
for name in {n.partition(".")[0] for n in list(sys.modules)}:
    module = sys.modules.get(name)
    if module is None or name in sys.stdlib_module_names or name.startswith("__"):
        continue  # "__editable__..." is pip's finder for the project itself
    if hasattr(module, "__path__"):
        found[name] = ["package", list(module.__path__)]
    elif getattr(module, "__file__", None):
        found[name] = ["module", [module.__file__]]
print(json.dumps(found))
"""

# Run as nobody in the mount: what it reads, and the errno of each refused change.
CHECKS = r"""
import errno, json, os, sys

mnt = sys.argv[1]

def fails(call):
    try:
        call()
    except OSError as exc:
        return errno.errorcode[exc.errno]
    return "succeeded"

out = {"read": open(f"{mnt}/d/hello.txt").read()}
with open(f"{mnt}/w/new.txt", "w") as f:
    f.write("written by nobody\n")
out["read_back"] = open(f"{mnt}/w/new.txt").read()
os.mkdir(f"{mnt}/w/newdir")
out["ro_open_for_writing"] = fails(lambda: os.open(f"{mnt}/d/hello.txt", os.O_WRONLY))
out["ro_create"] = fails(lambda: os.open(f"{mnt}/d/new.txt", os.O_WRONLY | os.O_CREAT, 0o644))
out["ro_unlink"] = fails(lambda: os.unlink(f"{mnt}/d/hello.txt"))
print(json.dumps(out))
"""

# Run as nobody: holds a file of the mount open across the shutdown, then reads it.
HOLDER = r"""
import errno, os, sys

try:
    fd = os.open(sys.argv[1], os.O_RDONLY)
except OSError as exc:
    print("open failed:", errno.errorcode[exc.errno], flush=True)
    sys.exit(1)
print("open", flush=True)
sys.stdin.readline()
try:
    os.pread(fd, 10, 0)
    print("read succeeded", flush=True)
except OSError as exc:
    print(errno.errorcode[exc.errno], flush=True)
"""


# -- the pytest side -------------------------------------------------------------------


def _readable_packages(target: Path) -> Path:
    """A world-readable copy of what ``python -m sandboxfs mount`` imports beyond the
    standard library (whichever transport), for ``PYTHONPATH``."""
    listing = subprocess.run([sys.executable, "-c", IMPORTED], capture_output=True,
                             text=True, check=True, cwd=ROOT, timeout=60)  # ROOT's sandboxfs
    modules = json.loads(listing.stdout)
    assert {"sandboxfs", "trio", "pyfuse3"} <= set(modules), modules
    target.mkdir()
    for name, (kind, paths) in modules.items():
        for path in paths:
            if kind == "package":
                shutil.copytree(path, target / name, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(path, target / Path(path).name)
    subprocess.run(["chmod", "-R", "a+rX", str(target)], check=True)
    return target


def _layout(workdir: Path, device_mode: int = 0o666) -> dict:
    """Host dirs, mount point and a dir for the device node; what the driver needs."""
    ro = workdir / "ro"
    ro.mkdir()
    (ro / "hello.txt").write_text(CONTENT)
    (ro / "held.txt").write_text("never read before the shutdown\n")  # no cached pages
    # Owned by nobody, so the kernel's permission check lets nobody try to write:
    # what refuses is the read-only mapping.
    for path in (ro, ro / "hello.txt", ro / "held.txt"):
        os.chown(path, NOBODY, NOBODY)
    home = workdir / "home"  # nobody's: the mount point, the rw dir, the control socket
    for path in (home, home / "mnt", home / "rw"):
        path.mkdir()
        os.chown(path, NOBODY, NOBODY)
    (workdir / "dev").mkdir()
    return {
        "transport": TRANSPORT,
        "python": SYSTEM_PYTHON,
        "pythonpath": str(_readable_packages(workdir / "pythonpath")),
        "ro": str(ro),
        "rw": str(home / "rw"),
        "mnt": str(home / "mnt"),
        "dev": str(workdir / "dev"),
        "device_mode": device_mode,
        "log": str(workdir / "server.log"),
    }


def _run_driver(config: dict) -> dict:
    """The driver in its own mount and PID namespace; killed (by PID) if it overruns."""
    driver = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child",
         "--mount-proc", sys.executable, "-m", "tests.fuse.test_unprivileged",
         json.dumps(config)],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        stdout, stderr = driver.communicate(timeout=DRIVER_TIMEOUT + 30)
    except subprocess.TimeoutExpired:
        driver.kill()  # --kill-child: the driver dies, and with it its namespace
        driver.communicate()
        pytest.fail(f"the driver did not end within {DRIVER_TIMEOUT + 30} s:\n"
                    f"{_log(config)}")
    lines = stdout.strip().splitlines()
    assert driver.returncode == 0 and lines, (
        f"driver exited {driver.returncode}\nstdout: {stdout}\nstderr: {stderr}\n{_log(config)}")
    result = json.loads(lines[-1])
    assert "error" not in result, f"{result['error']}\n{_log(config)}"
    return result


def _log(config: dict) -> str:
    try:
        return "server log:\n" + Path(config["log"]).read_text(errors="replace")
    except OSError:
        return "(no server log)"


@pytest.fixture(scope="module")
def namespace_tools():
    if shutil.which("setpriv") is None or shutil.which("unshare") is None:
        pytest.fail("setpriv and unshare (util-linux) are missing")
    if not os.stat(shutil.which("fusermount3")).st_mode & 0o4000:
        pytest.fail("fusermount3 is not setuid: a user cannot mount with it")


def test_a_user_who_is_not_root_mounts_serves_and_unmounts_through_fusermount3(
        workdir, namespace_tools):
    """The whole life of a mount made by nobody: fusermount3 mounts it for nobody
    (the kernel's mount says user_id=65534); nobody reads through the read-only
    mapping and writes through the read-write one to the host, and changes to the
    read-only mapping fail EPERM (the mapping refuses, not the file's mode); the
    server has no capabilities, and on our transport it settles passthrough off
    (it needs CAP_SYS_ADMIN) and serves the reads itself.  SIGTERM with a file still
    open inside: the server exits 0 and the mount is gone -- only a lazy unmount
    (``fusermount3 -u -z``) can do that while the mount is busy -- and the open file
    then fails ENOTCONN."""
    config = _layout(workdir)
    result = _run_driver(config)
    log = _log(config)

    assert result["fstype"].startswith("fuse"), result  # fuse.sandboxfs
    assert f"user_id={NOBODY}" in result["super_options"], result
    assert f"group_id={NOBODY}" in result["super_options"], result
    assert result["uid"] == [NOBODY] * 4 and result["cap_eff"] == 0, result

    checks = result["checks"]
    assert checks["read"] == CONTENT
    assert checks["read_back"] == "written by nobody\n"
    written = Path(config["rw"]) / "new.txt"
    assert written.read_text() == "written by nobody\n"  # on the host, made by nobody
    assert (written.stat().st_uid, written.stat().st_gid) == (NOBODY, NOBODY)
    assert (Path(config["rw"]) / "newdir").is_dir()
    assert checks["ro_open_for_writing"] == "EPERM", checks
    assert checks["ro_create"] == "EPERM", checks
    assert checks["ro_unlink"] == "EPERM", checks
    assert (Path(config["ro"]) / "hello.txt").read_text() == CONTENT
    assert sorted(os.listdir(config["ro"])) == ["held.txt", "hello.txt"]

    # Every read reached the server: nothing passed through.
    assert result["fuse_ops"].get("read", 0) >= 1, result["fuse_ops"]
    if TRANSPORT == "kernel":
        assert "passthrough off" in log, log
        assert "passthrough refused" not in log, log
    assert "Traceback" not in log and " ERROR " not in log, log

    assert result["holder_opened"] == "open", result
    assert result["exit_status"] == 0, (result, log)
    assert result["mounted_after_exit"] is False, result
    assert result["holder_after"] == "ENOTCONN", result
    assert "unmounted" in log, log
    assert not is_mounted(config["mnt"])  # never was, out here: the mount was the namespace's


def test_a_user_who_cannot_open_dev_fuse_gets_fusermount3s_reason_and_no_mount(
        workdir, namespace_tools):
    """/dev/fuse 0600 (as in this container): fusermount3 cannot open it for nobody and
    fails; ``sandboxfs mount`` exits 1 (EXIT_RUNTIME) saying why, in fusermount3's own
    words, and leaves nothing mounted and no control socket behind.  (libfuse opens
    the device itself first and, refused, says so without trying fusermount3.)"""
    config = _layout(workdir, device_mode=0o600)
    result = _run_driver(config)
    assert result["exit_status"] == 1, result
    assert "the kernel refused the mount" in result["stderr"], result
    reason = "failed to open /dev/fuse: Permission denied"
    if TRANSPORT == "kernel":
        assert f"fusermount3: {shutil.which('fusermount3')}: {reason}" in result["stderr"], result
    else:
        assert f"fuse: {reason}" in result["stderr"], result
    assert "Traceback" not in result["stderr"], result
    assert result["mounted_after_exit"] is False, result
    assert sorted(os.listdir(Path(config["mnt"]).parent)) == ["mnt", "rw"]  # no mnt.sock


# -- the driver: root in its own mount and PID namespace --------------------------------


def _drive(config: dict) -> dict:
    """Start the server as nobody, check it, stop it; the findings (or ``error``)."""
    from sandboxfs.client import Client
    from sandboxfs.fuse.child_mount import ChildMount, is_mounted as mounted

    def overran(signum, frame):
        raise TimeoutError(f"the driver overran {DRIVER_TIMEOUT} s")

    signal.signal(signal.SIGALRM, overran)
    signal.alarm(DRIVER_TIMEOUT)
    result: dict = {}
    mnt = Path(config["mnt"])
    dev = Path(config["dev"])
    # A node for the FUSE device (0666 as on a Debian host), over /dev/fuse in this
    # namespace only.  Made on a tmpfs of our own: the temp dir's might be mounted nodev.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "sbxtest-dev", str(dev)],
                   check=True, timeout=30)
    os.mknod(dev / "fuse", 0o600 | stat.S_IFCHR, os.makedev(10, 229))
    os.chmod(dev / "fuse", config["device_mode"])  # mknod applies the umask
    subprocess.run(["mount", "--bind", str(dev / "fuse"), "/dev/fuse"], check=True, timeout=30)

    as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                 "env", "-i", f"PATH={PATH}", f"PYTHONPATH={config['pythonpath']}",
                 "PYTHONDONTWRITEBYTECODE=1", "HOME=/nonexistent", "LC_ALL=C.UTF-8"]
    control = mnt.with_name(mnt.name + ".sock")  # the default: beside the mount point

    def stats() -> dict:
        with Client(control) as client:  # root may always use the socket
            return client.stats()

    def answers() -> bool:
        try:
            stats()
            return True
        except OSError:
            return False

    command = [*as_nobody, config["python"], "-m", "sandboxfs", "mount",
               "--transport", config["transport"],
               "--mapping", f"ro:/d:{config['ro']}", "--mapping", f"rw:/w:{config['rw']}",
               str(mnt)]
    if config["device_mode"] & 0o006 != 0o006:  # nobody cannot open the device: refused
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=30)
            result.update(exit_status=done.returncode, stderr=done.stderr,
                          mounted_after_exit=mounted(mnt))
        except Exception:
            result["error"] = traceback.format_exc()
        finally:
            if mounted(mnt):
                subprocess.run(["umount", "-l", str(mnt)], timeout=30)
        signal.alarm(0)
        return result
    server = ChildMount(command, mnt, config["log"], ready=answers)
    holder = None
    try:
        server.start()
        with open(f"/proc/{server.pid}/status") as f:
            status = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
        result["uid"] = [int(n) for n in status["Uid"].split()]
        result["cap_eff"] = int(status["CapEff"], 16)
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if fields[4] == str(mnt):
                    after = fields[fields.index("-") + 1:]
                    result["fstype"], result["super_options"] = after[0], after[2]
        checks = subprocess.run([*as_nobody, config["python"], "-I", "-c", CHECKS, str(mnt)],
                                capture_output=True, text=True, timeout=30)
        if checks.returncode != 0:
            raise RuntimeError(f"the checks failed: {checks.stderr}")
        result["checks"] = json.loads(checks.stdout)
        result["fuse_ops"] = stats()["fuse_ops"]

        holder = subprocess.Popen([*as_nobody, config["python"], "-I", "-c", HOLDER,
                                   str(mnt / "d" / "held.txt")],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        result["holder_opened"] = holder.stdout.readline().strip()
        server.signal(signal.SIGTERM)
        result["exit_status"] = server.wait(timeout=30)
        result["mounted_after_exit"] = mounted(mnt)
        holder.stdin.write("\n")
        holder.stdin.flush()
        result["holder_after"] = holder.stdout.readline().strip()
        holder.wait(timeout=30)
    except Exception:
        result["error"] = traceback.format_exc()
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
            holder.wait()
        try:
            server.stop()  # whatever is left: SIGTERM, fusermount3 -u -z, SIGKILL
        except Exception:
            result.setdefault("error", traceback.format_exc())
    signal.alarm(0)
    return result


if __name__ == "__main__":
    if os.getpid() != 1:
        sys.exit("run by test_unprivileged.py, as init of a PID namespace of its own")
    print(json.dumps(_drive(json.loads(sys.argv[1]))), flush=True)
