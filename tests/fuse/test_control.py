"""The control socket of a real mount: sandboxes come and go while the kernel caches for 600 s.

Every mount here runs with ``--ttl 600``, so anything the kernel cached and
sandboxfs failed to invalidate would stay visible for the whole test.
Covered here:

* create/destroy: files show the host's bytes and modes, read-only refuses
  writes (EPERM), read-write writes reach the host; a destroyed name is gone
  at once (also for a process that looked inside before), and a recreated one
  shows its new content at once; a negatively cached name appears on create;
* map/unmap on a live sandbox: new paths appear and removed paths (and the
  scaffolds they leave empty) vanish at once, while entries of untouched
  paths stay cached (the FUSE lookup count does not grow); their errors
  leave the sandbox as it was;
* a 20,000-mapping sandbox in one request;
* four clients creating and destroying sandboxes while another process reads
  a third sandbox;
* every error code through the real socket (exists, not_found,
  invalid_mapping, invalid_request, too_large, invalid_framing,
  permission_denied);
* the socket file: mode 0600, removed at exit, SO_PEERCRED checks and
  ``--control-allow-uid``, a stale file replaced, a live one refused;
* the client subcommands of the CLI (human and ``--json`` output,
  ``--from`` JSON/msgpack files, errors).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import pytest

from sandboxfs.control.client import Client
from sandboxfs.errors import (
    InvalidRequestError,
    MappingError,
    NotFoundError,
    ProtocolError,
    SandboxExistsError,
    TooLargeError,
)

from .conftest import SYSTEM_PYTHON, run_as
from .harness import Mount, MountFailed, is_mounted

TTL = ["--ttl", "600"]


# -- helpers -------------------------------------------------------------------------------


def control_path(mount: Mount) -> Path:
    """The default control socket: MOUNT_POINT.sock beside the mount point."""
    return mount.mount_point.with_name(mount.mount_point.name + ".sock")


def make_files(root: Path, files: dict[str, bytes], mode: int = 0o644) -> Path:
    """Create ``files`` (relative path -> content) below ``root``; returns ``root``."""
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(mode)
    root.mkdir(parents=True, exist_ok=True)
    return root


def stat_errno(path: Path | str) -> int | None:
    """None if ``path`` resolves, else the errno of the failed lookup."""
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno
    return None


def lookups(client: Client) -> int:
    return client.stats()["fuse_ops"].get("lookup", 0)


def recv_until_eof(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset counts as the close)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def decode_all(data: bytes) -> list:
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(data)
    return list(unpacker)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sandboxfs", *args], capture_output=True, text=True, timeout=60,
    )


@pytest.fixture
def mount(sandboxfs_mount) -> Mount:
    return sandboxfs_mount(TTL)


@pytest.fixture
def client(mount: Mount) -> Client:
    with Client(control_path(mount)) as client:
        yield client


@pytest.fixture
def host(workdir: Path) -> Path:
    """A host tree: ``ro/`` (a header and a tool, read-only content) and ``out/`` (writable)."""
    make_files(workdir / "host" / "ro", {"include/a.h": b"int a;\n"}, mode=0o640)
    make_files(workdir / "host" / "ro", {"bin/tool": b"#!/bin/sh\necho tool\n"}, mode=0o755)
    (workdir / "host" / "out").mkdir()
    return workdir / "host"


def sandbox_mappings(host: Path) -> list[tuple]:
    return [
        ("/src", host / "ro"),
        ("/tool", host / "ro" / "bin" / "tool"),
        ("/out", host / "out", True),
    ]


# -- create / destroy ----------------------------------------------------------------------


def test_create_returns_the_path_and_shows_host_content_and_modes(mount, client, host):
    result = client.create_sandbox("s1", sandbox_mappings(host))

    assert {k: result[k] for k in ("name", "mappings", "path")} == {
        "name": "s1", "mappings": 3, "path": str(mount / "s1")}
    assert sorted(os.listdir(mount / "s1")) == ["out", "src", "tool"]
    assert (mount / "s1/src/include/a.h").read_bytes() == b"int a;\n"
    assert (mount / "s1/tool").read_bytes() == b"#!/bin/sh\necho tool\n"
    for inner, outer in [("src/include/a.h", "ro/include/a.h"), ("tool", "ro/bin/tool"),
                         ("src/bin", "ro/bin"), ("out", "out")]:
        assert os.stat(mount / "s1" / inner).st_mode == os.stat(host / outer).st_mode, inner
    assert stat.S_IMODE(os.stat(mount / "s1").st_mode) == 0o555  # the sandbox top: a scaffold


def test_read_only_mapping_refuses_writes_with_eperm(mount, client, host):
    client.create_sandbox("s1", sandbox_mappings(host))

    with pytest.raises(PermissionError) as write:
        open(mount / "s1/src/include/a.h", "wb")
    with pytest.raises(PermissionError) as create:
        open(mount / "s1/src/include/new.h", "wb")
    with pytest.raises(PermissionError) as unlink:
        os.unlink(mount / "s1/tool")

    assert write.value.errno == create.value.errno == unlink.value.errno == errno.EPERM
    assert (host / "ro/include/a.h").read_bytes() == b"int a;\n"
    assert sorted(os.listdir(host / "ro/include")) == ["a.h"]
    assert (host / "ro/bin/tool").exists()


def test_read_write_mapping_writes_land_on_the_host(mount, client, host):
    client.create_sandbox("s1", sandbox_mappings(host))

    (mount / "s1/out/result.o").write_bytes(b"\x7fELF object")

    assert (host / "out/result.o").read_bytes() == b"\x7fELF object"


READER_SCRIPT = """
import os, sys
paths = sys.argv[1:]
for p in paths:
    os.stat(p)
print("looked", flush=True)
sys.stdin.readline()
for p in paths:
    try:
        os.stat(p)
        print("found")
    except OSError as e:
        print(e.errno)
"""


def test_destroy_removes_the_name_at_once_even_for_a_process_that_looked_inside(
    mount, client, host,
):
    client.create_sandbox("s1", sandbox_mappings(host))
    inside = [mount / "s1/src/include/a.h", mount / "s1/tool", mount / "s1/out"]
    looker = subprocess.Popen(
        [sys.executable, "-c", READER_SCRIPT, *map(str, inside)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert looker.stdout.readline() == "looked\n"

        assert client.destroy_sandbox("s1") == {"name": "s1"}

        answers, _ = looker.communicate("go\n", timeout=30)
    finally:
        if looker.poll() is None:
            looker.kill()
            looker.wait()
    assert answers.split() == [str(errno.ENOENT)] * len(inside)
    assert stat_errno(mount / "s1") == errno.ENOENT
    assert "s1" not in os.listdir(mount.mount_point)
    assert client.list() == []


def test_recreated_sandbox_shows_its_new_content_at_once(mount, client, workdir):
    first = make_files(workdir / "first", {"config.h": b"#define V 1\n"})
    second = make_files(workdir / "second", {"config.h": b"#define VERSION 2\n"}, mode=0o600)
    client.create_sandbox("s1", [("/inc/config.h", first / "config.h")])
    assert (mount / "s1/inc/config.h").read_bytes() == b"#define V 1\n"
    client.destroy_sandbox("s1")

    client.create_sandbox("s1", [("/inc/config.h", second / "config.h")])

    assert (mount / "s1/inc/config.h").read_bytes() == b"#define VERSION 2\n"
    st = os.stat(mount / "s1/inc/config.h")
    assert (st.st_size, stat.S_IMODE(st.st_mode)) == (len(b"#define VERSION 2\n"), 0o600)


def test_create_makes_a_negatively_cached_name_visible_at_once(mount, client, host):
    assert stat_errno(mount / "s1") == errno.ENOENT  # the kernel now caches "no s1" for 600 s

    client.create_sandbox("s1", sandbox_mappings(host))

    assert stat_errno(mount / "s1") is None
    assert (mount / "s1/src/include/a.h").read_bytes() == b"int a;\n"


# -- map / unmap ---------------------------------------------------------------------------


@pytest.fixture
def live(client, workdir) -> Path:
    """Sandbox ``s`` with /keep/file and /gone/file mapped; returns the host dir of the files."""
    files = make_files(workdir / "files", {
        "keep": b"keep\n", "gone": b"gone\n", "new": b"new\n", "other": b"other\n",
        "deep": b"deep\n",
    })
    client.create_sandbox("s", [("/keep/file", files / "keep"), ("/gone/file", files / "gone")])
    return files


def test_map_shows_a_path_that_was_just_looked_up_as_missing(mount, client, live):
    assert stat_errno(mount / "s/new") == errno.ENOENT
    assert stat_errno(mount / "s/newdir") == errno.ENOENT

    client.map("s", [("/new", live / "new"), ("/newdir/file", live / "new")])

    assert (mount / "s/new").read_bytes() == b"new\n"
    assert (mount / "s/newdir/file").read_bytes() == b"new\n"


def test_unmap_hides_a_path_at_once(mount, client, live):
    assert (mount / "s/gone/file").read_bytes() == b"gone\n"

    assert client.unmap("s", ["/gone/file"]) == {"name": "s", "unmapped": 1}

    assert stat_errno(mount / "s/gone/file") == errno.ENOENT
    assert (live / "gone").read_bytes() == b"gone\n"  # the host is untouched


def test_unmap_also_hides_the_scaffolds_it_leaves_empty(mount, client, live):
    client.map("s", [("/deep/er/file", live / "deep")])
    assert (mount / "s/deep/er/file").read_bytes() == b"deep\n"

    client.unmap("s", ["/deep/er/file"])

    assert "deep" not in os.listdir(mount / "s")
    assert stat_errno(mount / "s/deep/er/file") == errno.ENOENT
    assert stat_errno(mount / "s/deep/er") == errno.ENOENT
    assert stat_errno(mount / "s/deep") == errno.ENOENT


def test_map_and_unmap_elsewhere_keep_cached_entries_warm(mount, client, live):
    os.stat(mount / "s/keep/file")
    before = lookups(client)

    client.map("s", [("/other", live / "other"), ("/keep2/file", live / "other")])
    client.unmap("s", ["/other", "/gone/file"])
    os.stat(mount / "s/keep/file")

    assert lookups(client) == before


def test_unmap_of_a_path_that_is_not_mapped_is_not_found(mount, client, live):
    for path in ["/nothing", "/keep"]:  # never mapped; a scaffold of other mappings
        with pytest.raises(NotFoundError, match="not mapped"):
            client.unmap("s", [path])
    with pytest.raises(NotFoundError):  # all or nothing: /gone/file stays
        client.unmap("s", ["/gone/file", "/nothing"])

    assert (mount / "s/gone/file").read_bytes() == b"gone\n"
    assert client.list() == [{"name": "s", "mappings": 2}]


def test_map_onto_a_mapped_path_is_refused_and_changes_nothing(mount, client, live):
    with pytest.raises(MappingError) as refused:
        client.map("s", [("/new", live / "new"), ("/keep/file", live / "other")])

    assert refused.value.code == "invalid_mapping"
    assert "/keep/file" in refused.value.message
    assert (mount / "s/keep/file").read_bytes() == b"keep\n"
    assert stat_errno(mount / "s/new") == errno.ENOENT  # first looked up only now
    assert sorted(os.listdir(mount / "s")) == ["gone", "keep"]
    assert client.list() == [{"name": "s", "mappings": 2}]


# -- scale and concurrency -----------------------------------------------------------------


def test_large_sandbox_of_20000_mappings_in_one_request(mount, client, workdir):
    dirs, per_dir = 1000, 20
    tree = workdir / "big"
    mappings = []
    for d in range(dirs):
        (tree / f"d{d:04}").mkdir(parents=True)
        for f in range(per_dir):
            path = tree / f"d{d:04}" / f"f{f:02}.h"
            path.write_bytes(f"{d}/{f}\n".encode())
            mappings.append((f"/inc/d{d:04}/f{f:02}.h", path))

    result = client.create_sandbox("big", mappings)

    assert result["mappings"] == dirs * per_dir
    assert client.stats()["mappings"] == dirs * per_dir
    assert len(os.listdir(mount / "big/inc")) == dirs
    assert sorted(os.listdir(mount / "big/inc/d0500")) == [f"f{f:02}.h" for f in range(per_dir)]
    for d, f in [(0, 0), (1, 19), (499, 7), (777, 13), (999, 19)]:
        assert (mount / f"big/inc/d{d:04}/f{f:02}.h").read_bytes() == f"{d}/{f}\n".encode()

    client.destroy_sandbox("big")

    assert stat_errno(mount / "big") == errno.ENOENT
    assert client.stats()["mappings"] == 0


def test_a_subtree_group_shows_every_level_as_sent(mount, client, workdir):
    """The client sends these as one group of relative paths (plus one lone
    renamed mapping); the server splits it by directory, including a directory
    that comes back later and a mapped directory with a file mapped below it."""
    host = workdir / "tc"
    files = ["top.h", "inc/a.h", "inc/sys/b.h", "lib/libc.a", "inc/c.h", "share/x/y/z.txt"]
    for rel in files:
        (host / rel).parent.mkdir(parents=True, exist_ok=True)
        (host / rel).write_bytes(rel.encode())
    (host / "share/x/other").write_bytes(b"unmapped sibling")
    mappings = [(f"/tc/{rel}", str(host / rel)) for rel in files]
    mappings[4:4] = [("/tc/share/x", str(host / "share/x")), ("/bin/cc", "/usr/bin/env")]

    client.create_sandbox("sub", mappings)

    top = mount / "sub"
    assert sorted(os.listdir(top / "tc")) == ["inc", "lib", "share", "top.h"]
    assert sorted(os.listdir(top / "tc/inc")) == ["a.h", "c.h", "sys"]
    for rel in files:
        assert (top / "tc" / rel).read_bytes() == rel.encode()
    # /tc/share/x is a mapped directory: its unmapped host entries show too,
    # next to the scaffold "y" that leads to the mapping below it.
    assert sorted(os.listdir(top / "tc/share/x")) == ["other", "y"]
    assert (top / "tc/share/x/other").read_bytes() == b"unmapped sibling"
    assert (top / "bin/cc").read_bytes() == Path("/usr/bin/env").read_bytes()
    assert client.list() == [{"name": "sub", "mappings": len(mappings)}]
    client.destroy_sandbox("sub")


def test_a_repeated_large_request_is_checked_against_the_host_again(mount, client, workdir):
    """Client and server both remember a large run; neither may skip what the host says now."""
    host = workdir / "rep"
    mappings = []
    for i in range(1500):
        path = host / f"d{i // 20:03}" / f"f{i:04}.h"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"%d\n" % i)
        mappings.append((f"/inc/d{i // 20:03}/f{i:04}.h", str(path)))
    past = time.time() - 60  # old enough for the server to cache the listings
    for directory in host.iterdir():
        os.utime(directory, (past, past))
    for name in ("first", "second"):
        client.create_sandbox(name, mappings)
        assert (mount / name / "inc/d074/f1499.h").read_bytes() == b"1499\n"
        client.destroy_sandbox(name)

    (host / "d037" / "f0749.h").unlink()
    with pytest.raises(MappingError) as info:
        client.create_sandbox("third", mappings)
    assert info.value.details["index"] == 749
    assert info.value.details["path"] == "/inc/d037/f0749.h"

    (host / "d037" / "f0749.h").write_bytes(b"new\n")
    client.create_sandbox("fourth", mappings)
    assert (mount / "fourth/inc/d037/f0749.h").read_bytes() == b"new\n"
    client.destroy_sandbox("fourth")


READ_LOOP_SCRIPT = """
import json, os, sys, time
stop, expected = sys.argv[1], json.loads(sys.argv[2])
reads = errors = 0
deadline = time.monotonic() + 120
while not os.path.exists(stop) and time.monotonic() < deadline:
    for path, content in expected.items():
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            errors += 1
            print("error", path, e, file=sys.stderr)
            continue
        reads += 1
        if data != content.encode():
            errors += 1
            print("mismatch", path, data[:40], file=sys.stderr)
print(json.dumps({"reads": reads, "errors": errors}))
"""


def test_clients_create_and_destroy_while_another_process_reads(mount, client, workdir):
    workers, cycles = 4, 30
    files = make_files(workdir / "files", {
        **{f"r{i}": f"reader file {i}\n".encode() * (i + 1) for i in range(5)},
        **{f"w{k}-{v}": f"worker {k} version {v}\n".encode() for k in range(workers) for v in (0, 1)},
    })
    client.create_sandbox("reader", [(f"/r{i}", files / f"r{i}") for i in range(5)])
    expected = {str(mount / f"reader/r{i}"): f"reader file {i}\n" * (i + 1) for i in range(5)}
    stop = workdir / "stop-reading"
    reader = subprocess.Popen(
        [sys.executable, "-c", READ_LOOP_SCRIPT, str(stop), json.dumps(expected)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    failures: list[str] = []

    def work(k: int) -> None:
        try:
            with Client(control_path(mount)) as own:
                for i in range(cycles):
                    name = f"worker{k}"
                    own.create_sandbox(name, [("/data", files / f"w{k}-{i % 2}")])
                    data = (mount / name / "data").read_bytes()
                    if data != f"worker {k} version {i % 2}\n".encode():
                        failures.append(f"{name} cycle {i}: read {data!r}")
                    own.destroy_sandbox(name)
                    if stat_errno(mount / name) != errno.ENOENT:
                        failures.append(f"{name} cycle {i}: still visible after destroy")
        except Exception as exc:  # reported below; a thread cannot fail the test itself
            failures.append(f"worker {k}: {exc!r}")

    try:
        threads = [threading.Thread(target=work, args=(k,)) for k in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in threads), "a worker hung"
    finally:
        stop.touch()
        out, err = reader.communicate(timeout=60)

    assert failures == []
    assert reader.returncode == 0, err
    counts = json.loads(out)
    assert counts["errors"] == 0, err
    assert counts["reads"] > 0
    assert client.list() == [{"name": "reader", "mappings": 5}]


# -- error codes through the socket ---------------------------------------------------------


def test_create_twice_is_exists(mount, client, host):
    client.create_sandbox("s1", sandbox_mappings(host))

    with pytest.raises(SandboxExistsError) as exists:
        client.create_sandbox("s1", [("/other", host / "out")])

    assert exists.value.code == "exists"
    assert "s1" in exists.value.message
    assert sorted(os.listdir(mount / "s1")) == ["out", "src", "tool"]


def test_destroy_of_an_unknown_sandbox_is_not_found(client):
    with pytest.raises(NotFoundError) as missing:
        client.destroy_sandbox("nope")

    assert missing.value.code == "not_found"
    assert "nope" in missing.value.message


def test_missing_underlying_path_names_the_index_path_and_errno(mount, client, host):
    with pytest.raises(MappingError) as bad:
        client.create_sandbox("s1", [
            ("/src", host / "ro"), ("/lib/libz.a", host / "no-such-file"),
        ])

    assert bad.value.code == "invalid_mapping"
    assert "mapping 1" in bad.value.message
    assert "/lib/libz.a" in bad.value.message
    assert "ENOENT" in bad.value.message
    assert bad.value.details["index"] == 1
    assert stat_errno(mount / "s1") == errno.ENOENT
    assert client.list() == []


@pytest.mark.parametrize("name", ["a/b", "..", ".", ""])
def test_bad_sandbox_name_is_invalid_request(mount, client, host, name):
    with pytest.raises(InvalidRequestError) as bad:
        client.create_sandbox(name, [("/src", host / "ro")])

    assert bad.value.code == "invalid_request"
    assert client.list() == []


def test_message_over_the_limit_is_too_large_and_closes_only_that_connection(
    sandboxfs_mount, workdir,
):
    mount = sandboxfs_mount([*TTL, "--max-message-size", "2048"])
    mappings = [(f"/inc/header_number_{i:04}.h", f"/usr/include/header_number_{i:04}.h")
                for i in range(200)]

    with Client(control_path(mount)) as client:
        with pytest.raises(TooLargeError, match="2048"):
            client.create_sandbox("big", mappings)
        with pytest.raises((ProtocolError, BrokenPipeError, ConnectionResetError)):
            client.ping()  # the server closed this connection

    with Client(control_path(mount)) as fresh:
        assert fresh.ping()["protocol"] == 2
        assert fresh.list() == []


def test_undecodable_bytes_get_invalid_framing_then_eof(mount, client):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(10)
        raw.connect(str(control_path(mount)))
        raw.sendall(b"\xc1")  # never used in msgpack

        replies = decode_all(recv_until_eof(raw))

    assert len(replies) == 1
    assert replies[0]["id"] is None
    assert replies[0]["error"]["code"] == "invalid_framing"
    assert client.ping()["protocol"] == 2  # other connections are served as before


# -- the socket file -----------------------------------------------------------------------


def test_socket_is_mode_0600_and_removed_when_the_mount_stops(mount):
    path = control_path(mount)
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600

    assert mount.stop() == 0

    assert not path.exists()


def test_no_control_opens_no_socket(sandboxfs_mount):
    mount = sandboxfs_mount([*TTL, "--no-control"])

    assert not control_path(mount).exists()
    assert os.listdir(mount.mount_point) == []


RAW_CLIENT_SCRIPT = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("connect-errno", e.errno)
    sys.exit(0)
try:
    s.sendall(bytes.fromhex(sys.argv[2]))
    s.shutdown(socket.SHUT_WR)
except OSError:
    pass  # the server may have answered and closed already
data = b""
while True:
    try:
        chunk = s.recv(65536)
    except OSError:
        break
    if not chunk:
        break
    data += chunk
print("reply", data.hex())
"""


def raw_request_as(user, path: Path, request: dict) -> list[str]:
    """Send one encoded request as ``user`` with only the stdlib; returns the output words."""
    result = run_as(
        user,
        [SYSTEM_PYTHON, "-I", "-c", RAW_CLIENT_SCRIPT, str(path),
         msgpack.packb(request, use_bin_type=True).hex()],
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_other_user_cannot_connect_to_the_0600_socket(mount, unprivileged_user):
    words = raw_request_as(unprivileged_user, control_path(mount), {"id": 1, "op": "list"})

    assert words == ["connect-errno", str(errno.EACCES)]


def test_other_user_is_refused_by_peer_credentials(mount, client, host, unprivileged_user):
    client.create_sandbox("s1", sandbox_mappings(host))
    control_path(mount).chmod(0o666)  # get past the file mode to the SO_PEERCRED check

    words = raw_request_as(unprivileged_user, control_path(mount), {"id": 1, "op": "list"})

    assert words[0] == "reply"
    replies = decode_all(bytes.fromhex(words[1] if len(words) > 1 else ""))
    assert [r["error"]["code"] for r in replies] == ["permission_denied"]
    assert str(unprivileged_user.pw_uid) in replies[0]["error"]["message"]
    assert "s1" not in json.dumps(replies, default=str)


def test_allowed_uid_may_use_the_socket(sandboxfs_mount, host, unprivileged_user):
    uid = unprivileged_user.pw_uid
    mount = sandboxfs_mount([*TTL, "--control-allow-uid", str(uid)])
    with Client(control_path(mount)) as client:
        client.create_sandbox("s1", sandbox_mappings(host))
    control_path(mount).chmod(0o666)

    words = raw_request_as(unprivileged_user, control_path(mount), {"id": 7, "op": "list"})

    assert words[0] == "reply"
    assert decode_all(bytes.fromhex(words[1])) == [
        {"id": 7, "result": {"sandboxes": [{"name": "s1", "mappings": 3}]}}
    ]


def test_stale_socket_file_is_replaced(sandboxfs_mount, workdir):
    path = workdir / "control.sock"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(path))
    leftover.close()  # the file stays, nobody listens: what a crash leaves
    assert stat.S_ISSOCK(os.lstat(path).st_mode)

    mount = sandboxfs_mount([*TTL, "--control", str(path)])

    assert "stale" in mount.log()
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    with Client(path) as client:
        assert client.ping()["protocol"] == 2


def test_live_socket_makes_a_second_mount_fail(sandboxfs_mount, workdir, host):
    first = sandboxfs_mount(TTL)
    path = control_path(first)
    with Client(path) as client:
        client.create_sandbox("s1", sandbox_mappings(host))

    with pytest.raises(MountFailed) as failed:
        sandboxfs_mount([*TTL, "--control", str(path)])

    assert "exited with 1" in str(failed.value)
    assert "another sandboxfs is listening" in str(failed.value)
    assert not is_mounted(workdir / "mnt1")
    with Client(path) as client:
        assert client.list() == [{"name": "s1", "mappings": 3}]
    assert (first / "s1/src/include/a.h").read_bytes() == b"int a;\n"


# -- the CLI client subcommands ------------------------------------------------------------


def test_cli_create_list_stats_destroy(mount, host):
    where = ["--control", str(control_path(mount))]

    created = run_cli("create", "s1", *where, "--mapping", f"ro:/src:{host / 'ro'}",
                      "--mapping", f"rw:/out:{host / 'out'}")
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip() == f"created s1 with 2 mapping(s) at {mount / 's1'}"
    assert (mount / "s1/src/include/a.h").read_bytes() == b"int a;\n"

    listed = run_cli("list", "--mount-point", str(mount.mount_point))
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == ["SANDBOX", "MAPPINGS", "s1", "2"]

    stats = run_cli("stats", *where)
    assert stats.returncode == 0, stats.stderr
    rows = dict(line.split(None, 1) for line in stats.stdout.splitlines())
    assert rows["sandboxes"] == "1"
    assert rows["mappings"] == "2"
    assert rows["requests.create_sandbox"] == "1"

    destroyed = run_cli("destroy", "s1", *where)
    assert destroyed.returncode == 0, destroyed.stderr
    assert destroyed.stdout.strip() == "destroyed s1"
    assert stat_errno(mount / "s1") == errno.ENOENT
    assert run_cli("list", *where).stdout.strip() == "no sandboxes"


def test_cli_json_output(mount, host):
    where = ["--control", str(control_path(mount)), "--json"]

    created = run_cli("create", "s1", *where, "--mapping", f"ro:/src:{host / 'ro'}")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout) == {"name": "s1", "mappings": 1, "path": str(mount / "s1")}

    listed = run_cli("list", *where)
    assert json.loads(listed.stdout) == [{"name": "s1", "mappings": 1}]

    destroyed = run_cli("destroy", "s1", *where)
    assert json.loads(destroyed.stdout) == {"name": "s1"}
    assert json.loads(run_cli("list", *where).stdout) == []


@pytest.mark.parametrize("kind", ["json", "msgpack"])
def test_cli_create_from_file(mount, host, workdir, kind):
    mappings = [
        ["/src", str(host / "ro"), False],
        {"path": "/out", "underlying": str(host / "out"), "writable": True},
    ]
    spec = workdir / f"mappings.{kind}"
    if kind == "json":
        spec.write_text(json.dumps(mappings))
    else:
        spec.write_bytes(msgpack.packb({"mappings": mappings}, use_bin_type=True))

    created = run_cli("create", "s1", "--control", str(control_path(mount)), "--from", str(spec),
                      "--mapping", f"ro:/tool:{host / 'ro/bin/tool'}", "--json")

    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["mappings"] == 3
    assert (mount / "s1/src/include/a.h").read_bytes() == b"int a;\n"
    assert (mount / "s1/tool").read_bytes() == b"#!/bin/sh\necho tool\n"
    (mount / "s1/out/x").write_bytes(b"x")
    assert (host / "out/x").read_bytes() == b"x"


def test_cli_error_exits_1_with_a_message(mount):
    failed = run_cli("destroy", "nope", "--control", str(control_path(mount)))

    assert failed.returncode == 1
    assert failed.stdout == ""
    assert failed.stderr.strip() == "sandboxfs: destroy_sandbox 'nope': no such sandbox"


def test_cli_without_a_server_exits_1(workdir):
    failed = run_cli("list", "--control", str(workdir / "nobody.sock"))

    assert failed.returncode == 1
    assert "nobody.sock" in failed.stderr
    assert "ENOENT" in failed.stderr
    assert "Traceback" not in failed.stderr


def test_cli_stats_json_has_the_counters(mount, client, host):
    client.create_sandbox("s1", sandbox_mappings(host))
    (mount / "s1/src/include/a.h").read_bytes()

    stats = run_cli("stats", "--control", str(control_path(mount)), "--json")

    assert stats.returncode == 0, stats.stderr
    value = json.loads(stats.stdout)
    assert {"requests", "sandboxes", "mappings", "fuse_ops", "rss_bytes"} <= set(value)
    assert value["requests"]["create_sandbox"] == 1
    assert (value["sandboxes"], value["mappings"]) == (1, 3)
    assert value["fuse_ops"]["lookup"] > 0
    assert value["rss_bytes"] > 0
