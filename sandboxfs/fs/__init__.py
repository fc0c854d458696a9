"""The filesystem operations: lookup, open, read, readdir, ... on the tree and the host.

Owns inode numbers, open handles, host I/O and access tracking.  Knows no
transport: ``interface.py`` is the contract a transport (``sandboxfs.fuse``)
serves.  May import ``sandboxfs.tree`` and ``sandboxfs.errors``; never
pyfuse3, and never trio outside what runs off the serving loop.
"""
