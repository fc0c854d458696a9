"""Unit tests of sandboxfs.backend.proto: the committed generated code, and the wire schema it encodes.

* Regenerating with the pinned grpcio-tools gives the committed files byte
  for byte (an edited .proto without regenerated modules fails here).
* The runtime range in pyproject.toml starts at the version the code was
  generated for (the generated modules refuse an older runtime at import).
* Field numbers, oneofs and enum values are Bazel's and REAPI's, checked one
  by one: a number changed by mistake still compiles but breaks the wire.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from sandboxfs.backend.proto import generate, remote_execution_pb2, sandbox_pb2

PROTO_DIR = Path(generate.__file__).parent
PYPROJECT = generate.SOURCE_ROOT / "pyproject.toml"


def test_regenerating_gives_the_committed_files_byte_for_byte(tmp_path):
    written = generate.generate(tmp_path)
    assert [path.name for path in written] == generate.generated_names()
    for path in written:
        assert path.read_bytes() == (PROTO_DIR / path.name).read_bytes(), (
            f"{path.name} is stale: run python -m sandboxfs.backend.proto.generate")
    on_disk = sorted(p.name for p in PROTO_DIR.iterdir() if re.fullmatch(r".*_pb2\.pyi?", p.name))
    assert on_disk == generate.generated_names()  # nothing generated from a removed .proto


def test_another_grpcio_tools_is_refused_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(generate.metadata, "version", lambda name: "0.0.1")
    with pytest.raises(RuntimeError, match="grpcio-tools 0.0.1 is installed; the committed code "
                                           f"was made with {generate.GRPCIO_TOOLS_VERSION}"):
        generate.generate(tmp_path)
    assert generate.main(["--out", str(tmp_path)]) == 1
    assert not any(tmp_path.iterdir())


def test_the_runtime_range_matches_the_generated_code():
    header = (PROTO_DIR / "sandbox_pb2.py").read_text()
    generated = re.search(r"# Protobuf Python Version: (\d+)\.(\d+)\.(\d+)", header).groups()
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    protobuf = next(dep for dep in dependencies if dep.startswith("protobuf"))
    major = int(generated[0])
    assert protobuf == f"protobuf>={'.'.join(generated)},<{major + 1}"
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]["test"]
    assert f"grpcio-tools=={generate.GRPCIO_TOOLS_VERSION}" in extras


SANDBOX_FIELDS = {
    "Request": {"rid": 1, "sandbox_id": 2, "create": 3, "destroy": 4, "collect": 5, "negotiate": 6,
                "push": 7},
    "Response": {"rid": 1, "create": 2, "destroy": 3, "collect": 4, "negotiate": 5},
    "Error": {"message": 1},
    "Negotiate": {"options": 1, "versions": 2},
    "Negotiate.Result": {"ok": 1, "error": 2},
    "Negotiate.Result.Ok": {"version": 1},
    "Push": {"blobs": 1, "content": 2},
    "Content": {"inline": 1, "location": 2, "retention": 3},
    "Create": {"manifest": 1},
    "Manifest": {"mnemonic": 1, "exec_root": 2, "hash_function": 3, "input_root_digest": 4, "outputs": 5,
                 "writable_dirs": 6, "confinement_setting": 7},
    "Output": {"type": 1, "dest": 2},
    "ConfinementSetting": {"writable_paths": 1, "inaccessible_paths": 2, "allow_network": 3},
    "Create.Result": {"ok": 1, "missing_content": 2, "error": 3},
    "Create.Result.Ok": {"path": 1, "custom": 2, "unconfined": 3},
    "Create.Result.MissingContent": {"digest_hashes": 1},
    "CustomConfinement": {"name": 1, "wrapper": 2, "env": 3},
    "Unconfined": {},
    "Collect": {"exec_root": 1},
    "Collect.Result": {"ok": 1, "error": 2},
    "Collect.Result.Ok": {},
    "Destroy": {},
    "Destroy.Result": {"ok": 1, "error": 2},
    "Destroy.Result.Ok": {},
}
REAPI_FIELDS = {
    "Digest": {"hash": 1, "size_bytes": 2},
    "Directory": {"files": 1, "directories": 2, "symlinks": 3, "node_properties": 5},
    "FileNode": {"name": 1, "digest": 2, "is_executable": 4, "node_properties": 6},
    "DirectoryNode": {"name": 1, "digest": 2},
    "SymlinkNode": {"name": 1, "target": 2, "node_properties": 4},
    "NodeProperty": {"name": 1, "value": 2},
    "NodeProperties": {"properties": 1, "mtime": 2, "unix_mode": 3},
}
ONEOFS = {
    "bazel.sandbox.Request": ("op", {"create", "destroy", "collect", "negotiate", "push"}),
    "bazel.sandbox.Response": ("result", {"create", "destroy", "collect", "negotiate"}),
    "bazel.sandbox.Content": ("source", {"inline", "location"}),
    "bazel.sandbox.Create.Result": ("outcome", {"ok", "missing_content", "error"}),
    "bazel.sandbox.Create.Result.Ok": ("confinement", {"custom", "unconfined"}),
    "bazel.sandbox.Negotiate.Result": ("outcome", {"ok", "error"}),
}


def message_descriptor(module, dotted: str):
    descriptor = module.DESCRIPTOR.message_types_by_name[dotted.split(".")[0]]
    for part in dotted.split(".")[1:]:
        descriptor = descriptor.nested_types_by_name[part]
    return descriptor


@pytest.mark.parametrize("module, package, table, whole", [
    (sandbox_pb2, "bazel.sandbox", SANDBOX_FIELDS, True),
    # only the tree messages: tests/unit/test_worker_protos.py checks the rest of the file
    (remote_execution_pb2, "build.bazel.remote.execution.v2", REAPI_FIELDS, False),
], ids=["sandbox", "reapi"])
def test_field_numbers_are_the_protocols(module, package, table, whole):
    assert module.DESCRIPTOR.package == package
    top_level = {name for name in table if "." not in name}
    declared = set(module.DESCRIPTOR.message_types_by_name)
    assert declared == top_level if whole else top_level <= declared
    for name, fields in table.items():
        descriptor = message_descriptor(module, name)
        assert {f.name: f.number for f in descriptor.fields} == fields, name


@pytest.mark.parametrize("full_name", sorted(ONEOFS))
def test_oneofs_are_the_protocols(full_name):
    name, members = ONEOFS[full_name]
    descriptor = message_descriptor(sandbox_pb2, full_name.removeprefix("bazel.sandbox."))
    assert {f.name for f in descriptor.oneofs_by_name[name].fields} == members


def test_enum_values_are_the_protocols():
    assert dict(sandbox_pb2.Version.items()) == {"VERSION_1": 0}
    assert dict(sandbox_pb2.Retention.items()) == {"RETENTION_REUSE": 0, "RETENTION_SINGLE_USE": 1}


def test_messages_have_the_bytes_bazel_sends():
    # field 1 varint 5, then field 7 (push) length-delimited, holding field 1 (a blobs entry)
    request = sandbox_pb2.Request(rid=5, push=sandbox_pb2.Push(blobs={"k": b"v"}))
    assert request.SerializeToString() == b"\x08\x05\x3a\x08\x0a\x06\x0a\x01k\x12\x01v"
    response = sandbox_pb2.Response(rid=2, create=sandbox_pb2.Create.Result(
        missing_content=sandbox_pb2.Create.Result.MissingContent(digest_hashes=["d"])))
    assert response.SerializeToString() == b"\x08\x02\x12\x05\x12\x03\x0a\x01d"
    node = remote_execution_pb2.FileNode(name="a", is_executable=True)
    assert node.SerializeToString() == b"\x0a\x01a\x20\x01"  # is_executable is field 4
