"""The wire schemas sandboxfs speaks with Bazel and remote-execution engines, vendored:
``.proto`` sources and their generated Python, with upstream's packages and field numbers.

* ``sandbox.proto`` -> ``sandbox_pb2``: Bazel's sandbox-backend protocol (``sandboxfs serve``).
* ``remote_execution.proto`` -> ``remote_execution_pb2``: REAPI v2, a subset: the Merkle tree
  messages (Digest, Directory, ...) and what a worker and a client exchange (Action, Command,
  ActionResult, Tree, the CAS batch calls, Execute); ``semver.proto`` for its capabilities.
* ``bots.proto``, ``worker.proto``: the Remote Workers API (bot sessions, leases;
  ``sandboxfs worker``); ``bytestream.proto``, ``operations.proto``, ``status.proto``: the
  Google APIs they use (ByteStream, long-running operations, rpc Status).

No services are declared: callers name gRPC methods by path (``sandboxfs.worker.engine``).
The ``*_pb2`` modules are generated (``python -m sandboxfs.backend.proto.generate``) and
committed; never edit them by hand.  This package imports none of them on its own, so that
the generator runs even while they are stale.
"""
