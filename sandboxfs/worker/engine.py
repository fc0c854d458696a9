"""The remote-execution engine as the worker sees it: one gRPC channel, its calls, retried.

The worker talks to three of the engine's services: the content-addressable
storage (REAPI ``ContentAddressableStorage`` and ``ByteStream``), and the
Remote Workers API's ``Bots`` (bot sessions and their leases).  Methods are
called by path through ``channel.unary_unary`` and friends with our
vendored messages (``sandboxfs.backend.proto``), so no generated gRPC stubs
are needed.

Every call is blocking (the worker runs them in threads).  ``call`` retries
what a restarting or overloaded engine answers (UNAVAILABLE,
RESOURCE_EXHAUSTED, ABORTED, and a deadline a retry may meet) with
exponential backoff and jitter, for at most ``retry_for`` seconds; anything
else is the caller's to handle.  An ``EngineError`` names the call, the
gRPC status and the engine's message.
"""

from __future__ import annotations

import io
import logging
import random
import threading
import time
import uuid
from collections.abc import Iterable, Iterator

import grpc

from sandboxfs.backend.proto import bots_pb2 as bots
from sandboxfs.backend.proto import bytestream_pb2 as bytestream
from sandboxfs.backend.proto import remote_execution_pb2 as re
from sandboxfs.errors import SandboxfsError, UsageError

log = logging.getLogger(__name__)

MAX_MESSAGE = 64 << 20
# Blobs up to this size travel in batches; bigger ones stream through ByteStream.
BATCH_BLOB_MAX = 1 << 20
BATCH_BYTES = 3 << 20  # one batch's total, well under the engine's 4 MiB message default
BATCH_COUNT = 1000
STREAM_CHUNK = 1 << 20

RETRIED = frozenset((grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                     grpc.StatusCode.ABORTED))

_CAS = "/build.bazel.remote.execution.v2.ContentAddressableStorage/"
_BOTS = "/google.devtools.remoteworkers.v1test2.Bots/"
_UNARY = {
    "FindMissingBlobs": (_CAS, re.FindMissingBlobsResponse),
    "BatchUpdateBlobs": (_CAS, re.BatchUpdateBlobsResponse),
    "BatchReadBlobs": (_CAS, re.BatchReadBlobsResponse),
    "GetCapabilities": ("/build.bazel.remote.execution.v2.Capabilities/",
                        re.ServerCapabilities),
    "CreateBotSession": (_BOTS, bots.BotSession),
    "UpdateBotSession": (_BOTS, bots.BotSession),
}


class EngineError(SandboxfsError):
    """A call the engine failed (after the retries it deserved)."""

    def __init__(self, call: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{call}: the engine answered {code.name}: {details or '(no message)'}")
        self.call = call
        self.code = code


def grpc_target(endpoint: str) -> str:
    """``grpc://host:port`` (or plain ``host:port``) as a gRPC channel target."""
    for scheme in ("grpc://", "http://"):
        if endpoint.startswith(scheme):
            return endpoint[len(scheme):].rstrip("/")
    if "://" in endpoint:
        raise UsageError(f"--engine {endpoint}: only grpc://HOST:PORT (insecure) is supported")
    return endpoint


def digest_of(hash_: str, size: int) -> re.Digest:
    return re.Digest(hash=hash_, size_bytes=size)


class Engine:
    """One channel to the engine at ``endpoint``, for instance ``instance``."""

    def __init__(self, endpoint: str, instance: str = "", *, retry_for: float = 60.0) -> None:
        self.endpoint = endpoint
        self.instance = instance
        self.retry_for = retry_for
        self.channel = grpc.insecure_channel(grpc_target(endpoint), options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            # Reconnect quickly once a restarted engine is back.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ])
        self._unary = {
            name: self.channel.unary_unary(prefix + name,
                                           request_serializer=_serialize,
                                           response_deserializer=reply.FromString)
            for name, (prefix, reply) in _UNARY.items()
        }
        self._read = self.channel.unary_stream(
            "/google.bytestream.ByteStream/Read", request_serializer=_serialize,
            response_deserializer=bytestream.ReadResponse.FromString)
        self._write = self.channel.stream_unary(
            "/google.bytestream.ByteStream/Write", request_serializer=_serialize,
            response_deserializer=bytestream.WriteResponse.FromString)
        self.stopping = threading.Event()  # set at shutdown: retries end at once
        self.calls = 0

    def close(self) -> None:
        self.stopping.set()
        self.channel.close()

    # -- calls ----------------------------------------------------------------------------

    def future(self, name: str, request, timeout: float) -> grpc.Future:
        """Start unary call ``name`` without waiting (bot sessions cancel a heartbeat)."""
        self.calls += 1
        return self._unary[name].future(request, timeout=timeout)

    def call(self, name: str, request, timeout: float = 30.0, *, retry_for: float | None = None):
        """Unary call ``name``; retried as the module docstring says; EngineError otherwise."""
        return self.retrying(name, lambda: self._unary[name](request, timeout=timeout),
                             retry_for=retry_for)

    def retrying(self, name: str, attempt, *, retry_for: float | None = None):
        """``attempt()`` until it succeeds, fails for good, or ``retry_for`` seconds passed."""
        give_up = time.monotonic() + (self.retry_for if retry_for is None else retry_for)
        delay = 0.1
        while True:
            self.calls += 1
            try:
                return attempt()
            except grpc.RpcError as exc:
                code = exc.code()
                transient = code in RETRIED or code == grpc.StatusCode.DEADLINE_EXCEEDED
                if not transient or time.monotonic() + delay > give_up or self.stopping.is_set():
                    raise EngineError(name, code, exc.details()) from None
                log.info("%s: %s (%s); retrying in %.1f s", name, code.name, exc.details(), delay)
            if self.stopping.wait(delay * random.uniform(0.8, 1.2)):
                raise EngineError(name, grpc.StatusCode.CANCELLED, "the worker is stopping")
            delay = min(delay * 2, 5.0)

    # -- content-addressable storage -------------------------------------------------------

    def find_missing(self, digests: Iterable[re.Digest]) -> list[re.Digest]:
        wanted = list(digests)
        missing: list[re.Digest] = []
        for start in range(0, len(wanted), BATCH_COUNT):
            reply = self.call("FindMissingBlobs", re.FindMissingBlobsRequest(
                instance_name=self.instance, blob_digests=wanted[start:start + BATCH_COUNT]))
            missing.extend(reply.missing_blob_digests)
        return missing

    def read_batch(self, digests: list[re.Digest]) -> Iterator[tuple[re.Digest, int, str, bytes]]:
        """(digest, status code, message, data) for each of ``digests`` (small blobs)."""
        reply = self.call("BatchReadBlobs", re.BatchReadBlobsRequest(
            instance_name=self.instance, digests=digests))
        for response in reply.responses:
            yield response.digest, response.status.code, response.status.message, response.data

    def read_stream(self, digest: re.Digest) -> Iterator[bytes]:
        """The bytes of one (big) blob, in chunks.  Retried only before the first chunk."""
        resource = f"{self.instance}/blobs/{digest.hash}/{digest.size_bytes}".lstrip("/")
        responses = self.retrying("ByteStream.Read", lambda: _first(self._read(
            bytestream.ReadRequest(resource_name=resource), timeout=600)))
        for response in responses:
            yield response.data

    def upload(self, blobs: dict[str, tuple[int, object]]) -> None:
        """Put blobs the engine lacks: ``{hash: (size, bytes, or a str path to read)}``.

        The empty blob is never sent (REAPI: a server always has it), so an
        action with empty stdout, stderr and outputs costs no call at all."""
        wanted = [digest_of(h, size) for h, (size, _) in blobs.items() if size]
        if not wanted:
            return
        missing = self.find_missing(wanted)
        batch: list[re.BatchUpdateBlobsRequest.Request] = []
        total = 0
        for digest in missing:
            _size, source = blobs[digest.hash]
            if digest.size_bytes > BATCH_BLOB_MAX:
                self._write_stream(digest, source)
                continue
            if total + digest.size_bytes > BATCH_BYTES or len(batch) >= BATCH_COUNT:
                self._update(batch)
                batch, total = [], 0
            batch.append(re.BatchUpdateBlobsRequest.Request(digest=digest, data=_bytes(source)))
            total += digest.size_bytes
        self._update(batch)

    def _update(self, batch: list) -> None:
        if not batch:
            return
        reply = self.call("BatchUpdateBlobs", re.BatchUpdateBlobsRequest(
            instance_name=self.instance, requests=batch))
        for response in reply.responses:
            if response.status.code:
                raise EngineError("BatchUpdateBlobs", grpc.StatusCode.INTERNAL,
                                  f"blob {response.digest.hash}/{response.digest.size_bytes}: "
                                  f"status {response.status.code}: {response.status.message}")

    def _write_stream(self, digest: re.Digest, source) -> None:
        resource = (f"{self.instance}/uploads/{uuid.uuid4()}/blobs/"
                    f"{digest.hash}/{digest.size_bytes}").lstrip("/")

        def requests() -> Iterator[bytestream.WriteRequest]:
            opened = (io.BytesIO(source) if isinstance(source, (bytes, bytearray))
                      else open(source, "rb"))
            with opened as f:
                offset = 0
                while True:
                    chunk = f.read(STREAM_CHUNK)
                    last = offset + len(chunk) >= digest.size_bytes
                    yield bytestream.WriteRequest(
                        resource_name=resource if offset == 0 else "", write_offset=offset,
                        finish_write=last, data=chunk)
                    offset += len(chunk)
                    if last:
                        return

        self.retrying("ByteStream.Write", lambda: self._write(requests(), timeout=600))


def _serialize(message) -> bytes:
    return message.SerializeToString()


def _first(stream):
    """Wait for the first message of a response stream (so errors raise inside the retry)."""
    first = next(stream, None)

    def chained():
        if first is not None:
            yield first
        yield from stream
    return chained()


def _bytes(source) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    with open(source, "rb") as f:
        return f.read()
