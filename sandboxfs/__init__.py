"""sandboxfs: a FUSE filesystem that serves build sandboxes from an in-memory mapping tree."""

from sandboxfs.errors import MappingError, SandboxfsError
from sandboxfs.tree.mapping import Mapping

__version__ = "0.3.0"

__all__ = ["Mapping", "MappingError", "SandboxfsError", "__version__"]
