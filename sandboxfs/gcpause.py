"""Pausing Python's cyclic garbage collector around allocation-heavy work.

Building or decoding a large request allocates an object or two per mapping.
Those allocations trigger collections, and a collection of the older
generations scans every object in the process: in a build tool, or in a
server holding a million mappings, that is tens of milliseconds each time,
for nothing, since what is being built is not garbage.
"""

from __future__ import annotations

import contextlib
import gc
from typing import Iterator


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Disable the cyclic GC inside the block; restore the caller's setting after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
