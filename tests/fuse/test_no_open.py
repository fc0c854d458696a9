"""``--no-open`` (FUSE no_open) on real mounts of our kernel transport.

The first OPEN is answered ENOSYS; from then on the kernel opens files
without asking and reads and writes by inode.  What must hold: reads return
the host's bytes, and a reopen of a file whose pages the kernel holds costs
no request (after one GETATTR: a READ makes the kernel drop the atime); writes and O_TRUNC reach the host file exactly (no stale tail);
a write to a read-only mapping fails (at write(), or at open() when the
open truncates) and leaves the host file alone; a file replaced on the host
shows as the new file once its entry expires, and one unlinked while open
still answers fstat and reads.  pyfuse3 refuses the flag.
These tests start their mounts with ``--transport kernel`` themselves, in
both runs of the suite.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sandboxfs.client import Client

from .harness import is_mounted

pytestmark = pytest.mark.fuse


def _counts(point: Path) -> dict:
    with Client(point.with_name(point.name + ".sock")) as client:
        return client.stats()["fuse_ops"]


def _host(workdir: Path) -> Path:
    host = workdir / "host"
    (host / "src").mkdir(parents=True)
    (host / "out").mkdir()
    for i in range(50):
        (host / "src" / f"h{i}.h").write_bytes(f"header {i}\n".encode() * 40)
    return host


def test_reads_come_by_inode_and_a_reopen_costs_no_request(sandboxfs_mount, workdir):
    host = _host(workdir)
    mount = sandboxfs_mount(["--transport", "kernel", "--no-open",
                             "--mapping", f"ro:/src:{host / 'src'}"])
    src = mount.mount_point / "src"
    for i in range(50):
        assert (src / f"h{i}.h").read_bytes() == (host / "src" / f"h{i}.h").read_bytes()
    first = _counts(mount.mount_point)
    assert first.get("open", 0) <= 1, first  # the one answered ENOSYS
    assert first.get("read", 0) >= 50, first
    for i in range(50):  # a READ made the kernel drop the atime: one GETATTR each, once
        (src / f"h{i}.h").read_bytes()
    first = _counts(mount.mount_point)
    for _ in range(3):
        for i in range(50):
            assert (src / f"h{i}.h").read_bytes() == (host / "src" / f"h{i}.h").read_bytes()
    again = _counts(mount.mount_point)
    for op in ("open", "read", "lookup", "release", "getattr"):
        assert again.get(op, 0) == first.get(op, 0), (op, first, again)


def test_writes_and_truncating_opens_reach_the_host_file_exactly(sandboxfs_mount, workdir):
    host = _host(workdir)
    mount = sandboxfs_mount(["--transport", "kernel", "--no-open",
                             "--mapping", f"rw:/out:{host / 'out'}"])
    out = mount.mount_point / "out"
    (host / "out" / "f.txt").write_bytes(b"A" * 10_000)
    assert (out / "f.txt").read_bytes() == b"A" * 10_000
    with open(out / "f.txt", "r+b") as f:  # an existing file: written by inode
        f.seek(100)
        f.write(b"middle")
    assert (host / "out" / "f.txt").read_bytes() == b"A" * 100 + b"middle" + b"A" * 9_894
    with open(out / "f.txt", "wb") as f:  # O_TRUNC: the kernel must truncate first
        f.write(b"short")
    assert (host / "out" / "f.txt").read_bytes() == b"short"
    assert (out / "f.txt").read_bytes() == b"short"
    with open(out / "f.txt", "ab") as f:
        f.write(b"+tail")
    assert (host / "out" / "f.txt").read_bytes() == b"short+tail"
    (out / "new.txt").write_bytes(b"created")  # CREATE still answers a handle of its own
    assert (host / "out" / "new.txt").read_bytes() == b"created"
    os.truncate(out / "new.txt", 3)
    assert (host / "out" / "new.txt").read_bytes() == b"cre"


def test_a_write_to_a_read_only_mapping_fails_and_leaves_the_host_file_alone(sandboxfs_mount,
                                                                             workdir):
    host = _host(workdir)
    original = (host / "src" / "h1.h").read_bytes()
    mount = sandboxfs_mount(["--transport", "kernel", "--no-open",
                             "--mapping", f"ro:/src:{host / 'src'}"])
    target = mount.mount_point / "src" / "h1.h"
    fd = os.open(target, os.O_WRONLY)  # the kernel no longer asks us at open()
    try:
        with pytest.raises(OSError) as info:
            os.write(fd, b"overwrite")
        assert info.value.errno in (errno.EROFS, errno.EPERM), info.value
    finally:
        os.close(fd)
    with pytest.raises(OSError) as info:
        os.open(target, os.O_WRONLY | os.O_TRUNC)  # truncation asks us: refused at open()
    assert info.value.errno in (errno.EROFS, errno.EPERM), info.value
    assert (host / "src" / "h1.h").read_bytes() == original
    assert target.read_bytes() == original


def test_a_host_file_replaced_behind_the_mount_is_seen_once_its_entry_expires(
        sandboxfs_mount, workdir):
    """A rename over a file on the host: once the kernel's entry expires (``--ttl``) the
    name leads to a new inode, so the new file's size and bytes show and writes reach it."""
    host = _host(workdir)
    mount = sandboxfs_mount(["--transport", "kernel", "--no-open", "--ttl", "0.5",
                             "--mapping", f"ro:/src:{host / 'src'}",
                             "--mapping", f"rw:/out:{host / 'out'}"])
    for side, name in (("src", "h3.h"), ("out", "w.txt")):
        (host / side / name).write_bytes(b"old content\n")
        seen = mount.mount_point / side / name
        assert seen.read_bytes() == b"old content\n"
        replacement = host / side / f".{name}.new"
        replacement.write_bytes(b"the new file, longer than the old one\n")
        os.rename(replacement, host / side / name)
        time.sleep(1.2)  # past --ttl: the kernel looks the name up again
        assert seen.stat().st_size == len(b"the new file, longer than the old one\n")
        assert seen.read_bytes() == b"the new file, longer than the old one\n"
    with open(mount.mount_point / "out" / "w.txt", "r+b") as f:
        f.write(b"THE")
    assert (host / "out" / "w.txt").read_bytes() == b"THE new file, longer than the old one\n"


def test_a_file_unlinked_while_open_still_answers_fstat_and_reads(sandboxfs_mount, workdir):
    host = _host(workdir)
    mount = sandboxfs_mount(["--transport", "kernel", "--no-open",
                             "--mapping", f"rw:/out:{host / 'out'}"])
    path = mount.mount_point / "out" / "gone.txt"
    path.write_bytes(b"still here\n")
    with open(path, "rb") as f:
        assert f.read(5) == b"still"
        os.unlink(path)
        assert not (host / "out" / "gone.txt").exists()
        assert os.fstat(f.fileno()).st_size == len(b"still here\n")
        assert f.read() == b" here\n"


def test_pyfuse3_refuses_no_open_with_a_clear_error(workdir):
    point = workdir / "mnt"
    point.mkdir()
    done = subprocess.run([sys.executable, "-m", "sandboxfs", "mount", "--transport", "pyfuse3",
                           "--no-open", "--no-control", str(point)],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode != 0
    assert "--no-open needs the kernel transport" in done.stderr, done.stderr
    assert not is_mounted(point)


def test_a_worker_with_no_open_fetches_on_read_and_writes_its_outputs(tmp_path):
    """``sandboxfs worker --no-open``: a CAS file's content is fetched at its first READ
    (there is no OPEN to fetch it at), and outputs written by inode come back."""
    from bench.remote_client import RemoteClient
    from tests.engine import BuildGrid, EngineUnavailable, PostgreSQL

    from .worker_harness import WorkerProcess

    script = b"#!/bin/sh\ncat lib/a.txt lib/b.txt\nmkdir -p out\ncat lib/a.txt > out/copy.txt\n"
    inputs = {"lib/a.txt": os.urandom(5000), "lib/b.txt": b"bee\n", "lib/unread.txt": b"x",
              "tool/run.sh": (script, True)}
    try:
        with PostgreSQL() as pg, BuildGrid(pg, tmp_path / "engine") as grid, \
                WorkerProcess(grid.endpoint, tmp_path / "state", name="no-open",
                              extra=("--transport", "kernel", "--no-open")):
            client = RemoteClient(grid.endpoint)
            try:
                response = client.execute(client.action(
                    ["./tool/run.sh"], inputs, output_files=("out/copy.txt",),
                    salt=os.urandom(8)))
                assert response.status.code == 0, response.status.message
                assert response.result.exit_code == 0, client.read(
                    response.result.stderr_digest)
                assert client.read(response.result.stdout_digest) == (
                    inputs["lib/a.txt"] + inputs["lib/b.txt"])
                (out,) = response.result.output_files
                assert client.read(out.digest) == inputs["lib/a.txt"]
            finally:
                client.close()
    except EngineUnavailable as exc:
        pytest.fail(f"BuildGrid could not be started: {exc}")
