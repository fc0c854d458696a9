"""Regenerate the committed ``*_pb2.py`` and ``*_pb2.pyi`` from the ``.proto`` files beside them.

    python -m sandboxfs.backend.proto.generate            # rewrite them in place
    python -m sandboxfs.backend.proto.generate --out DIR  # write DIR/sandboxfs/backend/proto/...

The generated code is committed so that running sandboxfs needs only the
``protobuf`` runtime; regenerating needs ``grpcio-tools`` (the ``test`` extra).
Its bundled protoc is pinned (``GRPCIO_TOOLS_VERSION``) because another protoc
writes other bytes and stamps another minimum runtime version into the code:
``tests/unit/test_backend_protos.py`` regenerates into a temporary directory and
compares byte for byte, so an edited ``.proto`` without regenerated modules fails.

The protos are compiled with the checkout's root as the include path, so their
import paths (and the generated Python imports) are ``sandboxfs/backend/proto/...``.
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata, resources
from pathlib import Path

GRPCIO_TOOLS_VERSION = "1.84.0"
PROTO_DIR = Path(__file__).resolve().parent
SOURCE_ROOT = PROTO_DIR.parents[2]  # the directory that holds the ``sandboxfs`` package
PROTOS = (
    "remote_execution.proto", "sandbox.proto",
    # what a remote-execution worker needs besides REAPI: BuildGrid's Bots API and the
    # googleapis messages REAPI embeds
    "bots.proto", "bytestream.proto", "operations.proto", "semver.proto", "status.proto",
    "worker.proto",
)


def generated_names() -> list[str]:
    """The file names protoc writes for ``PROTOS``, in a stable order."""
    return sorted(f"{Path(proto).stem}_pb2{suffix}" for proto in PROTOS for suffix in (".py", ".pyi"))


def generate(out_root: Path) -> list[Path]:
    """Compile ``PROTOS`` into ``out_root/sandboxfs/backend/proto/``; return the files written.

    Raises RuntimeError if grpcio-tools is missing or not the pinned version,
    or if protoc fails (its messages are on stderr).
    """
    try:
        version = metadata.version("grpcio-tools")
        from grpc_tools import protoc
    except (metadata.PackageNotFoundError, ImportError):
        raise RuntimeError(
            f"regenerating the protos needs grpcio-tools=={GRPCIO_TOOLS_VERSION} "
            "(pip install -e '.[test]')"
        ) from None
    if version != GRPCIO_TOOLS_VERSION:
        raise RuntimeError(
            f"grpcio-tools {version} is installed; the committed code was made with "
            f"{GRPCIO_TOOLS_VERSION} (another protoc writes other bytes)"
        )
    well_known = resources.files("grpc_tools") / "_proto"  # google/protobuf/*.proto
    relative = PROTO_DIR.relative_to(SOURCE_ROOT)
    out_root.mkdir(parents=True, exist_ok=True)
    status = protoc.main([
        "protoc", f"-I{SOURCE_ROOT}", f"-I{well_known}",
        f"--python_out={out_root}", f"--pyi_out={out_root}",
        *(str(relative / proto) for proto in PROTOS),
    ])
    if status != 0:
        raise RuntimeError(f"protoc failed with status {status} compiling {', '.join(PROTOS)}")
    return [out_root / relative / name for name in generated_names()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandboxfs.backend.proto.generate",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SOURCE_ROOT,
                        help="root to write sandboxfs/backend/proto/ under (default: in place)")
    args = parser.parse_args(argv)
    try:
        written = generate(args.out)
    except RuntimeError as exc:
        print(f"generate: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
