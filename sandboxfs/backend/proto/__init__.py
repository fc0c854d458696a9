"""The wire schema of Bazel's sandbox-backend protocol, vendored: ``.proto`` sources and their
generated Python.

* ``sandbox.proto`` -> ``sandbox_pb2``: package ``bazel.sandbox`` (Request, Response, Push, ...).
* ``remote_execution.proto`` -> ``remote_execution_pb2``: the REAPI v2 messages of a Merkle
  input tree (Digest, Directory, FileNode, DirectoryNode, SymlinkNode, node properties), with
  REAPI's package and field numbers.

The ``*_pb2`` modules are generated (``python -m sandboxfs.backend.proto.generate``) and
committed; never edit them by hand.  This package imports neither on its own, so that the
generator runs even while they are stale.
"""
