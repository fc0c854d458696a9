"""One kernel inode per read-only host file across sandboxes (``fs.shared_files``).

What must hold: a regular file reached through read-only mappings of any
sandbox (a directory mapping or a mapping of the file itself) shows one
inode number; a read-write mapping, a directory, a tracked sandbox and
``--no-shared-inodes`` get inodes of their own; destroying the sandbox that
first looked the file up leaves the others reading it; and an open never
reads a file that replaced the shared one under *another* sandbox's path.
These run on both transports (the sharing lives in the operations).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from sandboxfs.control.client import Client

from .harness import TRANSPORT

pytestmark = pytest.mark.fuse


def _client(mount) -> Client:
    return Client(str(mount.mount_point) + ".sock")


def _sandbox(client: Client, name: str, host_dir, writable: bool = False, **kwargs) -> Path:
    """A sandbox mapping ``host_dir`` at /inc; its path."""
    return Path(client.create_sandbox(name, [("/inc", str(host_dir), writable)],
                                      **kwargs)["path"])


@pytest.fixture
def host(workdir: Path) -> Path:
    host = workdir / "host"
    (host / "inc").mkdir(parents=True)
    (host / "inc" / "a.h").write_text("int a;\n")
    (host / "inc" / "b.h").write_text("int b;\n")
    return host


@pytest.fixture
def pair(sandboxfs_mount, host):
    """A default mount's client and two sandboxes mapping host/inc read-only at /inc."""
    with _client(sandboxfs_mount()) as client:
        yield client, _sandbox(client, "one", host / "inc"), _sandbox(client, "two", host / "inc")


def test_a_read_only_file_has_one_inode_in_every_sandbox(pair, host):
    client, one, two = pair
    inc = str(host / "inc")
    alone = Path(client.create_sandbox("alone", [("/x/a.h", inc + "/a.h", False)])["path"])
    rw = _sandbox(client, "rw", inc, True)
    shared = os.stat(one / "inc" / "a.h").st_ino
    assert os.stat(two / "inc" / "a.h").st_ino == shared
    assert os.stat(alone / "x" / "a.h").st_ino == shared  # a file mapping joins it too
    assert os.stat(rw / "inc" / "a.h").st_ino != shared  # read-write: its own
    assert os.stat(two / "inc" / "b.h").st_ino != shared  # another file
    assert os.stat(one / "inc").st_ino != os.stat(two / "inc").st_ino  # never a directory
    assert (two / "inc" / "a.h").read_text() == (alone / "x" / "a.h").read_text() == "int a;\n"
    (rw / "inc" / "a.h").write_text("int a2;\n")  # through its own inode, to the host
    assert (host / "inc" / "a.h").read_text() == "int a2;\n"


def test_no_shared_inodes_gives_each_sandbox_its_own(sandboxfs_mount, host):
    mount = sandboxfs_mount(["--no-shared-inodes"])
    inc = str(host / "inc")
    with _client(mount) as client:
        one = _sandbox(client, "one", inc)
        two = _sandbox(client, "two", inc)
        assert os.stat(one / "inc" / "a.h").st_ino != os.stat(two / "inc" / "a.h").st_ino


def test_a_tracked_sandbox_sees_its_own_reads(sandboxfs_mount, host):
    mount = sandboxfs_mount(["--ttl", "600"])
    inc = str(host / "inc")
    with _client(mount) as client:
        plain = _sandbox(client, "plain", inc)
        assert (plain / "inc" / "a.h").read_text() == "int a;\n"
        tracked = _sandbox(client, "t", inc, track_access=True)
        assert (tracked / "inc" / "a.h").read_text() == "int a;\n"
        assert os.stat(tracked / "inc" / "a.h").st_ino != os.stat(plain / "inc" / "a.h").st_ino
        report = client.destroy_sandbox("t")["access_report"]
    assert "inc/a.h" in str(report), report


def test_destroying_the_first_sandbox_leaves_the_file_to_the_others(pair):
    client, first, second = pair
    ino = os.stat(first / "inc" / "a.h").st_ino  # first's node becomes the shared one
    with open(second / "inc" / "a.h", "rb") as held:
        assert os.fstat(held.fileno()).st_ino == ino
        client.destroy_sandbox("one")
        assert not (first / "inc").exists()
        assert held.read() == b"int a;\n"
    for _ in range(3):  # reopened, after the sandbox that found it is gone
        assert (second / "inc" / "a.h").read_bytes() == b"int a;\n"
    assert os.stat(second / "inc" / "a.h").st_ino == ino


def test_an_open_never_reads_a_file_that_replaced_it_under_another_path(sandboxfs_mount,
                                                                        workdir):
    """Two host paths, hard links of one file; one sandbox maps each.  The file
    is replaced (renamed over) under the second path after both looked it up:
    the first sandbox's path still names the old file, so its open must read
    it, not the newcomer reached through the other sandbox's path.  Once the
    entry expires (``--ttl``), the second sandbox sees its new file."""
    left, right = workdir / "left", workdir / "right"
    left.mkdir()
    right.mkdir()
    (left / "f").write_text("old\n")
    os.link(left / "f", right / "f")
    mount = sandboxfs_mount(["--ttl", "1"])
    with _client(mount) as client:
        a = _sandbox(client, "a", left)
        b = _sandbox(client, "b", right)
        ino = os.stat(a / "inc" / "f").st_ino
        assert os.stat(b / "inc" / "f").st_ino == ino  # b is now the latest place
        (right / "new").write_text("new\n")
        os.rename(right / "new", right / "f")
        assert (a / "inc" / "f").read_text() == "old\n"
        time.sleep(1.5)  # the kernel's entries expire
        assert (b / "inc" / "f").read_text() == "new\n"
        assert os.stat(b / "inc" / "f").st_ino != ino
        assert (a / "inc" / "f").read_text() == "old\n"


def test_a_listed_file_shares_its_inode_too(pair):
    """A listing's READDIRPLUS entries give the kernel inodes before any lookup."""
    _client, one, two = pair
    ino = os.stat(one / "inc" / "a.h").st_ino
    assert sorted(os.listdir(two / "inc")) == ["a.h", "b.h"]
    assert os.stat(two / "inc" / "a.h").st_ino == ino


@pytest.mark.skipif(TRANSPORT != "kernel" or os.geteuid() != 0,
                    reason="passthrough: our transport, as root")
def test_a_small_file_passes_through_until_a_second_sandbox_shares_it(pair):
    """Seen by one sandbox, a small file passes through (no READ reaches us); once a
    second shares its inode, its pages are kept: one READ, then reopens read none."""
    client, one, two = pair

    def reads_for(path: Path) -> int:
        before = client.stats()["fuse_ops"].get("read", 0)
        assert path.read_bytes() == b"int a;\n"
        return client.stats()["fuse_ops"].get("read", 0) - before

    assert reads_for(one / "inc" / "a.h") == 0  # one place: passthrough
    assert reads_for(two / "inc" / "a.h") == 1  # shared now: served, and its pages kept
    assert reads_for(two / "inc" / "a.h") == 0
    assert reads_for(one / "inc" / "a.h") == 0
