"""Access reports through a real mount: what the kernel asks for is what the report says.

The mount runs with ``--ttl 600``: a first access that the kernel answered
from its caches instead of asking us would be missing from the report.
Covered: lookups, opens, reads, listings, stats after a listing (readdirplus
entries must not hide the first lookup), missing names, declared inputs never
used, writes/creates/removes/renames in a read-write mapping, names that are
not UTF-8, the report while live and at destroy, and an untracked sandbox
beside a tracked one.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandboxfs.control.client import Client
from sandboxfs.errors import InvalidRequestError, NotFoundError

from .harness import Mount


@pytest.fixture
def mount(sandboxfs_mount) -> Mount:
    return sandboxfs_mount(["--ttl", "600"])


@pytest.fixture
def client(mount: Mount):
    with Client(str(mount.mount_point) + ".sock") as client:
        yield client


@pytest.fixture
def host(workdir: Path) -> Path:
    host = workdir / "host"
    (host / "inc").mkdir(parents=True)
    (host / "inc" / "used.h").write_text("#define USED 1\n")
    (host / "inc" / "probed.h").write_text("#define PROBED 1\n")
    (host / "inc" / "never.h").write_text("#define NEVER 1\n")
    (host / "inc" / "empty.h").write_text("")
    (host / "lib").mkdir()
    (host / "lib" / "a.txt").write_text("a")
    (host / "lib" / "b.txt").write_text("b")
    (host / "out").mkdir()
    return host


def tracked(client: Client, host: Path, name: str = "t") -> Path:
    mappings = [(f"/inc/{n}", str(host / "inc" / n), False)
                for n in ("used.h", "probed.h", "never.h", "empty.h")]
    mappings += [("/lib", str(host / "lib"), False), ("/out", str(host / "out"), True)]
    return Path(client.create_sandbox(name, mappings, track_access=True)["path"])


def test_reads_probes_and_misses_are_reported(client, host):
    root = tracked(client, host)
    assert (root / "inc" / "used.h").read_text() == "#define USED 1\n"
    assert (root / "inc" / "empty.h").read_text() == ""  # no READ reaches us: open counts
    os.stat(root / "inc" / "probed.h")
    for missing in ("inc/missing.h", "inc/missing.h", "nodir/x.h"):
        assert not (root / missing).exists()
    report = client.access_report("t")
    assert report["accessed"]["inc/used.h"] == ["lookup", "open", "read"]
    assert report["accessed"]["inc/empty.h"] == ["lookup", "open"]
    assert report["accessed"]["inc/probed.h"] == ["lookup"]
    assert "inc/never.h" not in report["accessed"]
    assert report["missing"] == ["inc/missing.h", "nodir"]  # the kernel stops at nodir
    assert report["unused"] == ["inc/never.h", "inc/probed.h", "lib", "out"]


def test_a_stat_after_a_listing_is_still_seen(client, host):
    root = tracked(client, host)
    assert sorted(os.listdir(root / "lib")) == ["a.txt", "b.txt"]  # readdirplus entries
    os.stat(root / "lib" / "a.txt")
    accessed = client.access_report("t")["accessed"]
    assert accessed["lib"] == ["lookup", "list"]
    assert accessed["lib/a.txt"] == ["lookup"]
    assert "lib/b.txt" not in accessed


def test_writes_creates_removes_and_renames_in_a_writable_mapping(client, host):
    root = tracked(client, host)
    (root / "out" / "tmp.o").write_bytes(b"obj")
    os.rename(root / "out" / "tmp.o", root / "out" / "final.o")
    with open(root / "out" / "final.o", "ab") as f:
        f.write(b"more")
    (root / "out" / "scratch").mkdir()
    (root / "out" / "scratch").rmdir()
    report = client.access_report("t")
    assert report["accessed"]["out/tmp.o"] == ["write", "create", "remove"]
    assert report["accessed"]["out/final.o"] == ["write", "create"]  # the kernel moved its entry
    assert report["accessed"]["out/scratch"] == ["create", "remove"]
    assert "out/final.o" not in report["missing"]  # looked up before it was created
    assert (host / "out" / "final.o").read_bytes() == b"objmore"


def test_the_report_comes_with_destroy_and_then_the_sandbox_is_gone(client, host):
    root = tracked(client, host)
    (root / "inc" / "used.h").read_bytes()
    result = client.destroy_sandbox("t")
    assert result["access_report"]["accessed"]["inc/used.h"] == ["lookup", "open", "read"]
    with pytest.raises(NotFoundError):
        client.access_report("t")
    # The same name again, tracked afresh: nothing carries over.
    root = tracked(client, host)
    assert client.access_report("t")["accessed"] == {}
    (root / "lib" / "a.txt").read_bytes()
    assert list(client.destroy_sandbox("t")["access_report"]["accessed"]) == ["lib", "lib/a.txt"]


def test_names_that_are_not_utf8_are_bytes_in_the_report(client, workdir):
    host = workdir / "odd"
    host.mkdir()
    odd = os.fsencode(host) + b"/caf\xe9"
    with open(odd, "wb") as f:
        f.write(b"x")
    root = client.create_sandbox("t", [(b"/d", os.fsencode(host), False)], track_access=True)["path"]
    with open(os.fsencode(root) + b"/d/caf\xe9", "rb") as f:
        assert f.read() == b"x"
    assert client.access_report("t")["accessed"][b"d/caf\xe9"] == ["lookup", "open", "read"]


def test_an_untracked_sandbox_beside_a_tracked_one(client, host):
    tracked(client, host, "t")
    plain = Path(client.create_sandbox("u", [("/lib", str(host / "lib"), False)])["path"])
    assert (plain / "lib" / "a.txt").read_text() == "a"
    with pytest.raises(InvalidRequestError, match="without track_access"):
        client.access_report("u")
    assert client.access_report("t")["accessed"] == {}  # u's accesses went nowhere
    assert "access_report" not in client.destroy_sandbox("u")
