"""What only our kernel transport does, on real mounts: no libfuse, passthrough, the device's end.

The rest of the FUSE suite runs on whichever transport ``SANDBOXFS_TRANSPORT``
names; these tests start their mounts with ``--transport kernel`` themselves.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from sandboxfs.client import Client
from sandboxfs.fs.operations import Operations
from sandboxfs.fuse.kernel import device
from sandboxfs.fuse.kernel import transport as kernel_transport
from sandboxfs.fuse.kernel.transport import KernelTransport
from sandboxfs.tree.mapping import Mapping
from sandboxfs.tree.sandboxes import Tree

from .harness import is_mounted

pytestmark = pytest.mark.fuse
ROOT = os.geteuid() == 0


def _stats(point: Path) -> dict:
    with Client(point.with_name(point.name + ".sock")) as client:
        return client.stats()


def _host(workdir: Path) -> Path:
    host = workdir / "host"
    (host / "src").mkdir(parents=True)
    (host / "out").mkdir()
    (host / "src" / "big.bin").write_bytes(os.urandom(4 << 20))
    return host


def test_a_kernel_transport_server_loads_neither_pyfuse3_nor_libfuse(sandboxfs_mount, workdir):
    host = _host(workdir)
    mount = sandboxfs_mount(["--transport", "kernel", "--mapping", f"ro:/src:{host / 'src'}"])
    assert (mount.mount_point / "src" / "big.bin").stat().st_size == 4 << 20
    maps = Path(f"/proc/{mount.pid}/maps").read_text()
    assert "libfuse" not in maps and "pyfuse3" not in maps


@pytest.mark.skipif(not ROOT, reason="passthrough needs CAP_SYS_ADMIN")
def test_reads_of_read_only_files_pass_through_to_the_host_file(sandboxfs_mount, workdir):
    host = _host(workdir)
    mount = sandboxfs_mount(["--transport", "kernel", "--mapping", f"ro:/src:{host / 'src'}",
                             "--mapping", f"rw:/out:{host / 'out'}"])
    data = (host / "src" / "big.bin").read_bytes()
    assert (mount.mount_point / "src" / "big.bin").read_bytes() == data
    (mount.mount_point / "out" / "w.bin").write_bytes(data[:100_000])
    assert (mount.mount_point / "out" / "w.bin").read_bytes() == data[:100_000]
    counts = _stats(mount.mount_point)["fuse_ops"]
    # The 4 MiB read never reached us; the read-write file's read did.
    assert counts.get("read", 0) <= 2, counts
    assert counts["write"] >= 1


def test_without_passthrough_reads_are_served_by_us(sandboxfs_mount, workdir):
    host = _host(workdir)
    mount = sandboxfs_mount(["--transport", "kernel", "--no-passthrough",
                             "--mapping", f"ro:/src:{host / 'src'}"])
    assert (mount.mount_point / "src" / "big.bin").read_bytes() == (
        host / "src" / "big.bin").read_bytes()
    assert _stats(mount.mount_point)["fuse_ops"]["read"] >= 4


def test_lazy_unmount_while_readers_run_ends_the_server_cleanly(sandboxfs_mount, workdir):
    host = _host(workdir)
    mount = sandboxfs_mount(["--transport", "kernel", "--no-passthrough",
                             "--mapping", f"ro:/src:{host / 'src'}"])
    reader = subprocess.Popen(
        [sys.executable, "-c",
         "import sys\nwhile True:\n    open(sys.argv[1], 'rb').read()\n",
         str(mount.mount_point / "src" / "big.bin")],
        stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)
        subprocess.run(["umount", "-l", str(mount.mount_point)], check=True)
        assert mount.wait(timeout=10) == 0  # ENODEV from the device: a normal end
        assert reader.wait(timeout=10) != 0
        assert "Error" in reader.stderr.read()
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    assert not is_mounted(mount.mount_point)


@pytest.mark.skipif(not ROOT, reason="mounts in this process with mount(2)")
def test_the_loop_ends_when_its_device_fd_is_closed(workdir):
    """The session's fd closed under the loop (as at shutdown): serve returns, never hangs."""
    host = _host(workdir)
    point = workdir / "mnt"
    point.mkdir()
    transport = KernelTransport(Operations(Tree([Mapping.of("/src", os.fsencode(host / "src"))])))
    transport.mount(str(point), {"fsname=sandboxfs", "subtype=sandboxfs"})
    ended = []
    try:
        async def serve():
            await transport.serve()
            ended.append(True)

        async def main():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve)
                listing = await trio.to_thread.run_sync(os.listdir, point / "src")
                assert listing == ["big.bin"]
                transport.close_device()
                with trio.fail_after(5):
                    while not ended:
                        await trio.sleep(0.01)

        trio.run(main)
    finally:
        transport.close_device()
        device.unmount(str(point))
    assert ended
    assert not is_mounted(point)


def _mount_type(point: Path) -> str | None:
    """The type of the topmost mount at ``point`` (/proc/self/mounts), or None."""
    found = None
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if fields[1] == str(point):
                found = fields[2]
    return found


@pytest.mark.skipif(not ROOT, reason="mounts a tmpfs")
def test_a_mount_made_where_ours_was_is_left_alone(sandboxfs_mount, workdir):
    """Unmounted from outside while the server was stopped, then something else mounted
    there: the server ends normally and does not detach the newcomer."""
    host = _host(workdir)
    mount = sandboxfs_mount(["--transport", "kernel", "--mapping", f"ro:/src:{host / 'src'}"])
    point = mount.mount_point
    os.kill(mount.pid, signal.SIGSTOP)
    other = False
    try:
        subprocess.run(["umount", "-l", str(point)], check=True)
        subprocess.run(["mount", "-t", "tmpfs", "newcomer", str(point)], check=True)
        other = True
        (point / "marker").write_text("mine")
        os.kill(mount.pid, signal.SIGCONT)
        assert mount.wait(timeout=10) == 0
        assert _mount_type(point) == "tmpfs"
        assert (point / "marker").read_text() == "mine"
    finally:
        if mount.alive():
            os.kill(mount.pid, signal.SIGCONT)
        if other:
            subprocess.run(["umount", str(point)], check=True)
    assert not is_mounted(point)


@pytest.mark.parametrize("spin_us, polls", [("500", True), ("0", False)])
def test_polling_before_sleeping_serves_the_same_answers(sandboxfs_mount, workdir, spin_us, polls):
    host = workdir / "host"
    host.mkdir()
    for i in range(200):
        (host / f"f{i}").write_bytes(b"x" * i)
    mount = sandboxfs_mount(["--transport", "kernel", "--ttl", "0", "--spin-us", spin_us,
                             "--mapping", f"ro:/d:{host}"])
    for _ in range(10):  # --ttl 0: every stat reaches the server
        assert [os.stat(mount.mount_point / "d" / f"f{i}").st_size for i in range(200)] \
            == list(range(200))
    counts = _stats(mount.mount_point)["fuse_ops"]
    if polls:  # back-to-back stats: some polls found the next request waiting
        assert counts["spin_hits"] > 0
    else:
        assert counts["spin_hits"] == counts["spin_misses"] == 0


# -- passthrough backing ids kept for reopens, up to MAX_KEPT_BACKING ----------------------

# Read-only files this big are opened through passthrough, shared or not (fs.shared_files).
BACKED_SIZE = 1 << 20
_IN_CLOSE_NOWRITE = 0x10
_INOTIFY_EVENT = struct.Struct("iIII")


class _Closes:
    """The names of files in ``directory`` whose last open reference went away
    (inotify IN_CLOSE_NOWRITE): a file the kernel holds as a passthrough backing
    file is closed only when its backing id is."""

    def __init__(self, directory: Path) -> None:
        self._libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        watch = self._libc.inotify_add_watch(self.fd, os.fsencode(directory), _IN_CLOSE_NOWRITE)
        assert watch >= 0, os.strerror(ctypes.get_errno())

    def take(self) -> list[str]:
        """The closes queued so far (not those of the directory itself), in order."""
        names = []
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return names
            at = 0
            while at < len(data):
                _wd, _mask, _cookie, size = _INOTIFY_EVENT.unpack_from(data, at)
                name = data[at + 16:at + 16 + size].rstrip(b"\0")
                if name:
                    names.append(name.decode())
                at += 16 + size

    def close(self) -> None:
        os.close(self.fd)


@pytest.mark.skipif(not ROOT, reason="passthrough needs CAP_SYS_ADMIN; mounts with mount(2)")
def test_idle_backing_ids_beyond_the_bound_are_closed_at_release(workdir, monkeypatch):
    """An idle backing id pins its host file in the kernel, so at most MAX_KEPT_BACKING
    are kept for reopens: with the bound at 3, six files read one after another keep
    the first three ids (a reopen reuses them: no ioctl) and the other three are closed
    at their release (a reopen of one registers it again and closes it again).

    The server runs in this process so the bound can be lowered; the ioctls are
    counted by wrapping the real ones.  The kernel's side is seen with inotify: when
    the session ends, the host files of the kept ids are closed, and only those --
    the others were let go at their release already.
    """
    bound = 3
    monkeypatch.setattr(kernel_transport, "MAX_KEPT_BACKING", bound)
    host = workdir / "host"
    host.mkdir()
    names = [f"f{i}" for i in range(2 * bound)]
    for name in names:  # big enough to pass through (fs.shared_files keeps small files' pages)
        (host / name).write_bytes((f"content of {name}\n".encode() * BACKED_SIZE)[:BACKED_SIZE])
    opened: list[str] = []       # host file name of each BACKING_OPEN, in order
    closed: list[str] = []       # host file name of each BACKING_CLOSE, in order
    file_of: dict[int, str] = {}  # backing id -> host file name (ids may be reused)
    real_open, real_close = device.backing_open, device.backing_close

    def backing_open(dev_fd: int, host_fd: int) -> int:
        backing_id = real_open(dev_fd, host_fd)
        file_of[backing_id] = os.path.basename(os.readlink(f"/proc/self/fd/{host_fd}"))
        opened.append(file_of[backing_id])
        return backing_id

    def backing_close(dev_fd: int, backing_id: int) -> None:
        real_close(dev_fd, backing_id)
        closed.append(file_of[backing_id])

    monkeypatch.setattr(device, "backing_open", backing_open)
    monkeypatch.setattr(device, "backing_close", backing_close)

    point = workdir / "mnt"
    point.mkdir()
    transport = KernelTransport(Operations(Tree([Mapping.of("/d", os.fsencode(host))])))
    closes = _Closes(host)
    try:
        transport.mount(str(point), {"fsname=sandboxfs", "subtype=sandboxfs"})

        async def read_one(name: str) -> None:
            """Open, read and close ``name`` through the mount; return once we saw the release."""
            releases = transport.request_counts["release"]
            data = await trio.to_thread.run_sync((point / "d" / name).read_bytes)
            assert data == (host / name).read_bytes()
            with trio.fail_after(5):  # the kernel sends RELEASE after close() returned
                while transport.request_counts["release"] == releases:
                    await trio.sleep(0.005)

        def kept() -> list[str]:
            return sorted(file_of[held[0]] for held in transport._backing.values())

        async def main():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(transport.serve)
                with trio.fail_after(30):
                    for name in names:
                        await read_one(name)
                    assert transport.passthrough
                    assert opened == names, (  # each registered once
                        "not opened through passthrough: below the size for it?")
                    assert closed == names[bound:]  # released beyond the bound: closed at once
                    assert kept() == names[:bound]
                    for name in names[:bound]:  # kept: reused, no ioctl either way
                        await read_one(name)
                    assert opened == names and closed == names[bound:]
                    await read_one(names[-1])  # not kept: registered again, closed again
                    assert opened == names + [names[-1]]
                    assert closed == names[bound:] + [names[-1]]
                    assert kept() == names[:bound]
                    # Every read went to the host file in the kernel: none reached us.
                    assert transport.request_counts["read"] == 0, transport.request_counts
                    closes.take()  # closes of the opens so far: not what is asked next
                    transport.close_device()

        trio.run(main)
    finally:
        transport.close_device()
        device.unmount(str(point))
        try:
            deadline = time.monotonic() + 5
            seen: list[str] = []
            while time.monotonic() < deadline and len(seen) < bound:
                time.sleep(0.05)  # a file's last reference may be dropped by a kernel worker
                seen += closes.take()
            time.sleep(0.2)
            seen += closes.take()
        finally:
            closes.close()
    assert not is_mounted(point)
    assert sorted(seen) == names[:bound]  # the session's end let go of the kept ids' files


@pytest.mark.skipif(not ROOT, reason="passthrough needs CAP_SYS_ADMIN")
def test_an_open_beside_passthrough_opens_and_one_beside_served_opens_both_work(
        sandboxfs_mount, workdir):
    """The kernel fails (EIO) an open of an inode that has passthrough opens unless it
    passes through the same backing file, and a passthrough open of an inode that has
    opens we serve.  Both happen when a sandbox is tracked (nothing passes through while
    one is: its reads must reach us) and a file of an untracked one is opened again."""
    host = _host(workdir)
    data = (host / "src" / "big.bin").read_bytes()
    mount = sandboxfs_mount(["--transport", "kernel"])
    src = [("/src", str(host / "src"), False)]
    with Client(str(mount.mount_point) + ".sock") as client:
        big = Path(client.create_sandbox("plain", src)["path"]) / "src" / "big.bin"
        with open(big, "rb") as passing:  # passes through
            assert passing.read(10) == data[:10]
            client.create_sandbox("t1", src, track_access=True)
            with open(big, "rb") as beside:  # would be served: a sandbox is tracked
                assert beside.read() == data
            client.destroy_sandbox("t1")
        client.create_sandbox("t2", src, track_access=True)
        with open(big, "rb") as served:  # served by us
            assert served.read(10) == data[:10]
            client.destroy_sandbox("t2")
            with open(big, "rb") as beside:  # would pass through: nothing is tracked
                assert beside.read() == data
        assert _stats(mount.mount_point)["fuse_ops"].get("read", 0) > 0  # some were ours
