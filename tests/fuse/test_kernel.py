"""What only our kernel transport does, on real mounts: no libfuse, passthrough, the device's end.

The rest of the FUSE suite runs on whichever transport ``SANDBOXFS_TRANSPORT``
names; these tests start their mounts with ``--transport kernel`` themselves.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from sandboxfs.client import Client
from sandboxfs.fs.operations import Operations
from sandboxfs.fuse.kernel import device
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


@pytest.mark.parametrize("spin_us, polls", [("50", True), ("0", False)])
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
