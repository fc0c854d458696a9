"""Getting a /dev/fuse session: mount, unmount, and the device's passthrough ioctls.

As root we open /dev/fuse and call mount(2) with ``fd=N`` ourselves; as
anyone else ``fusermount3`` (setuid) mounts and hands the descriptor back
over a socket pair, as libfuse does (``_FUSE_COMMFD``).  Unmounting detaches
lazily (``umount2(MNT_DETACH)`` or ``fusermount3 -u -z``), so open files
never make a shutdown hang: they fail with ENOTCONN instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import re
import select
import shutil
import socket
import stat
import subprocess

from sandboxfs.fuse.kernel import wire

MS_NOSUID = 2
MS_NODEV = 4
MNT_DETACH = 2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(result: int, what: str) -> int:
    if result < 0:
        number = ctypes.get_errno()
        raise OSError(number, f"{what}: {os.strerror(number)}")
    return result


def _kernel_options(options: set[str]) -> tuple[str, list[str]]:
    """Split mount options into (fsname/subtype) and the rest, as mount(2) wants them."""
    fsname, subtype, rest = "sandboxfs", "sandboxfs", []
    for option in sorted(options):
        if option.startswith("fsname="):
            fsname = option.split("=", 1)[1]
        elif option.startswith("subtype="):
            subtype = option.split("=", 1)[1]
        elif option == "allow_root":
            rest.append("allow_other")  # the kernel knows only allow_other
        else:
            rest.append(option)
    return f"{fsname}\0{subtype}", rest


def mount(mount_point: str, options: set[str]) -> int:
    """Mount a FUSE filesystem at ``mount_point``; returns the session's /dev/fuse fd."""
    if os.geteuid() == 0:
        return _mount_as_root(mount_point, options)
    return _mount_with_fusermount(mount_point, options)


def _mount_as_root(mount_point: str, options: set[str]) -> int:
    names, rest = _kernel_options(options)
    fsname, subtype = names.split("\0")
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    try:
        root_mode = stat.S_IFMT(os.stat(mount_point).st_mode)
        data = ",".join([f"fd={fd}", f"rootmode={root_mode:o}", f"user_id={os.getuid()}",
                         f"group_id={os.getgid()}", *rest])
        _check(_libc.mount(fsname.encode(), os.fsencode(mount_point),
                           f"fuse.{subtype}".encode(), MS_NOSUID | MS_NODEV, data.encode()),
               f"mount {mount_point}")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _mount_with_fusermount(mount_point: str, options: set[str]) -> int:
    tool = shutil.which("fusermount3")
    if tool is None:
        raise OSError(errno.ENOENT, "fusermount3 is not installed (apt-get install fuse3)")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        result = subprocess.run(
            [tool, "-o", ",".join(sorted(options)), "--", mount_point],
            env={**os.environ, "_FUSE_COMMFD": str(theirs.fileno())},
            pass_fds=(theirs.fileno(),), capture_output=True, text=True)
        theirs.close()
        if result.returncode != 0:
            raise OSError(errno.EPERM, f"fusermount3: {result.stderr.strip()}")
        _msg, fds, _flags, _addr = socket.recv_fds(ours, 16, 1)
        if not fds:
            raise OSError(errno.EIO, "fusermount3 did not pass the /dev/fuse descriptor")
        os.set_inheritable(fds[0], False)
        return fds[0]
    finally:
        ours.close()
        theirs.close()


def session_ended(fd: int) -> bool:
    """Whether the kernel ended the session of ``fd`` (POLLERR: unmounted or aborted)."""
    poller = select.poll()
    poller.register(fd, 0)
    return any(events & (select.POLLERR | select.POLLNVAL) for _fd, events in poller.poll(0))


def mounted_device(real_path: bytes) -> str | None:
    """``mount_id major:minor`` of the topmost mount at ``mount_point``
    (/proc/self/mountinfo), or None.

    Taken right after mounting, it names our mount: at shutdown, a session
    the kernel already ended (an unmount from outside) may have left the path
    to someone else's mount, and a mount made on top of ours is not ours
    either; neither may be detached.  ``real_path`` is resolved beforehand:
    resolving it once our mount is there would ask our own, not yet serving,
    filesystem.
    """
    found = None
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            for line in f:
                fields = line.split(b" ", 5)
                if len(fields) > 4 and _unescape(fields[4]) == real_path:
                    found = f"{fields[0].decode()} {fields[2].decode()}"  # later lines are on top
    except OSError:
        return None
    return found


def _unescape(field: bytes) -> bytes:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040)."""
    if b"\\" not in field:
        return field
    return re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), field)


def unmount(mount_point: str) -> None:
    """Detach the mount now, even while files in it are open."""
    if os.geteuid() == 0:
        if _libc.umount2(os.fsencode(mount_point), MNT_DETACH) == 0:
            return
        number = ctypes.get_errno()
        if number in (errno.EINVAL, errno.ENOENT):
            return  # no longer mounted (unmounted from outside)
    tool = shutil.which("fusermount3") or "fusermount3"
    subprocess.run([tool, "-u", "-z", "--", mount_point], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False)


def set_nonblocking(fd: int) -> None:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)


def backing_open(dev_fd: int, host_fd: int) -> int:
    """Register ``host_fd`` as a passthrough backing file; returns its id (OSError if refused)."""
    arg = bytearray(wire.BACKING_MAP.pack(host_fd, 0, 0))
    # A mutable buffer with mutate_flag: ioctl returns the call's result (the id).
    return fcntl.ioctl(dev_fd, wire.DEV_IOC_BACKING_OPEN, arg, True)


def backing_close(dev_fd: int, backing_id: int) -> None:
    fcntl.ioctl(dev_fd, wire.DEV_IOC_BACKING_CLOSE, bytearray(backing_id.to_bytes(4, "little")),
                True)
