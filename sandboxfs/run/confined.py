"""A confined command as a program of its own, for threaded callers (``sandboxfs worker
--confine``): the command in namespaces of its own, seeing only its sandbox.

Forking a threaded process (the worker: grpc, fetch threads, trio) to set
up namespaces is unsafe, so each confined action runs through this small
program in a fresh interpreter: ``python -m sandboxfs.run.confined SPEC``,
SPEC being JSON with ``root`` (an empty scratch directory), ``cwd``,
``argv``, ``env`` and ``sandbox`` (the sandbox directory).  It imports only
``confine``: a ``/bin/true`` costs about 50 ms in all (interpreter, imports,
namespaces and ~270 mounts), against 140 ms through ``run.command``'s
imports.  It starts the command with ``confine.spawn`` in a new root
holding only:

* the sandbox, writable, at its own path (so the working directory is the
  same path inside as outside);
* the host's system directories and ``/etc`` but its secrets, read-only
  (what ``sandboxfs run --map-system`` maps);
* a private ``/proc``, a minimal ``/dev``, an empty ``/tmp``, and no network.

Its exit status is the command's (128 + N for signal N).  When setting up
fails it says why on stderr, which is the action's stderr, and exits with
``SETUP_FAILED``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

from sandboxfs.run import confine


def binds_for(sandbox: str) -> list[confine.Bind]:
    """The sandbox, writable, then the system directories read-only."""
    return [(sandbox, sandbox, True)] + [(path, path, False) for path in confine.system_paths()]


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    spec = json.loads(args[0])
    pid, errors = confine.spawn(spec["root"], spec["cwd"], spec["argv"], spec["env"],
                                network=False, binds=binds_for(spec["sandbox"]))
    why = b""
    while chunk := os.read(errors, 4096):
        why += chunk
    os.close(errors)
    _pid, status = os.waitpid(pid, 0)
    if why:
        sys.stderr.write(f"sandboxfs: cannot confine the command: "
                         f"{why.decode(errors='replace').strip()}\n")
        return confine.SETUP_FAILED
    return confine.exit_code(status)


if __name__ == "__main__":
    sys.exit(main())
