"""sandboxfs: a FUSE filesystem that serves build sandboxes from an in-memory mapping tree.

The public names load on first use (PEP 562): a program that only needs a
submodule (``python -m sandboxfs.run.confined``, started once per confined
action) does not pay for attrs and the mapping tree.
"""

from __future__ import annotations

__version__ = "0.3.0"

__all__ = ["Mapping", "MappingError", "SandboxfsError", "__version__"]


def __getattr__(name: str):
    if name == "Mapping":
        from sandboxfs.tree.mapping import Mapping

        return Mapping
    if name in ("MappingError", "SandboxfsError"):
        from sandboxfs import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'sandboxfs' has no attribute {name!r}")
