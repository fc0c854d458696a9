"""Groups named by their content, through a real mount and its control socket.

* A caller's own path objects, changed between two creates, give the second
  sandbox the new file: the client decides "same group" by what a list
  encodes to, never by the caller's objects.
* Fresh lists with equal content are named by digest once the server holds
  their groups; a group the server no longer holds (evicted by a small
  ``--group-memory-mb``, or a restarted server) is answered ``missing_group``,
  changes nothing, and the client sends it again in full without the caller
  noticing.
* A version-1 client (no digests) keeps working.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import msgpack
import pytest

from sandboxfs.client import Client, prepare
from sandboxfs.control.framing import encode

from .harness import Mount
from .test_control import control_path, decode_all

FILES = 1500


class CallerPath(os.PathLike):
    """A path object of the caller's own, which it changes after using it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __fspath__(self) -> str:
        return str(self.path)


@pytest.fixture
def toolchain(workdir: Path) -> Path:
    root = workdir / "tc"
    for i in range(FILES):
        directory = root / f"d{i // 20}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"h{i}.h").write_bytes(f"header {i}\n".encode())
    (workdir / "elsewhere").mkdir()
    (workdir / "elsewhere" / "replacement.h").write_bytes(b"the new file\n")
    return root


def toolchain_mappings(root: Path) -> list[tuple[str, str]]:
    """A fresh list, as a build tool builds one per action."""
    return [(f"/tc/d{i // 20}/h{i}.h", str(root / f"d{i // 20}" / f"h{i}.h")) for i in range(FILES)]


def read(mount: Mount, sandbox: str, path: str) -> bytes:
    return (mount.mount_point / sandbox / path.lstrip("/")).read_bytes()


def test_a_changed_path_object_gives_the_new_file(sandboxfs_mount, toolchain, workdir):
    mount = sandboxfs_mount(["--ttl", "600"])
    hosts = [CallerPath(toolchain / f"d{i // 20}" / f"h{i}.h") for i in range(FILES)]
    mappings = [(f"/tc/d{i // 20}/h{i}.h", host) for i, host in enumerate(hosts)]
    with Client(control_path(mount)) as client:
        client.create_sandbox("first", mappings)
        assert read(mount, "first", "/tc/d5/h100.h") == b"header 100\n"
        hosts[100].path = workdir / "elsewhere" / "replacement.h"  # the caller's object changed
        client.create_sandbox("second", mappings)
        assert read(mount, "second", "/tc/d5/h100.h") == b"the new file\n"
        assert read(mount, "first", "/tc/d5/h100.h") == b"header 100\n"
        assert read(mount, "second", "/tc/d5/h101.h") == b"header 101\n"


def test_fresh_lists_are_named_by_digest_once_the_server_holds_them(sandboxfs_mount, toolchain):
    mount = sandboxfs_mount()
    with Client(control_path(mount)) as client:
        first = client.create_sandbox("a", toolchain_mappings(toolchain))
        (digest,) = first["groups"]
        stats = client.stats()
        assert (stats["groups"], stats["group_hits"]) == (1, 0)
        second = client.create_sandbox("b", toolchain_mappings(toolchain))
        assert second["groups"] == [digest]
        assert client.stats()["group_hits"] == 1  # the second request named it by digest
        assert read(mount, "b", "/tc/d74/h1499.h") == b"header 1499\n"


def test_an_evicted_group_is_sent_again_in_full_transparently(sandboxfs_mount, toolchain):
    # 1 MiB holds a few groups of 1,500 names (~200 kB each), not eight.
    mount = sandboxfs_mount(["--group-memory-mb", "1"])
    with Client(control_path(mount)) as client:
        client.create_sandbox("a", toolchain_mappings(toolchain))
        for k in range(7):  # other roots, other digests: the first group is evicted
            client.create_sandbox(f"o{k}", [(f"/o{k}{inner}", host)
                                            for inner, host in toolchain_mappings(toolchain)])
        # The client names the first group by digest; the server no longer holds it,
        # answers missing_group, and the client sends the request again in full.
        client.create_sandbox("c", toolchain_mappings(toolchain))
        stats = client.stats()
        assert stats["group_misses"] >= 1
        assert stats["errors"].get("missing_group") == 1
        assert stats["sandboxes"] == 9
        assert read(mount, "c", "/tc/d0/h7.h") == b"header 7\n"


def test_prepared_mappings_survive_a_restarted_server(sandboxfs_mount, toolchain, workdir):
    """A PreparedMappings names its groups by digest even on a new connection."""
    prepared = prepare(toolchain_mappings(toolchain))
    mount = sandboxfs_mount()
    with Client(control_path(mount)) as client:
        client.create_sandbox("a", [prepared, ("/out", str(workdir), True)])
    assert prepared.held  # some server held its group
    mount.stop()
    mount.start()  # a new server: it holds nothing
    with Client(control_path(mount)) as client:
        result = client.create_sandbox("a", [prepared, ("/out", str(workdir), True)])
        assert result["mappings"] == FILES + 1
        assert client.stats()["errors"].get("missing_group") == 1  # named first, then resent
    assert read(mount, "a", "/tc/d3/h60.h") == b"header 60\n"


def raw_call(mount: Mount, *messages: dict) -> list[dict]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(control_path(mount)))
        sock.sendall(b"".join(encode(m) for m in messages))
        answers: list = []
        data = b""
        while len(answers) < len(messages):
            chunk = sock.recv(1 << 20)
            assert chunk, f"the server closed after {answers}"
            data += chunk
            answers = decode_all(data)
    return answers


def test_an_unknown_digest_fails_the_whole_request_and_changes_nothing(sandboxfs_mount, toolchain):
    mount = sandboxfs_mount()
    unknown = [bytes([n]) * 32 for n in (1, 2)]
    (answer,) = raw_call(mount, {"id": 1, "op": "create_sandbox", "name": "s", "mappings": [
        ["/x", str(toolchain / "d0" / "h0.h")], {"group": unknown[0]}, {"group": unknown[1]}]})
    error = answer["error"]
    assert error["code"] == "missing_group"
    assert error["details"]["digests"] == unknown
    assert "create_sandbox 's'" in error["message"] and "send them in full" in error["message"]
    assert not (mount.mount_point / "s").exists()
    (listing,) = raw_call(mount, {"id": 2, "op": "list"})
    assert listing["result"]["sandboxes"] == []


def test_a_malformed_digest_reference_is_an_invalid_mapping(sandboxfs_mount):
    mount = sandboxfs_mount()
    (answer,) = raw_call(mount, {"id": 1, "op": "create_sandbox", "name": "s",
                                 "mappings": [{"group": b"short"}]})
    assert answer["error"]["code"] == "invalid_mapping"
    assert answer["error"]["details"]["index"] == 0


def test_a_version_1_client_keeps_working(sandboxfs_mount, toolchain):
    mount = sandboxfs_mount()
    names = b"\0".join(f"d{i // 20}/h{i}.h".encode() for i in range(100))
    ping, created, again = raw_call(
        mount,
        {"id": 1, "op": "ping", "version": 1},
        {"id": 2, "op": "create_sandbox", "name": "v1", "prefixes": {1: "/tc", 2: str(toolchain)},
         "mappings": [[[1, ""], [2, ""], False, names]]},
        {"id": 3, "op": "create_sandbox", "name": "v1b", "mappings": [
            ["/tc", str(toolchain), False, [f"d0/h{i}.h" for i in range(20)]]]},
    )
    assert ping["result"]["protocol"] == 1 and ping["result"]["server_protocol"] == 2
    assert created["result"]["mappings"] == 100 and again["result"]["mappings"] == 20
    assert read(mount, "v1", "/tc/d4/h99.h") == b"header 99\n"
    assert msgpack.unpackb(msgpack.packb(created["result"]))["name"] == "v1"
