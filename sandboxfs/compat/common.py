"""What every part of the 0.2 front end shares: exit codes, defaults, limits,
and the error for runtime failures (exit status 1)."""

from __future__ import annotations

PROGRAM = "sandboxfs"
STDIO = "-"  # --input/--output value for stdin/stdout
DEFAULT_TTL = "60s"
# Each worker is a trio task; more than this only costs memory.
MAX_RECONFIG_WORKERS = 256
# Requests with more mappings than this are translated in a worker thread.
OFF_LOOP_MAPPINGS = 512
U32_MAX = 2**32 - 1
USIZE_MAX = 2**64 - 1
