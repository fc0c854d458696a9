"""The back end for Bazel's sandbox-backend protocol (``sandboxfs serve``): its foundation.

Owns the vendored wire schema (``proto``), the varint-delimited framing of the
stdin/stdout stream (``wire``), validating and indexing the REAPI Merkle trees that
describe sandbox inputs (``merkle``), and the local store of their file content by
digest (``store``).  Pure: imports neither pyfuse3 nor trio, and knows nothing of the
mapping tree (``sandboxfs.tree``) or of the kernel; serving a sandbox from these is a
front end's job, built on top.
"""
