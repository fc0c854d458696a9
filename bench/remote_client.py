"""A small REAPI client: what the worker's tests and benchmark send to the engine.

It does what a build tool does against a remote-execution service: upload
an input tree (files given as a dict of path -> bytes), the Command and the
Action, call ``Execution.Execute``, and wait for the operation's
``ExecuteResponse``.  Blobs go through the worker's own ``Engine`` (same
batching and ByteStream), so a test of the worker exercises the same upload
code from the other side.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from google.protobuf import duration_pb2

from sandboxfs.backend.proto import operations_pb2 as operations
from sandboxfs.backend.proto import remote_execution_pb2 as re
from sandboxfs.worker.engine import Engine, digest_of

Inputs = Mapping[str, "bytes | tuple[bytes, bool]"]  # path -> content, or (content, executable)


def digest(data: bytes) -> re.Digest:
    return digest_of(hashlib.sha256(data).hexdigest(), len(data))


def build_tree(files: Inputs, blobs: dict[str, tuple[int, bytes]]) -> re.Digest:
    """The input root holding ``files`` (paths with '/'); every blob goes into ``blobs``."""
    root: dict = {}
    for path, content in files.items():
        data, executable = content if isinstance(content, tuple) else (content, False)
        *dirs, name = path.split("/")
        node = root
        for part in dirs:
            node = node.setdefault(part, {})
        node[name] = (data, executable)

    def encode(node: dict) -> re.Digest:
        directory = re.Directory()
        for name in sorted(node):
            value = node[name]
            if isinstance(value, dict):
                directory.directories.add(name=name, digest=encode(value))
            else:
                data, executable = value
                d = digest(data)
                blobs[d.hash] = (len(data), data)
                directory.files.add(name=name, digest=d, is_executable=executable)
        data = directory.SerializeToString(deterministic=True)
        d = digest(data)
        blobs[d.hash] = (len(data), data)
        return d

    return encode(root)


class RemoteClient:
    """Uploads and executes actions on the engine at ``endpoint``."""

    def __init__(self, endpoint: str, instance: str = "") -> None:
        self.engine = Engine(endpoint, instance)
        self.instance = instance
        self._execute = self.engine.channel.unary_stream(
            "/build.bazel.remote.execution.v2.Execution/Execute",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=operations.Operation.FromString)
        self._cancel = self.engine.channel.unary_unary(
            "/google.longrunning.Operations/CancelOperation",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=lambda data: data)

    def close(self) -> None:
        self.engine.close()

    def action(self, argv: list[str], inputs: Inputs, *, output_files: tuple[str, ...] = (),
               output_directories: tuple[str, ...] = (), env: Mapping[str, str] | None = None,
               working_directory: str = "", timeout: float | None = None,
               salt: bytes = b"", upload: bool = True) -> re.Digest:
        """Upload an action's inputs, Command and Action; return the Action's digest.

        ``salt`` goes into the environment (``SANDBOXFS_SALT``) so that equal
        actions can be told apart (the engine would otherwise merge them)."""
        blobs: dict[str, tuple[int, bytes]] = {}
        root = build_tree(inputs, blobs)
        command = re.Command(arguments=argv, output_files=sorted(output_files),
                             output_directories=sorted(output_directories),
                             working_directory=working_directory)
        variables = dict(env or {"PATH": "/usr/bin:/bin"})
        if salt:
            variables["SANDBOXFS_SALT"] = salt.hex()
        for name, value in sorted(variables.items()):
            command.environment_variables.add(name=name, value=value)
        command_blob = command.SerializeToString(deterministic=True)
        command_digest = digest(command_blob)
        blobs[command_digest.hash] = (len(command_blob), command_blob)
        action = re.Action(command_digest=command_digest, input_root_digest=root,
                           do_not_cache=True)
        if timeout is not None:
            action.timeout.CopyFrom(duration_pb2.Duration(seconds=int(timeout),
                                                          nanos=int(timeout % 1 * 1e9)))
        action_blob = action.SerializeToString(deterministic=True)
        action_digest = digest(action_blob)
        blobs[action_digest.hash] = (len(action_blob), action_blob)
        if upload:
            self.engine.upload(blobs)
        self.last_blobs = blobs
        return action_digest

    def execute(self, action_digest: re.Digest, timeout: float = 300,
                on_name=None) -> re.ExecuteResponse:
        """Execute and wait; the final ExecuteResponse (raises grpc.RpcError on failure).
        ``on_name`` is called once with the operation's name (to cancel it)."""
        request = re.ExecuteRequest(instance_name=self.instance, action_digest=action_digest,
                                    skip_cache_lookup=True)
        for op in self._execute(request, timeout=timeout):
            if on_name is not None:
                on_name(op.name)
                on_name = None
            if op.done:
                if op.HasField("error"):
                    response = re.ExecuteResponse()
                    response.status.CopyFrom(op.error)
                    return response
                response = re.ExecuteResponse()
                op.response.Unpack(response)
                return response
        raise RuntimeError("Execute ended without a finished operation")

    def cancel(self, operation: str) -> None:
        """Ask the engine to cancel operation ``operation`` (google.longrunning)."""
        self._cancel(operations.CancelOperationRequest(name=operation), timeout=30)

    def read(self, d: re.Digest) -> bytes:
        """One blob's bytes (empty for the empty digest)."""
        if not d.size_bytes:
            return b""
        (_, code, message, data), = self.engine.read_batch([d])
        if code:
            raise RuntimeError(f"blob {d.hash}: status {code} {message}")
        return data
