"""What every part of the 0.2 front end shares: defaults, limits, and how OS
errors read (as 0.2's Rust io::Error did)."""

from __future__ import annotations

import os

PROGRAM = "sandboxfs"
STDIO = "-"  # --input/--output value for stdin/stdout
DEFAULT_TTL = "60s"
# Each worker is a trio task; more than this only costs memory.
MAX_RECONFIG_WORKERS = 256
# Requests with more mappings than this are translated in a worker thread.
OFF_LOOP_MAPPINGS = 512
# After a shutdown signal, how long a busy mount is kept (serving, retrying a
# plain unmount every second) before it is detached lazily; the variable
# overrides it (seconds; 0 detaches at once).  See docs/compat.md.
UNMOUNT_TIMEOUT = 30.0
UNMOUNT_TIMEOUT_VARIABLE = "SANDBOXFS_UNMOUNT_TIMEOUT"
U32_MAX = 2**32 - 1
USIZE_MAX = 2**64 - 1


def os_error_text(exc: OSError) -> str:
    """An OSError as Rust's io::Error shows it: ``No such file or directory (os error 2)``."""
    if exc.errno is None:
        return str(exc)
    return f"{os.strerror(exc.errno)} (os error {exc.errno})"
