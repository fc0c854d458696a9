"""Running a command with a sandbox as its whole root filesystem (Linux namespaces).

``spawn`` forks a *keeper* that enters new mount, PID, IPC, UTS and (unless
the network is kept) network namespaces -- plus a user namespace when not
root -- and forks the namespace's PID 1.  PID 1 makes the sandbox directory
the root (bind mount, /proc, a minimal /dev, a private tmpfs on /tmp,
``pivot_root``), brings loopback up, and forks the command as its child.
When the command exits, PID 1 exits with its status and the kernel kills
everything else in the PID namespace; the keeper passes the status on.

The sandbox must already contain (empty) directories ``proc``, ``dev`` and
``tmp`` to mount on: ``run`` maps them.  Or, with ``binds`` (``sandboxfs
worker --confine``), ``root`` is any empty directory: a tmpfs of the
namespace's own goes on it, and the binds are all it shows (the worker's
sandbox and the host's system directories, read-only but the sandbox).
Mounts happen in the new mount namespace only; the host and the sandboxfs
server see none of them.

Why a keeper: PID 1 of a new PID namespace must be a child of the process
that unshared, and the caller (``sandboxfs run``) must stay in the host's
namespaces to talk to its control socket and unmount at the end.  The keeper
dies with SIGKILL to end everything: PID 1 has PR_SET_PDEATHSIG(SIGKILL).

Setup errors travel to the caller over a pipe, as one line of text, and the
keeper exits with ``SETUP_FAILED``.  This module runs in forked children:
no threads, no trio, and every path ends in ``os._exit``.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import select
import signal
import socket
import struct
from typing import Mapping, Sequence

from sandboxfs.errors import EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND, EXIT_RUN_FAILED

SETUP_FAILED = EXIT_RUN_FAILED

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(os.uname().machine)

# A minimal /dev: these host device nodes are bind-mounted in.
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0",
             "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"}
SANDBOX_DIRS = ("proc", "dev", "tmp")
# The host's toolchain (``sandboxfs run --map-system``, ``sandboxfs worker --confine``).
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_SECRETS = frozenset({"shadow", "shadow-", "gshadow", "gshadow-", "sudoers", "sudoers.d",
                         "ssh", "ssl", "security", "subuid", "subgid", "machine-id"})

_libc = ctypes.CDLL(None, use_errno=True)


class SetupError(Exception):
    """A namespace or mount step failed; the message says which and why."""


def _check(result: int, what: str) -> None:
    if result != 0:
        number = ctypes.get_errno()
        raise SetupError(f"{what}: {errno.errorcode.get(number, number)} ({os.strerror(number)})")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {fstype or source} on {target}",
    )


def _unshare(flags: int, user: bool) -> None:
    if _libc.unshare(ctypes.c_int(flags)) == 0:
        return
    number = ctypes.get_errno()
    name = errno.errorcode.get(number, number)
    if user:
        raise SetupError(
            f"cannot create a user namespace ({name}: {os.strerror(number)}); --confine as "
            "non-root needs unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, "
            "user.max_user_namespaces > 0, no AppArmor restriction) -- or run as root"
        )
    raise SetupError(f"unshare: {name} ({os.strerror(number)})")


def _map_user(uid: int, gid: int) -> None:
    """Inside a new user namespace: be root there, standing for ``uid``/``gid`` outside."""
    for path, text in (("/proc/self/setgroups", "deny"),
                       ("/proc/self/uid_map", f"0 {uid} 1"),
                       ("/proc/self/gid_map", f"0 {gid} 1")):
        try:
            with open(path, "w") as f:
                f.write(text)
        except OSError as exc:
            raise SetupError(f"writing {path}: {exc.strerror}") from None


def _loopback_up() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, 0x8913, request))[1]  # SIOCGIFFLAGS
        fcntl.ioctl(sock, 0x8914, struct.pack("16sH14x", b"lo", flags | 1))  # SIOCSIFFLAGS, IFF_UP
    except OSError as exc:
        raise SetupError(f"bringing loopback up: {exc.strerror}") from None
    finally:
        sock.close()


Bind = tuple[str, str, bool]  # host path, path inside the new root, writable


def system_paths() -> list[str]:
    """The host's system directories and ``/etc``'s entries but its secrets, as they exist."""
    paths = [path for path in SYSTEM_DIRS if os.path.lexists(path)]
    paths += [f"/etc/{name}" for name in sorted(os.listdir("/etc")) if name not in ETC_SECRETS]
    return paths


def _bind(source: str, target: str, writable: bool) -> None:
    """``source`` at ``target`` (made in the new root's tmpfs); a symlink is copied as one."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.islink(source):  # /lib -> usr/lib on a merged-/usr system
        os.symlink(os.readlink(source), target)
        return
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
    _mount(source, target, None, MS_BIND | MS_REC)
    if not writable:
        # A remount may not drop what the source mount has (a user namespace refuses it).
        kept = os.statvfs(source).f_flag & (MS_NOSUID | MS_NODEV | MS_NOEXEC)
        _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | kept)


def _make_root(root: str, binds: Sequence[Bind] = ()) -> None:
    """Mount /proc, /dev and /tmp inside ``root`` and make it ``/``; with ``binds``, ``root``
    is first an empty tmpfs, then the binds go in (after /tmp: one may lie under it)."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount leaks to the host
    if binds:
        _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
        for name in SANDBOX_DIRS:
            os.mkdir(f"{root}/{name}", 0o755)
    else:
        _mount(root, root, None, MS_BIND | MS_REC)  # pivot_root needs a mount point
    _mount("proc", f"{root}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _mount("tmpfs", f"{root}/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k")
    for name in DEVICES:
        if os.path.exists(f"/dev/{name}"):
            os.close(os.open(f"{root}/dev/{name}", os.O_CREAT | os.O_WRONLY, 0o666))
            _mount(f"/dev/{name}", f"{root}/dev/{name}", None, MS_BIND)
    for name, target in DEV_LINKS.items():
        os.symlink(target, f"{root}/dev/{name}")
    _mount("tmpfs", f"{root}/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    for source, target, writable in binds:
        _bind(source, root + target, writable)
    if _SYS_PIVOT_ROOT is None:
        raise SetupError(f"pivot_root: unknown syscall number on {os.uname().machine}")
    os.chdir(root)
    _check(_libc.syscall(_SYS_PIVOT_ROOT, b".", b"."), f"pivot_root to {root}")
    _check(_libc.umount2(b".", MNT_DETACH), "detaching the old root")
    os.chdir("/")


def _pid1(root: str, cwd: str, argv: Sequence[str], env: Mapping[str, str], network: bool,
          binds: Sequence[Bind], keeper_alive: int, report_fd: int) -> int:
    """PID 1 of the namespace: set up the root, run the command, pass its status on."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    # getppid() is 0 in a new PID namespace, so ask the pipe whose write end
    # only the keeper holds: EOF means it died before prctl took effect.
    if select.select([keeper_alive], [], [], 0)[0]:
        return SETUP_FAILED
    os.close(keeper_alive)
    _make_root(root, binds)
    if not network:
        _loopback_up()
    try:
        os.chdir(cwd)
    except OSError as exc:
        raise SetupError(f"--cwd {cwd}: {exc.strerror} inside the sandbox") from None
    command = os.fork()
    if command == 0:
        os.close(report_fd)
        _exec(argv, env)
    os.close(report_fd)
    _forward_signals(command)
    while True:  # reap whatever is orphaned to us until the command itself ends
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return SETUP_FAILED
        except InterruptedError:
            continue
        if pid == command:
            return exit_code(status)


def _exec(argv: Sequence[str], env: Mapping[str, str]) -> None:
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, signal.SIG_DFL)
    try:
        os.execvpe(argv[0], list(argv), dict(env))
    except OSError as exc:
        os.write(2, f"sandboxfs run: {argv[0]}: {exc.strerror}\n".encode())
        os._exit(EXIT_NOT_FOUND if isinstance(exc, FileNotFoundError) else EXIT_CANNOT_EXECUTE)


def _forward_signals(pid: int) -> None:
    def forward(number, _frame):
        try:
            os.kill(pid, number)
        except ProcessLookupError:
            pass

    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, forward)


def exit_code(status: int) -> int:
    """A wait status as a shell would report it: the exit code, or 128 + the signal."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _keeper(root: str, cwd: str, argv: Sequence[str], env: Mapping[str, str], network: bool,
            binds: Sequence[Bind], report_fd: int) -> int:
    uid, gid = os.getuid(), os.getgid()
    user = os.geteuid() != 0
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    if not network:
        flags |= CLONE_NEWNET
    if user:
        flags |= CLONE_NEWUSER
    _unshare(flags, user)
    if user:
        _map_user(uid, gid)
    alive_read, alive_write = os.pipe2(os.O_CLOEXEC)
    pid1 = os.fork()
    if pid1 == 0:
        os.close(alive_write)
        _run_child(_pid1, report_fd, root, cwd, argv, env, network, binds, alive_read,
                   report_fd)
    os.close(alive_read)
    os.close(report_fd)
    _forward_signals(pid1)
    while True:
        try:
            _pid, status = os.waitpid(pid1, 0)
        except InterruptedError:
            continue
        return exit_code(status)


def _run_child(body, report_fd: int, *args) -> None:
    """Run ``body(*args)`` in a forked child and exit with its result; never returns."""
    code = SETUP_FAILED
    try:
        code = body(*args)
    except SetupError as exc:
        os.write(report_fd, (str(exc) + "\n").encode(errors="backslashreplace"))
    except BaseException as exc:  # noqa: BLE001 - a forked child must never return
        os.write(report_fd, f"internal error: {exc!r}\n".encode(errors="backslashreplace"))
    finally:
        os._exit(code)


def spawn(root: str, cwd: str, argv: Sequence[str], env: Mapping[str, str],
          network: bool = False, binds: Sequence[Bind] = ()) -> tuple[int, int]:
    """Start ``argv`` confined to ``root``; returns (keeper pid, read end of the error pipe).
    With ``binds``, ``root`` is an empty directory and the binds are all the new root shows.

    Read the pipe to EOF: empty means the command started (or failed to exec,
    which it reports itself with status 126/127); otherwise it holds why
    setting up failed.  Wait for the keeper for the command's exit code;
    SIGKILL the keeper to end everything in the namespace.
    """
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _run_child(_keeper, write_fd, root, cwd, argv, env, network, binds, write_fd)
    os.close(write_fd)
    return pid, read_fd
