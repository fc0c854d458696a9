"""Unit tests of the worker-side protos: REAPI's execution/CAS messages, BuildGrid's Bots API, and
the googleapis messages they embed (google.rpc, google.longrunning, google.bytestream).

* Every field number and enum value is the one BuildGrid 0.9.1 uses, listed one by one: a
  number changed by mistake still compiles but breaks the wire.
* Hand-computed wire encodings pin numbers and types together (a string field that became
  bytes, or a field moved to another number, gives other bytes).
* An Action packed in a Lease carries REAPI's type URL, and messages round-trip.
* The generated modules refer to one another inside sandboxfs (one google.rpc.Status).
"""

from __future__ import annotations

import pytest
from google.protobuf import any_pb2, duration_pb2

from sandboxfs.backend.proto import (
    bots_pb2,
    bytestream_pb2,
    operations_pb2,
    remote_execution_pb2,
    semver_pb2,
    status_pb2,
    worker_pb2,
)

re_pb2 = remote_execution_pb2  # short name for the tables below

MODULES = {
    "remote_execution": (re_pb2, "build.bazel.remote.execution.v2"),
    "semver": (semver_pb2, "build.bazel.semver"),
    "status": (status_pb2, "google.rpc"),
    "operations": (operations_pb2, "google.longrunning"),
    "bytestream": (bytestream_pb2, "google.bytestream"),
    "worker": (worker_pb2, "google.devtools.remoteworkers.v1test2"),
    "bots": (bots_pb2, "google.devtools.remoteworkers.v1test2"),
}
# The input-tree messages of remote_execution.proto (checked in test_backend_protos.py).
TREE_MESSAGES = {"Digest", "Directory", "FileNode", "DirectoryNode", "SymlinkNode", "NodeProperty",
                 "NodeProperties"}
WORKER_FIELDS = {
    "remote_execution": {
        "Action": {"command_digest": 1, "input_root_digest": 2, "timeout": 6, "do_not_cache": 7,
            "salt": 9, "platform": 10},
        "Command": {"arguments": 1, "environment_variables": 2, "output_files": 3,
            "output_directories": 4, "output_paths": 7, "platform": 5, "working_directory": 6,
            "output_node_properties": 8, "output_directory_format": 9},
        "Command.EnvironmentVariable": {"name": 1, "value": 2},
        "Platform": {"properties": 1},
        "Platform.Property": {"name": 1, "value": 2},
        "ExecutedActionMetadata": {"worker": 1, "queued_timestamp": 2,
            "worker_start_timestamp": 3, "worker_completed_timestamp": 4,
            "input_fetch_start_timestamp": 5, "input_fetch_completed_timestamp": 6,
            "execution_start_timestamp": 7, "execution_completed_timestamp": 8,
            "virtual_execution_duration": 12, "output_upload_start_timestamp": 9,
            "output_upload_completed_timestamp": 10, "auxiliary_metadata": 11},
        "ActionResult": {"output_files": 2, "output_file_symlinks": 10, "output_symlinks": 12,
            "output_directories": 3, "output_directory_symlinks": 11, "exit_code": 4,
            "stdout_raw": 5, "stdout_digest": 6, "stderr_raw": 7, "stderr_digest": 8,
            "execution_metadata": 9},
        "OutputFile": {"path": 1, "digest": 2, "is_executable": 4, "contents": 5,
            "node_properties": 7},
        "Tree": {"root": 1, "children": 2},
        "OutputDirectory": {"path": 1, "tree_digest": 3, "is_topologically_sorted": 4,
            "root_directory_digest": 5},
        "OutputSymlink": {"path": 1, "target": 2, "node_properties": 4},
        "ExecutionPolicy": {"priority": 1},
        "ResultsCachePolicy": {"priority": 1},
        "ExecuteRequest": {"instance_name": 1, "skip_cache_lookup": 3, "action_digest": 6,
            "execution_policy": 7, "results_cache_policy": 8, "digest_function": 9,
            "inline_stdout": 10, "inline_stderr": 11, "inline_output_files": 12},
        "LogFile": {"digest": 1, "human_readable": 2},
        "ExecuteResponse": {"result": 1, "cached_result": 2, "status": 3, "server_logs": 4,
            "message": 5},
        "ExecutionStage": {},
        "ExecuteOperationMetadata": {"stage": 1, "action_digest": 2, "stdout_stream_name": 3,
            "stderr_stream_name": 4, "partial_execution_metadata": 5, "digest_function": 6},
        "WaitExecutionRequest": {"name": 1},
        "GetActionResultRequest": {"instance_name": 1, "action_digest": 2, "inline_stdout": 3,
            "inline_stderr": 4, "inline_output_files": 5, "digest_function": 6},
        "UpdateActionResultRequest": {"instance_name": 1, "action_digest": 2, "action_result": 3,
            "results_cache_policy": 4, "digest_function": 5},
        "FindMissingBlobsRequest": {"instance_name": 1, "blob_digests": 2, "digest_function": 3},
        "FindMissingBlobsResponse": {"missing_blob_digests": 2},
        "BatchUpdateBlobsRequest": {"instance_name": 1, "requests": 2, "digest_function": 5},
        "BatchUpdateBlobsRequest.Request": {"digest": 1, "data": 2, "compressor": 3},
        "BatchUpdateBlobsResponse": {"responses": 1},
        "BatchUpdateBlobsResponse.Response": {"digest": 1, "status": 2},
        "BatchReadBlobsRequest": {"instance_name": 1, "digests": 2, "acceptable_compressors": 3,
            "digest_function": 4},
        "BatchReadBlobsResponse": {"responses": 1},
        "BatchReadBlobsResponse.Response": {"digest": 1, "data": 2, "compressor": 4, "status": 3},
        "GetTreeRequest": {"instance_name": 1, "root_digest": 2, "page_size": 3, "page_token": 4,
            "digest_function": 5},
        "GetTreeResponse": {"directories": 1, "next_page_token": 2},
        "GetCapabilitiesRequest": {"instance_name": 1},
        "ServerCapabilities": {"cache_capabilities": 1, "execution_capabilities": 2,
            "deprecated_api_version": 3, "low_api_version": 4, "high_api_version": 5},
        "DigestFunction": {},
        "ActionCacheUpdateCapabilities": {"update_enabled": 1},
        "PriorityCapabilities": {"priorities": 1},
        "PriorityCapabilities.PriorityRange": {"min_priority": 1, "max_priority": 2},
        "SymlinkAbsolutePathStrategy": {},
        "Compressor": {},
        "CacheCapabilities": {"digest_functions": 1, "action_cache_update_capabilities": 2,
            "cache_priority_capabilities": 3, "max_batch_total_size_bytes": 4,
            "symlink_absolute_path_strategy": 5, "supported_compressors": 6,
            "supported_batch_update_compressors": 7, "max_cas_blob_size_bytes": 8,
            "split_blob_support": 9, "splice_blob_support": 10, "fast_cdc_2020_params": 11,
            "rep_max_cdc_params": 12},
        "FastCdc2020Params": {"avg_chunk_size_bytes": 1, "seed": 2},
        "RepMaxCdcParams": {"min_chunk_size_bytes": 1, "horizon_size_bytes": 2},
        "ExecutionCapabilities": {"digest_function": 1, "exec_enabled": 2,
            "execution_priority_capabilities": 3, "supported_node_properties": 4,
            "digest_functions": 5},
        "ToolDetails": {"tool_name": 1, "tool_version": 2},
        "RequestMetadata": {"tool_details": 1, "action_id": 2, "tool_invocation_id": 3,
            "correlated_invocations_id": 4, "action_mnemonic": 5, "target_id": 6,
            "configuration_id": 7},
    },
    "semver": {
        "SemVer": {"major": 1, "minor": 2, "patch": 3, "prerelease": 4},
    },
    "status": {
        "Status": {"code": 1, "message": 2, "details": 3},
    },
    "operations": {
        "Operation": {"name": 1, "metadata": 2, "done": 3, "error": 4, "response": 5},
        "GetOperationRequest": {"name": 1},
        "CancelOperationRequest": {"name": 1},
    },
    "bytestream": {
        "ReadRequest": {"resource_name": 1, "read_offset": 2, "read_limit": 3},
        "ReadResponse": {"data": 10},
        "WriteRequest": {"resource_name": 1, "write_offset": 2, "finish_write": 3, "data": 10},
        "WriteResponse": {"committed_size": 1},
        "QueryWriteStatusRequest": {"resource_name": 1},
        "QueryWriteStatusResponse": {"committed_size": 1, "complete": 2},
    },
    "worker": {
        "Worker": {"devices": 1, "properties": 2, "configs": 3},
        "Worker.Property": {"key": 1, "value": 2},
        "Worker.Config": {"key": 1, "value": 2},
        "Device": {"handle": 1, "properties": 2},
        "Device.Property": {"key": 1, "value": 2},
    },
    "bots": {
        "BotSession": {"name": 1, "bot_id": 2, "status": 3, "worker": 4, "leases": 5,
            "expire_time": 6, "version": 7},
        "Lease": {"id": 7, "payload": 8, "result": 9, "state": 2, "status": 3, "requirements": 4,
            "expire_time": 5, "assignment": 1, "inline_assignment": 6},
        "AdminTemp": {"command": 1, "arg": 2},
        "CreateBotSessionRequest": {"parent": 1, "bot_session": 2},
        "UpdateBotSessionRequest": {"name": 1, "bot_session": 2, "update_mask": 3},
        "PostBotEventTempRequest": {"name": 1, "type": 2, "msg": 3},
    },
}
ENUMS = {
    (re_pb2, "Command.OutputDirectoryFormat"): {"TREE_ONLY": 0, "DIRECTORY_ONLY": 1,
                                                "TREE_AND_DIRECTORY": 2},
    (re_pb2, "ExecutionStage.Value"): {"UNKNOWN": 0, "CACHE_CHECK": 1, "QUEUED": 2, "EXECUTING": 3,
                                       "COMPLETED": 4},
    (re_pb2, "DigestFunction.Value"): {"UNKNOWN": 0, "SHA256": 1, "SHA1": 2, "MD5": 3, "VSO": 4,
                                       "SHA384": 5, "SHA512": 6, "MURMUR3": 7, "SHA256TREE": 8,
                                       "BLAKE3": 9, "GITSHA1": 10},
    (re_pb2, "SymlinkAbsolutePathStrategy.Value"): {"UNKNOWN": 0, "DISALLOWED": 1, "ALLOWED": 2},
    (re_pb2, "Compressor.Value"): {"IDENTITY": 0, "ZSTD": 1, "DEFLATE": 2, "BROTLI": 3},
    (bots_pb2, "BotStatus"): {"BOT_STATUS_UNSPECIFIED": 0, "OK": 1, "UNHEALTHY": 2,
                              "HOST_REBOOTING": 3, "BOT_TERMINATING": 4},
    (bots_pb2, "LeaseState"): {"LEASE_STATE_UNSPECIFIED": 0, "PENDING": 1, "ACTIVE": 2,
                               "COMPLETED": 4, "CANCELLED": 5},
    (bots_pb2, "AdminTemp.Command"): {"UNSPECIFIED": 0, "BOT_UPDATE": 1, "BOT_RESTART": 2,
                                      "BOT_TERMINATE": 3, "HOST_RESTART": 4},
    (bots_pb2, "PostBotEventTempRequest.Type"): {"UNSPECIFIED": 0, "INFO": 1, "ERROR": 2},
}


def message_descriptor(module, dotted: str):
    descriptor = module.DESCRIPTOR.message_types_by_name[dotted.split(".")[0]]
    for part in dotted.split(".")[1:]:
        descriptor = descriptor.nested_types_by_name[part]
    return descriptor


def enum_descriptor(module, dotted: str):
    *outer, name = dotted.split(".")
    if not outer:
        return module.DESCRIPTOR.enum_types_by_name[name]
    return message_descriptor(module, ".".join(outer)).enum_types_by_name[name]


@pytest.mark.parametrize("key", sorted(MODULES))
def test_field_numbers_are_buildgrids(key):
    module, package = MODULES[key]
    table = WORKER_FIELDS[key]
    assert module.DESCRIPTOR.package == package
    top_level = {name for name in table if "." not in name}
    if key == "remote_execution":
        top_level |= TREE_MESSAGES
    assert set(module.DESCRIPTOR.message_types_by_name) == top_level
    for name, fields in table.items():
        descriptor = message_descriptor(module, name)
        assert {f.name: f.number for f in descriptor.fields} == fields, name
        nested = {n.name for n in descriptor.nested_types if not n.GetOptions().map_entry}
        assert {f"{name}.{n}" for n in nested} <= set(table), name


@pytest.mark.parametrize("module, name", sorted(ENUMS, key=lambda k: k[1]),
                         ids=[k[1] for k in sorted(ENUMS, key=lambda k: k[1])])
def test_enum_values_are_buildgrids(module, name):
    descriptor = enum_descriptor(module, name)
    assert {v.name: v.number for v in descriptor.values} == ENUMS[module, name]


def test_operation_result_is_a_oneof_of_error_and_response():
    oneof = operations_pb2.Operation.DESCRIPTOR.oneofs_by_name["result"]
    assert {f.name for f in oneof.fields} == {"error", "response"}
    operation = operations_pb2.Operation(error=status_pb2.Status(code=5))
    operation.response.Pack(re_pb2.ExecuteResponse())
    assert operation.WhichOneof("result") == "response"


def test_the_modules_share_one_status_and_import_only_sandboxfs_and_well_known_protos():
    status = status_pb2.Status.DESCRIPTOR
    assert operations_pb2.Operation.DESCRIPTOR.fields_by_name["error"].message_type is status
    assert bots_pb2.Lease.DESCRIPTOR.fields_by_name["status"].message_type is status
    assert re_pb2.ExecuteResponse.DESCRIPTOR.fields_by_name["status"].message_type is status
    worker = bots_pb2.BotSession.DESCRIPTOR.fields_by_name["worker"].message_type
    assert worker is worker_pb2.Worker.DESCRIPTOR
    for module, _ in MODULES.values():
        for dependency in module.DESCRIPTOR.dependencies:
            assert dependency.name.startswith(("sandboxfs/backend/proto/", "google/protobuf/")), (
                module.DESCRIPTOR.name, dependency.name)


def test_a_lease_carries_an_action_under_reapis_type_url():
    action = re_pb2.Action(command_digest=re_pb2.Digest(hash="c" * 64, size_bytes=142),
                           input_root_digest=re_pb2.Digest(hash="d" * 64, size_bytes=80),
                           timeout=duration_pb2.Duration(seconds=30), do_not_cache=True)
    lease = bots_pb2.Lease(id="main/op-1", state=bots_pb2.PENDING)
    lease.payload.Pack(action)
    assert lease.payload.type_url == "type.googleapis.com/build.bazel.remote.execution.v2.Action"
    parsed = bots_pb2.Lease.FromString(lease.SerializeToString())
    assert parsed.payload.Is(re_pb2.Action.DESCRIPTOR)
    unpacked = re_pb2.Action()
    assert parsed.payload.Unpack(unpacked)
    assert unpacked == action and unpacked.timeout.seconds == 30
    result = bots_pb2.Lease(id="main/op-1", state=bots_pb2.COMPLETED)
    result.result.Pack(re_pb2.ActionResult(exit_code=0))
    assert result.result.type_url.endswith("/build.bazel.remote.execution.v2.ActionResult")


def test_a_bot_session_round_trips():
    session = bots_pb2.BotSession(
        name="main/bots/1", bot_id="host-1", status=bots_pb2.OK, version="sandboxfs",
        worker=worker_pb2.Worker(
            devices=[worker_pb2.Device(handle="host-1", properties=[
                worker_pb2.Device.Property(key="OSFamily", value="linux")])],
            properties=[worker_pb2.Worker.Property(key="OSFamily", value="linux")]),
        leases=[bots_pb2.Lease(id="l", state=bots_pb2.ACTIVE,
                               status=status_pb2.Status(code=0, message="ok"))])
    request = bots_pb2.UpdateBotSessionRequest(name=session.name, bot_session=session)
    request.update_mask.paths.append("leases")
    parsed = bots_pb2.UpdateBotSessionRequest.FromString(request.SerializeToString())
    assert parsed == request
    assert parsed.bot_session.worker.devices[0].properties[0].value == "linux"
    assert parsed.bot_session.leases[0].state == bots_pb2.ACTIVE


def test_a_command_and_an_action_result_round_trip():
    command = re_pb2.Command(
        arguments=["/bin/sh", "-c", "echo hi > out"], output_paths=["out", "dir"],
        environment_variables=[re_pb2.Command.EnvironmentVariable(name="PATH", value="/bin")],
        working_directory="pkg", output_directory_format=re_pb2.Command.DIRECTORY_ONLY)
    assert re_pb2.Command.FromString(command.SerializeToString()) == command
    result = re_pb2.ActionResult(
        exit_code=1, stdout_raw=b"hi\n", stderr_digest=re_pb2.Digest(hash="e", size_bytes=9),
        output_files=[re_pb2.OutputFile(path="out", digest=re_pb2.Digest(hash="f", size_bytes=3),
                                        is_executable=True, contents=b"hi\n")],
        output_directories=[re_pb2.OutputDirectory(
            path="dir", tree_digest=re_pb2.Digest(hash="t", size_bytes=4),
            root_directory_digest=re_pb2.Digest(hash="r", size_bytes=5))],
        output_symlinks=[re_pb2.OutputSymlink(path="link", target="out")],
        execution_metadata=re_pb2.ExecutedActionMetadata(worker="host-1"))
    result.execution_metadata.worker_start_timestamp.seconds = 1
    parsed = re_pb2.ActionResult.FromString(result.SerializeToString())
    assert parsed == result
    assert parsed.output_files[0].contents == b"hi\n"
    response = re_pb2.ExecuteResponse(result=result, cached_result=True,
                                      server_logs={"log": re_pb2.LogFile(human_readable=True)})
    assert re_pb2.ExecuteResponse.FromString(response.SerializeToString()) == response


@pytest.mark.parametrize("message, wire", [
    (re_pb2.Digest(hash="ab", size_bytes=3), b"\x0a\x02ab\x10\x03"),
    # state is field 2 (varint), id field 7 (length-delimited: tag 0x3a)
    (bots_pb2.Lease(id="x", state=bots_pb2.ACTIVE), b"\x10\x02\x3a\x01x"),
    # payload is field 8: tag 0x42 around an Any (type_url 1, value 2)
    (bots_pb2.Lease(payload=any_pb2.Any(type_url="u", value=b"v")), b"\x42\x06\x0a\x01u\x12\x01v"),
    # bot_id 2, status 3 (BotStatus OK = 1)
    (bots_pb2.BotSession(bot_id="b", status=bots_pb2.OK), b"\x12\x01b\x18\x01"),
    # skip_cache_lookup 3, action_digest 6 (tag 0x32), digest_function 9 (tag 0x48, SHA256 = 1)
    (re_pb2.ExecuteRequest(skip_cache_lookup=True, action_digest=re_pb2.Digest(hash="a", size_bytes=1),
                           digest_function=re_pb2.DigestFunction.SHA256),
     b"\x18\x01\x32\x05\x0a\x01a\x10\x01\x48\x01"),
    # timeout 6 (a Duration of 1 s), do_not_cache 7, salt 9 (tag 0x4a)
    (re_pb2.Action(timeout=duration_pb2.Duration(seconds=1), do_not_cache=True, salt=b"s"),
     b"\x32\x02\x08\x01\x38\x01\x4a\x01s"),
    # arguments 1, working_directory 6 (tag 0x32), output_paths 7 (tag 0x3a)
    (re_pb2.Command(arguments=["a"], working_directory="w", output_paths=["p"]),
     b"\x0a\x01a\x32\x01w\x3a\x01p"),
    # exit_code 4 (tag 0x20), stdout_raw 5 (tag 0x2a)
    (re_pb2.ActionResult(exit_code=1, stdout_raw=b"x"), b"\x20\x01\x2a\x01x"),
    # name 1, done 3, error 4 (tag 0x22) holding code 5
    (operations_pb2.Operation(name="o", done=True, error=status_pb2.Status(code=5)),
     b"\x0a\x01o\x18\x01\x22\x02\x08\x05"),
    # ByteStream's data is field 10 (tag 0x52)
    (bytestream_pb2.ReadResponse(data=b"z"), b"\x52\x01z"),
    (bytestream_pb2.WriteRequest(resource_name="r", finish_write=True, data=b"d"),
     b"\x0a\x01r\x18\x01\x52\x01d"),
    # FindMissingBlobsResponse's only field is number 2
    (re_pb2.FindMissingBlobsResponse(missing_blob_digests=[re_pb2.Digest(hash="h")]),
     b"\x12\x03\x0a\x01h"),
], ids=lambda value: None if isinstance(value, bytes) else type(value).__name__)
def test_messages_have_the_bytes_buildgrid_reads(message, wire):
    assert message.SerializeToString(deterministic=True) == wire
    assert type(message).FromString(wire) == message
