"""Tests of sandboxfs.control.ControlServer and sandboxfs.reconfig.Reconfigurer, without a mount.

Connections are in-memory trio streams served by ``ControlServer.serve_stream``
(the per-connection loop the Unix socket uses); the tree is a plain ``Tree``
and the kernel a recording fake.  Covered: pipelining and split requests,
every error code a client can cause without a mount, which errors keep the
connection and which close it, per-connection prefixes, all-or-nothing
sandbox creation, large requests on the off-loop path, the entries handed to
``KernelCache.invalidate`` (and that the answer waits for it), and graceful
shutdown (which lives in ``ControlServer.run``, so those tests use a Unix
socket in tmp_path).

Every test runs its I/O under ``trio.fail_after`` (inside ``serving`` or
explicitly).
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from sandboxfs.control import reconfig
from sandboxfs.control.client import AsyncClient, Client
from sandboxfs.control.server import ControlServer, bind_control_socket
from sandboxfs.control.unix_path import SUN_PATH_MAX
from sandboxfs.errors import ControlError
from sandboxfs.control.framing import MessageReader, encode
from sandboxfs.control.reconfig import Reconfigurer
from sandboxfs.tree.sandboxes import Tree

IO_TIMEOUT = 30


class RecordingKernel:
    """A KernelCache that records each invalidate call's [(parent_node, name)], after ``delays``."""

    def __init__(self, *delays: float) -> None:
        self.calls: list[list[tuple[Any, bytes]]] = []
        self.delays = list(delays)
        self.entered = trio.Event()

    async def invalidate(self, entries) -> None:
        self.entered.set()
        if self.delays:
            await trio.sleep(self.delays.pop(0))
        self.calls.append(list(entries))


class ThreadRecordingTree(Tree):
    """A Tree that remembers which thread built each sandbox."""

    def __init__(self) -> None:
        super().__init__()
        self.build_threads: list[threading.Thread] = []

    def build_sandbox(self, name, mappings):
        self.build_threads.append(threading.current_thread())
        return super().build_sandbox(name, mappings)


class Peer:
    """The client end of one connection: send messages or raw bytes, read whole responses."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.reader = MessageReader()
        self.queue: list[Any] = []

    async def send(self, *messages: Any) -> None:
        await self.stream.send_all(b"".join(encode(m) for m in messages))

    async def receive(self) -> Any:
        while not self.queue:
            data = await self.stream.receive_some(1 << 16)
            assert data, "the server closed the connection"
            self.reader.feed(data)
            self.queue.extend(self.reader.drain())
        return self.queue.pop(0)

    async def call(self, message: dict) -> Any:
        await self.send(message)
        response = await self.receive()
        assert response["id"] == message.get("id")
        return response

    async def assert_closed(self) -> None:
        """Nothing more arrives: the server closed the connection."""
        assert self.queue == []
        assert await self.stream.receive_some(1 << 16) == b""


async def serve_one(server: ControlServer, stream: trio.abc.Stream) -> None:
    """What the socket handler does around serve_stream: close the stream when it returns."""
    try:
        await server.serve_stream(stream)
    finally:
        await trio.aclose_forcefully(stream)


@contextlib.asynccontextmanager
async def serving(server: ControlServer, timeout: float = IO_TIMEOUT):
    """Run ``server``; yields ``connect()``, which returns a Peer on a new in-memory connection."""
    with trio.fail_after(timeout):
        async with trio.open_nursery() as nursery:

            def connect(pair=trio.testing.memory_stream_pair) -> Peer:
                client, server_side = pair()
                nursery.start_soon(serve_one, server, server_side)
                return Peer(client)

            yield connect
            nursery.cancel_scope.cancel()


def make_server(tree: Tree | None = None, kernel=None, **options) -> ControlServer:
    return ControlServer(Reconfigurer(tree if tree is not None else Tree(), kernel), **options)


def host_files(base: Path, count: int, prefix: str = "f") -> Path:
    base.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (base / f"{prefix}{i}").write_bytes(b"")
    return base


def create(request_id: Any, name: str, *mappings) -> dict:
    return {"id": request_id, "op": "create_sandbox", "name": name, "mappings": list(mappings)}


def code_of(response: dict) -> str | None:
    return response["error"]["code"] if "error" in response else None


@pytest.fixture
def host(tmp_path) -> Path:
    host = tmp_path / "host"
    (host / "dir").mkdir(parents=True)
    (host / "file").write_bytes(b"data")
    return host


# -- framing of requests and answers -------------------------------------------------


async def test_ping():
    async with serving(make_server()) as connect:
        response = await connect().call({"id": 1, "op": "ping", "version": 1})
    assert response["result"]["protocol"] == 1
    assert response["result"]["server"].startswith("sandboxfs ")


async def test_pipelined_requests_are_answered_in_order(host):
    server = make_server()
    async with serving(server) as connect:
        peer = connect()
        await peer.send(create("a", "s1", ["/f", str(host / "file"), False]),
                        {"id": 2, "op": "list"},
                        {"id": [3], "op": "destroy_sandbox", "name": "s1"})
        responses = [await peer.receive() for _ in range(3)]
    assert [r["id"] for r in responses] == ["a", 2, [3]]
    assert all("result" in r for r in responses), responses
    assert responses[1]["result"]["sandboxes"] == [{"name": "s1", "mappings": 1}]
    assert server.reconfigurer.tree.sandboxes == {}


@pytest.mark.parametrize("pair", [trio.testing.memory_stream_pair, trio.testing.lockstep_stream_pair])
async def test_request_split_across_sends(host, pair):
    data = encode(create(1, "s", ["/dir", str(host / "dir"), True]))
    async with serving(make_server()) as connect:
        peer = connect(pair)
        for i in range(len(data)):
            await peer.stream.send_all(data[i:i + 1])
            await trio.testing.wait_all_tasks_blocked()
        response = await peer.receive()
    assert response == {"id": 1, "result": {"name": "s", "mappings": 1}}


async def test_response_keeps_bytes_names_that_are_not_utf8(host):
    async with serving(make_server()) as connect:
        response = await connect().call(create(1, b"s\xff", ["/f", str(host / "file"), False]))
    assert response["result"]["name"] == b"s\xff"


# -- errors --------------------------------------------------------------------------


async def test_sandbox_exists(host):
    async with serving(make_server()) as connect:
        peer = connect()
        await peer.call(create(1, "s", ["/f", str(host / "file")]))
        response = await peer.call(create(2, "s", ["/g", str(host / "file")]))
        assert code_of(response) == "exists"
        assert "'s'" in response["error"]["message"]
        assert "result" in await peer.call({"id": 3, "op": "ping"})


BAD_REQUESTS = [
    pytest.param({"id": 1, "op": "destroy_sandbox", "name": "nope"}, "not_found", id="not_found"),
    pytest.param({"id": 1, "op": "unmap", "name": "nope", "paths": ["/a"]}, "not_found",
                 id="not_found unmap"),
    pytest.param(create(1, "s", ["rel", "/h"]), "invalid_mapping", id="invalid_mapping"),
    pytest.param(create(1, "s", ["/a", "/no/such/path"]), "invalid_mapping",
                 id="invalid_mapping missing underlying"),
    pytest.param({"id": 1, "op": "format"}, "invalid_request", id="invalid_request unknown op"),
    pytest.param({"id": 1, "op": "list", "extra": 1}, "invalid_request",
                 id="invalid_request unknown field"),
    pytest.param({"id": 1, "op": "create_sandbox", "name": "", "mappings": []}, "invalid_request",
                 id="invalid_request empty name"),
    pytest.param(["not", "a", "map"], "invalid_request", id="invalid_request not a map"),
]


@pytest.mark.parametrize("message, code", BAD_REQUESTS)
async def test_well_framed_bad_request_keeps_the_connection(message, code):
    async with serving(make_server()) as connect:
        peer = connect()
        await peer.send(message)
        response = await peer.receive()
        assert code_of(response) == code, response
        assert response["id"] == (message.get("id") if isinstance(message, dict) else None)
        assert response["error"]["message"]
        assert isinstance(response["error"]["details"], dict)
        assert "result" in await peer.call({"id": 2, "op": "ping"})


async def test_mapping_error_details_over_the_wire(host):
    async with serving(make_server()) as connect:
        response = await connect().call(create(
            1, "s", ["/d", str(host), False, ["file", "dir"]], ["/x", str(host / "missing")]))
    details = response["error"]["details"]
    assert (code_of(response), details["index"], details["path"]) == ("invalid_mapping", 2, "/x")
    assert "does not exist" in details["reason"]


@pytest.mark.parametrize(
    "data, code",
    [
        pytest.param(b"\xc1", "invalid_framing", id="reserved byte"),
        pytest.param(b"\xa2\xff\xfe", "invalid_framing", id="str not UTF-8"),
        pytest.param(b"\x81\x91\x01\x01", "invalid_framing", id="map with an array key"),
        pytest.param(encode({"id": 1, "op": "ping", "pad": b"x" * 2000}), "too_large",
                     id="too large"),
    ],
)
async def test_undecodable_bytes_get_one_error_and_close_the_connection(data, code):
    server = make_server(max_message_size=1000)
    async with serving(server) as connect:
        peer = connect()
        await peer.stream.send_all(data)
        response = await peer.receive()
        assert response["id"] is None
        assert code_of(response) == code
        await peer.assert_closed()
        # Only that connection: the server goes on serving others.
        assert "result" in await connect().call({"id": 2, "op": "ping"})


async def test_too_large_is_refused_before_the_whole_message_arrives():
    async with serving(make_server(max_message_size=1000)) as connect:
        peer = connect()
        with contextlib.suppress(trio.BrokenResourceError):  # the server may close first
            await peer.stream.send_all(b"\xc6" + (100 * 1024 * 1024).to_bytes(4, "big"))
            for _ in range(20):  # 2 KB of a message that announced 100 MiB
                await peer.stream.send_all(b"x" * 100)
        response = await peer.receive()
        assert code_of(response) == "too_large"
        await peer.assert_closed()


async def test_good_requests_before_garbage_are_answered():
    async with serving(make_server()) as connect:
        peer = connect()
        await peer.stream.send_all(encode({"id": 1, "op": "ping"}) + b"\xc1")
        assert "result" in await peer.receive()
        assert code_of(await peer.receive()) == "invalid_framing"
        await peer.assert_closed()


async def test_pipelined_small_requests_under_a_small_limit(host):
    """The size limit is per message: many small pipelined requests are all answered."""
    async with serving(make_server(max_message_size=200)) as connect:
        peer = connect()
        await peer.send(*({"id": i, "op": "ping"} for i in range(100)))
        responses = [await peer.receive() for _ in range(100)]
    assert [r["id"] for r in responses] == list(range(100))


# -- prefixes ------------------------------------------------------------------------


async def test_prefixes_last_for_the_connection_only(host):
    async with serving(make_server()) as connect:
        first, second = connect(), connect()
        registered = await first.call({"id": 1, "op": "ping", "prefixes": {1: "/in", 2: str(host)}})
        assert "result" in registered
        using = create(2, "s", [[1, "f"], [2, "file"], False])
        response = await first.call(using)
        assert response["result"]["mappings"] == 1
        other = await second.call(dict(using, name="t"))
        assert code_of(other) == "invalid_mapping"
        assert "unknown prefix id 1" in other["error"]["details"]["reason"]


async def test_prefix_redefinition_is_refused_on_the_same_connection(host):
    async with serving(make_server()) as connect:
        peer = connect()
        await peer.call({"id": 1, "op": "ping", "prefixes": {1: "/a"}})
        again = await peer.call({"id": 2, "op": "ping", "prefixes": {1: "/a/"}})
        assert "result" in again
        other = await peer.call({"id": 3, "op": "ping", "prefixes": {1: "/b"}})
        assert code_of(other) == "invalid_request"


# -- all or nothing ------------------------------------------------------------------


@pytest.mark.parametrize("count", [3, reconfig.OFF_LOOP_MAPPINGS + 10])
async def test_failed_create_sandbox_leaves_nothing(tmp_path, count):
    files = host_files(tmp_path / "files", count)
    mappings = [[f"/m/f{i}", str(files / f"f{i}"), False] for i in range(count)]
    mappings[count // 2][1] = str(files / "missing")
    tree = Tree()
    async with serving(make_server(tree)) as connect:
        peer = connect()
        response = await peer.call(create(1, "s", *mappings))
        assert code_of(response) == "invalid_mapping"
        assert response["error"]["details"]["index"] == count // 2
        assert tree.sandboxes == {}
        assert tree.mapping_count == 0
        mappings[count // 2][1] = str(files / "f0")
        retry = await peer.call(create(2, "s", *mappings))
        assert retry["result"]["mappings"] == count
        assert list(tree.sandboxes) == [b"s"]


async def test_failed_map_leaves_the_sandbox_unchanged(host):
    tree = Tree()
    async with serving(make_server(tree)) as connect:
        peer = connect()
        await peer.call(create(1, "s", ["/f", str(host / "file")]))
        response = await peer.call({"id": 2, "op": "map", "name": "s", "mappings": [
            ["/new", str(host / "dir")], ["/f", str(host / "file")]]})
        assert code_of(response) == "invalid_mapping"
        assert tree.sandboxes[b"s"].mapping_count == 1
        assert b"new" not in tree.sandboxes[b"s"].node.children


# -- large requests ------------------------------------------------------------------


async def test_large_create_sandbox_goes_off_the_event_loop(tmp_path):
    count = 2000
    assert count > reconfig.OFF_LOOP_MAPPINGS
    files = host_files(tmp_path / "files", count)
    tree = ThreadRecordingTree()
    kernel = RecordingKernel()
    async with serving(make_server(tree, kernel)) as connect:
        response = await connect().call(create(
            1, "big", *([f"/src/{i % 7}/f{i}", str(files / f"f{i}"), False] for i in range(count))))
    assert response["result"] == {"name": "big", "mappings": count}
    assert tree.sandboxes[b"big"].mapping_count == count
    assert tree.mapping_count == count
    assert tree.build_threads and tree.build_threads[0] is not threading.main_thread()
    assert kernel.calls == [[(tree.root, b"big")]]


async def test_large_map_works(tmp_path):
    count = 2000
    files = host_files(tmp_path / "files", count)
    tree = Tree()
    async with serving(make_server(tree)) as connect:
        peer = connect()
        await peer.call(create(1, "s", ["/keep", str(files / "f0")]))
        response = await peer.call({"id": 2, "op": "map", "name": "s", "mappings": [
            [f"/m/f{i}", str(files / f"f{i}"), True] for i in range(count)]})
    assert response["result"] == {"name": "s", "mapped": count}
    assert tree.sandboxes[b"s"].mapping_count == count + 1


async def test_large_create_with_prefixes_and_groups(tmp_path):
    count = 2000
    files = host_files(tmp_path / "files", count)
    tree = Tree()
    mappings = [[[1, f"f{i}"], [2, f"f{i}"], False] for i in range(count // 2)]
    mappings.append([[1, ""], [2, ""], True, [f"f{i}" for i in range(count // 2, count)]])
    async with serving(make_server(tree)) as connect:
        response = await connect().call(dict(create(1, "s", *mappings),
                                             prefixes={1: "/inc", 2: str(files)}))
    assert response["result"]["mappings"] == count


async def test_large_create_with_a_taken_name_is_refused(tmp_path):
    count = reconfig.OFF_LOOP_MAPPINGS + 1
    files = host_files(tmp_path / "files", count)
    mappings = [[f"/f{i}", str(files / f"f{i}")] for i in range(count)]
    tree = Tree()
    async with serving(make_server(tree)) as connect:
        peer = connect()
        assert "result" in await peer.call(create(1, "s", *mappings))
        again = await peer.call(create(2, "s", *mappings))
    assert code_of(again) == "exists"
    assert tree.mapping_count == count


# -- kernel cache invalidation -------------------------------------------------------


async def invalidated_by(peer: Peer, kernel: RecordingKernel, message: dict) -> list:
    """The entries ``message`` made the Reconfigurer invalidate (after a successful answer)."""
    kernel.calls.clear()
    assert "result" in await peer.call(message)
    return [entry for call in kernel.calls for entry in call]


async def test_invalidated_entries(host):
    tree = Tree()
    kernel = RecordingKernel()
    async with serving(make_server(tree, kernel)) as connect:
        peer = connect()
        assert await invalidated_by(peer, kernel, create(1, "s", ["/f", str(host / "file")])) == [
            (tree.root, b"s")]
        top = tree.sandboxes[b"s"].node
        top.ino = 42  # as if the kernel had looked the sandbox up
        mapping = {"id": 2, "op": "map", "name": "s", "mappings": [["/d", str(host / "dir")]]}
        assert await invalidated_by(peer, kernel, mapping) == [(top, b"d")]
        unmapping = {"id": 3, "op": "unmap", "name": "s", "paths": ["/d"]}
        assert await invalidated_by(peer, kernel, unmapping) == [(top, b"d")]
        destroying = {"id": 4, "op": "destroy_sandbox", "name": "s"}
        assert await invalidated_by(peer, kernel, destroying) == [(tree.root, b"s")]


async def test_nothing_known_to_the_kernel_nothing_invalidated(host):
    kernel = RecordingKernel()
    async with serving(make_server(Tree(), kernel)) as connect:
        peer = connect()
        await peer.call(create(1, "s", ["/f", str(host / "file")]))
        mapping = {"id": 2, "op": "map", "name": "s", "mappings": [["/a/b", str(host / "dir")]]}
        assert await invalidated_by(peer, kernel, mapping) == []


async def test_answer_waits_for_the_invalidation(host, autojump_clock):
    kernel = RecordingKernel(5.0)
    async with serving(make_server(Tree(), kernel)) as connect:
        peer = connect()
        start = trio.current_time()
        response = await peer.call(create(1, "s", ["/f", str(host / "file")]))
        assert "result" in response
        assert trio.current_time() - start >= 5.0
        assert kernel.calls  # recorded before the answer went out


async def test_failed_request_invalidates_nothing(host):
    kernel = RecordingKernel()
    async with serving(make_server(Tree(), kernel)) as connect:
        peer = connect()
        await peer.call(create(1, "s", ["/f", str(host / "missing")]))
        await peer.call({"id": 2, "op": "destroy_sandbox", "name": "s"})
    assert kernel.calls == []


# -- graceful shutdown (ControlServer.run over a Unix socket) -------------------------


@contextlib.asynccontextmanager
async def running_on_socket(server: ControlServer):
    """Run ``server.run`` in a cancel scope of its own; yields (connect, shutdown)."""
    scope = trio.CancelScope()

    async def run(task_status=trio.TASK_STATUS_IGNORED):
        with scope:
            await server.run(task_status=task_status)

    with trio.fail_after(IO_TIMEOUT * 10):  # virtual seconds under the autojump clock
        async with trio.open_nursery() as nursery:
            await nursery.start(run)

            async def connect() -> Peer:
                return Peer(await trio.open_unix_socket(server.path))

            yield connect, scope.cancel
            scope.cancel()


@pytest.fixture
def socket_path(tmp_path) -> str:
    return str(tmp_path / "ctl.sock")


async def test_request_in_flight_finishes_on_shutdown(host, socket_path, autojump_clock):
    kernel = RecordingKernel(1.0)
    server = make_server(Tree(), kernel, path=socket_path)
    async with running_on_socket(server) as (connect, shutdown):
        peer = await connect()
        await peer.send(create(1, "s", ["/f", str(host / "file")]))
        await kernel.entered.wait()
        start = trio.current_time()
        shutdown()
        response = await peer.receive()
        assert response == {"id": 1, "result": {"name": "s", "mappings": 1}}
        await peer.assert_closed()
        assert trio.current_time() - start == pytest.approx(1.0, abs=0.05)


async def test_grace_deadline_closes_a_slow_request(host, socket_path, autojump_clock):
    kernel = RecordingKernel(10.0)
    server = make_server(Tree(), kernel, path=socket_path, grace=0.1)
    async with running_on_socket(server) as (connect, shutdown):
        peer = await connect()
        await peer.send(create(1, "s", ["/f", str(host / "file")]))
        await kernel.entered.wait()
        start = trio.current_time()
        shutdown()
        await peer.assert_closed()
        assert trio.current_time() - start == pytest.approx(0.1, abs=0.05)


async def test_grace_deadline_bounds_pipelined_requests_too(host, socket_path, autojump_clock):
    """Requests queued behind the one in flight get no more than the same grace."""
    kernel = RecordingKernel(1.0, 10.0)
    server = make_server(Tree(), kernel, path=socket_path, grace=2.0)
    async with running_on_socket(server) as (connect, shutdown):
        peer = await connect()
        await peer.send(create(1, "a", ["/f", str(host / "file")]),
                        create(2, "b", ["/f", str(host / "file")]))
        await kernel.entered.wait()
        start = trio.current_time()
        shutdown()
        assert (await peer.receive())["id"] == 1
        with trio.move_on_after(60):
            await peer.assert_closed()
        assert trio.current_time() - start <= 2.0 + 0.05


async def test_a_socket_path_longer_than_sun_path_is_bound_and_reached(tmp_path):
    """Output bases and pytest temp dirs make paths past sockaddr_un's 107 bytes."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = str(deep / "ctl.sock")
    assert len(path) > SUN_PATH_MAX
    server = make_server(Tree(), path=path)
    async with running_on_socket(server):
        assert os.path.exists(path)
        async with await AsyncClient.connect(path) as client:
            assert (await client.ping())["protocol"] >= 1
        with Client(path) as client:
            await trio.to_thread.run_sync(client.ping)
        with pytest.raises(ControlError, match="another sandboxfs is listening"):
            bind_control_socket(path)


# -- large requests do not hold up small ones ------------------------------------------


class GatedKernel:
    """A KernelCache whose invalidation of sandbox ``gated`` waits until ``gate`` is set:
    the request creating it cannot finish before the test lets it."""

    def __init__(self, gated: bytes) -> None:
        self.gated = gated
        self.gate = trio.Event()
        self.entered = trio.Event()

    async def invalidate(self, entries) -> None:
        if any(name == self.gated for _parent, name in entries):
            self.entered.set()
            await self.gate.wait()


async def receive_before_the_gate(peer: Peer, kernel: GatedKernel) -> Any:
    """The next answer, which must come while the large request is held at the gate."""
    with trio.move_on_after(IO_TIMEOUT / 3):
        return await peer.receive()
    kernel.gate.set()  # let the held request end, so the server can be stopped
    pytest.fail("a small request waited for the large one in front of it")


def big_create(request_id: int, files: Path, count: int, name: str = "big") -> dict:
    return create(request_id, name,
                  *([f"/src/{i % 7}/f{i}", str(files / f"f{i}"), False] for i in range(count)))


async def test_small_requests_overtake_a_large_one(tmp_path):
    """On the same connection and on another one; the large one is answered last."""
    count = 2000
    assert count > reconfig.OFF_LOOP_MAPPINGS
    files = host_files(tmp_path / "files", count)
    kernel = GatedKernel(b"big")
    async with serving(make_server(Tree(), kernel)) as connect:
        peer, other = connect(), connect()
        await peer.send(big_create(1, files, count), {"id": 2, "op": "ping"},
                        create(3, "small", ["/f", str(files / "f0")]))
        assert (await receive_before_the_gate(peer, kernel))["id"] == 2
        assert (await receive_before_the_gate(peer, kernel)) == {
            "id": 3, "result": {"name": "small", "mappings": 1}}
        await other.send(create(4, "other", ["/f", str(files / "f1")]))
        assert "result" in await receive_before_the_gate(other, kernel)
        await kernel.entered.wait()  # the big one is built and attached, not yet answered
        kernel.gate.set()
        assert (await peer.receive()) == {"id": 1, "result": {"name": "big", "mappings": count}}


async def test_a_request_naming_the_large_ones_sandbox_waits_for_it(tmp_path):
    count = 2000
    files = host_files(tmp_path / "files", count)
    kernel = GatedKernel(b"big")
    async with serving(make_server(Tree(), kernel)) as connect:
        peer = connect()
        await peer.send(big_create(1, files, count),
                        {"id": 2, "op": "map", "name": "big",
                         "mappings": [["/extra", str(files / "f0"), False]]},
                        {"id": 3, "op": "ping"})
        assert (await receive_before_the_gate(peer, kernel))["id"] == 3
        kernel.gate.set()
        assert (await peer.receive())["id"] == 1
        assert (await peer.receive()) == {"id": 2, "result": {"name": "big", "mapped": 1}}


async def test_prefixes_of_a_large_message_serve_the_requests_after_it(tmp_path):
    """A message of over a megabyte is decoded later in a thread; the prefixes it
    defines are usable at once by the small requests behind it."""
    count = 12000
    files = host_files(tmp_path / "files", count)
    padding = "p" * 80
    message = {"id": 1, "op": "create_sandbox", "name": "big", "prefixes": {1: str(files)},
               "mappings": [[f"/{padding}/{i}", [1, f"f{i}"], False] for i in range(count)]}
    assert len(encode(message)) > 1 << 20
    kernel = GatedKernel(b"big")
    async with serving(make_server(Tree(), kernel)) as connect:
        peer = connect()
        await peer.send(message, create(2, "small", ["/f", [1, "f5"]]))
        assert (await receive_before_the_gate(peer, kernel)) == {
            "id": 2, "result": {"name": "small", "mappings": 1}}
        kernel.gate.set()
        assert (await peer.receive()) == {"id": 1, "result": {"name": "big", "mappings": count}}


# -- regressions: hostile input must never cost more than its own request -------------


async def test_non_utf8_path_in_an_error_keeps_the_server_serving(host):
    """An error naming a path that is not UTF-8 is still a valid message (it used to kill the server)."""
    async with serving(make_server()) as connect:
        peer = connect()
        assert "result" in await peer.call(create(1, "s", ["/f", str(host / "file"), False]))
        response = await peer.call({"id": 2, "op": "unmap", "name": "s", "paths": [b"/x\xff"]})
        assert code_of(response) == "not_found"
        assert response["error"]["details"]["path"] == "/x\\xff"
        assert (await peer.call({"id": 3, "op": "list"}))["result"]["sandboxes"][0]["name"] == "s"


async def test_deeply_nested_mapping_is_an_invalid_mapping_not_a_crash():
    marker = "NESTED-MAPPING"
    message = encode(create(1, "s", marker))
    nested = b"\x91" * 1000 + b"\x90"  # [[[...[]...]]], deeper than Python's repr can go
    async with serving(make_server()) as connect:
        peer = connect()
        await peer.stream.send_all(message.replace(encode(marker), nested))
        response = await peer.receive()
    assert code_of(response) == "invalid_mapping"


async def test_ping_refuses_versions_below_one():
    async with serving(make_server()) as connect:
        response = await connect().call({"id": 1, "op": "ping", "version": 0})
    assert code_of(response) == "invalid_request"


async def test_map_and_unmap_count_mappings_not_array_elements(tmp_path):
    files = host_files(tmp_path / "files", 3)
    async with serving(make_server()) as connect:
        peer = connect()
        assert "result" in await peer.call(create(1, "s"))
        mapped = await peer.call({"id": 2, "op": "map", "name": "s", "mappings": [
            ["/d", str(files), False, [b"f0", b"f1", b"f2"]]]})
        assert mapped["result"]["mapped"] == 3
        unmapped = await peer.call({"id": 3, "op": "unmap", "name": "s",
                                    "paths": ["/d/f0", "/d/f1", "/d/f0"]})
        assert unmapped["result"]["unmapped"] == 2


async def test_large_grouped_create_goes_off_the_event_loop(tmp_path):
    """A few groups of many names count by names: the build still leaves the loop."""
    count = 2000
    files = host_files(tmp_path / "files", count)
    tree = ThreadRecordingTree()
    async with serving(make_server(tree)) as connect:
        response = await connect().call(create(
            1, "big", ["/src", str(files), False, [f"f{i}".encode() for i in range(count)]]))
    assert response["result"]["mappings"] == count
    assert tree.build_threads and tree.build_threads[0] is not threading.main_thread()


async def test_unknown_ops_do_not_grow_the_statistics():
    server = make_server()
    async with serving(server) as connect:
        peer = connect()
        for i in range(5):
            await peer.call({"id": i, "op": f"frobnicate{i}"})
        stats = (await peer.call({"id": 9, "op": "stats"}))["result"]
    assert stats["requests"]["unknown"] == 5
    assert not any(key.startswith("frobnicate") for key in stats["requests"])


# -- stalled peers -----------------------------------------------------------------


async def test_half_a_message_then_silence_is_closed_with_timeout(autojump_clock):
    async with serving(make_server(stall_timeout=30), timeout=IO_TIMEOUT * 10) as connect:
        peer = connect()
        whole = encode({"id": 1, "op": "ping"})
        await peer.stream.send_all(whole[:-1])
        started = trio.current_time()
        response = await peer.receive()
        assert code_of(response) == "timeout"
        assert response["id"] is None
        assert f"({len(whole) - 1} bytes received)" in response["error"]["message"]
        assert 30 <= trio.current_time() - started < 31
        await peer.assert_closed()
        assert "result" in await connect().call({"id": 2, "op": "ping"})


async def test_an_idle_connection_between_messages_is_never_timed_out(autojump_clock):
    async with serving(make_server(stall_timeout=30), timeout=IO_TIMEOUT * 100) as connect:
        peer = connect()
        await trio.sleep(1000)  # idle (no partial message): kept
        assert "result" in await peer.call({"id": 1, "op": "ping"})


async def test_a_slowly_sent_message_is_fine_while_bytes_keep_coming(autojump_clock):
    async with serving(make_server(stall_timeout=30), timeout=IO_TIMEOUT * 100) as connect:
        peer = connect()
        whole = encode({"id": 1, "op": "ping"})
        for byte in whole:
            await peer.stream.send_all(bytes([byte]))
            await trio.sleep(20)  # each gap under the timeout, the whole far over it
        assert "result" in await peer.receive()


async def test_a_peer_that_never_reads_its_answers_is_closed(autojump_clock):
    server = make_server(stall_timeout=30)
    async with serving(server, timeout=IO_TIMEOUT * 10) as connect:
        # A lockstep stream: send_all blocks until the peer reads, like a full socket buffer.
        peer = connect(pair=trio.testing.lockstep_stream_pair)
        await peer.send({"id": 1, "op": "ping"})
        await trio.sleep(31)
        assert server.connections == 0
        assert "result" in await connect().call({"id": 2, "op": "ping"})


# -- access tracking (the kernel side is in tests/fuse/test_access.py) --------------


async def test_track_access_report_and_destroy(host):
    async with serving(make_server()) as connect:
        peer = connect()
        request = create(1, "t", ["/file", str(host / "file"), False], ["/dir", str(host / "dir"), False])
        request["track_access"] = True
        assert "result" in await peer.call(request)
        assert (await peer.call({"id": 2, "op": "list"}))["result"]["sandboxes"] == [
            {"name": "t", "mappings": 2, "track_access": True}
        ]
        report = (await peer.call({"id": 3, "op": "access_report", "name": "t"}))["result"]
        assert report == {"name": "t", "access_report": {
            "accessed": {}, "missing": [], "unused": ["dir", "file"]}}
        destroyed = (await peer.call({"id": 4, "op": "destroy_sandbox", "name": "t"}))["result"]
        assert destroyed["access_report"]["unused"] == ["dir", "file"]


async def test_untracked_sandboxes_have_no_report(host):
    async with serving(make_server()) as connect:
        peer = connect()
        assert "result" in await peer.call(create(1, "u", ["/file", str(host / "file"), False]))
        response = await peer.call({"id": 2, "op": "access_report", "name": "u"})
        assert code_of(response) == "invalid_request"
        assert "created without track_access" in response["error"]["message"]
        assert code_of(await peer.call({"id": 3, "op": "access_report", "name": "none"})) == "not_found"
        destroyed = (await peer.call({"id": 4, "op": "destroy_sandbox", "name": "u"}))["result"]
        assert destroyed == {"name": "u"}


@pytest.mark.parametrize("value", ["yes", 1, [True]])
async def test_track_access_must_be_a_boolean(host, value):
    async with serving(make_server()) as connect:
        request = create(1, "t", ["/file", str(host / "file"), False])
        request["track_access"] = value
        response = await connect().call(request)
        assert code_of(response) == "invalid_request"
        assert "'track_access' must be bool" in response["error"]["message"]


async def test_a_large_tracked_create_goes_off_loop_and_is_tracked(tmp_path):
    files = host_files(tmp_path / "many", 600)
    server = make_server()
    async with serving(server) as connect:
        request = create(1, "big", *[[f"/f{i}", str(files / f"f{i}"), False] for i in range(600)])
        request["track_access"] = True
        assert "result" in await connect().call(request)
        assert b"big" in server.reconfigurer.access.logs


async def test_large_requests_are_built_with_the_gc_paused_and_it_resumes(tmp_path):
    import gc

    class GcRecordingTree(Tree):
        states: list[bool] = []

        def build_sandbox(self, name, mappings):
            self.states.append(gc.isenabled())
            return super().build_sandbox(name, mappings)

    files = host_files(tmp_path / "many", 600)
    tree = GcRecordingTree()
    async with serving(make_server(tree)) as connect:
        request = create(1, "big", *[[f"/f{i}", str(files / f"f{i}"), False] for i in range(600)])
        assert "result" in await connect().call(request)
    assert tree.states == [False]
    assert gc.isenabled()
