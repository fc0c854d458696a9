"""Every error type of sandboxfs that carries a protocol code or an exit status.

Two families, because they travel different ways:

* ``SandboxfsError`` and its subclasses are *user* errors: bad input (a
  malformed mapping, a path that does not exist, a name already taken) or a
  failure outside our code (the kernel refused the mount).  Each carries a
  stable ``code`` (what the control protocol sends; docs/protocol.md §8), an
  ``exit_status`` (what a command line exits with), and a message that names
  the request, the path and the reason.  The command lines print them
  without a traceback.
* Errors of the kernel interface are plain ``OSError`` with an errno; the
  transports answer them (``sandboxfs.fs.interface.errno_of``).

The exit statuses of every command line are defined here and nowhere else.
This module imports nothing from the rest of the package.
"""

from __future__ import annotations

import errno as _errno
import os

EXIT_OK = 0
EXIT_RUNTIME = 1  # a path, the kernel, a server: something outside the command line
EXIT_USAGE = 2  # the command line itself is wrong
# ``sandboxfs run`` follows env(1) and timeout(1): the command's own status,
# 128 + N for a signal, and these for what is not the command's.
EXIT_RUN_TIMEOUT = 124
EXIT_RUN_FAILED = 125  # sandboxfs itself failed
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127
EXIT_INTERRUPTED = 130  # SIGINT before a mount watched signals


class SandboxfsError(Exception):
    """Base of every error caused by bad input or by the world, rather than by a bug."""

    code = "error"
    exit_status = EXIT_RUNTIME

    def __init__(self, message: str, *, details: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


# -- bad requests (the control socket answers them; the connection stays open) ------


class MappingError(SandboxfsError):
    """A mapping is malformed or cannot be applied (bad path, missing target, collision)."""

    code = "invalid_mapping"


class AlreadyMappedError(MappingError):
    """A path is already mapped, or is a scaffold directory of other mappings."""


class RefusedError(MappingError):
    """A sandboxfs 0.2 request or mapping is refused; the message is 0.2's wording."""


class NotFoundError(SandboxfsError):
    """A sandbox or mapping that a request names does not exist."""

    code = "not_found"


class SandboxExistsError(SandboxfsError):
    """A sandbox with that name already exists."""

    code = "exists"


class InvalidRequestError(SandboxfsError):
    """A request is well framed but its content is wrong (types, names, fields)."""

    code = "invalid_request"


class MissingGroupError(SandboxfsError):
    """A request named groups by digest that the server no longer holds.

    The request changed nothing; ``details["digests"]`` lists every missing
    digest (bytes), and the client sends those groups in full.
    """

    code = "missing_group"

    def __init__(self, message: str, digests: list[bytes]) -> None:
        super().__init__(message, details={"digests": list(digests)})
        self.digests = list(digests)


class ServerError(SandboxfsError):
    """The server hit a bug while answering; it keeps serving."""

    code = "internal"


# -- broken streams (the connection or the stream ends) --------------------------------


class ProtocolError(SandboxfsError):
    """The byte stream cannot be decoded (or the peer broke the protocol): it must close."""

    code = "invalid_framing"


class TooLargeError(ProtocolError):
    """A message is over the size limit; it is refused before it is buffered."""

    code = "too_large"


class StreamError(ProtocolError):
    """The 0.2 JSON stream cannot be parsed: answered without an id, and reading stops."""


class ControlTimeoutError(ProtocolError):
    """A message was begun and not finished (or its answer not read) in time."""

    code = "timeout"


class PermissionDeniedError(SandboxfsError):
    """The peer's uid may not use the control socket."""

    code = "permission_denied"


# -- the command lines and the world -------------------------------------------------


class UsageError(SandboxfsError):
    """The command line is wrong."""

    code = "usage"
    exit_status = EXIT_USAGE


class MountError(SandboxfsError):
    """The mount point is unusable or the kernel refused the mount."""

    code = "mount"


class ControlError(SandboxfsError):
    """The control socket cannot be set up."""

    code = "control"


class ChildMountError(SandboxfsError):
    """A child ``sandboxfs mount`` process failed to start or to stop."""

    code = "child_mount"


class RunError(SandboxfsError):
    """``sandboxfs run`` failed outside the command (its report, its sandbox)."""

    code = "run"
    exit_status = EXIT_RUN_FAILED


class RuntimeFailure(SandboxfsError):
    """The 0.2 command line failed outside its arguments (a path, the mount)."""

    code = "runtime"


_BY_CODE = {
    cls.code: cls
    for cls in (
        MappingError, NotFoundError, SandboxExistsError, InvalidRequestError, ServerError,
        ProtocolError, TooLargeError, ControlTimeoutError, PermissionDeniedError,
    )
}


def error_for_code(code: str, message: str, details: dict | None = None) -> SandboxfsError:
    """The typed exception for an error code received from the control socket."""
    if code == MissingGroupError.code:
        digests = (details or {}).get("digests")
        return MissingGroupError(message, digests if isinstance(digests, list) else [])
    cls = _BY_CODE.get(code, SandboxfsError)
    error = cls(message, details=details)
    if cls is SandboxfsError:
        error.code = code
    return error


def errno_name(number: int) -> str:
    """Return ``"ENOENT (No such file or directory)"`` for an errno number."""
    name = _errno.errorcode.get(number, f"errno {number}")
    return f"{name} ({os.strerror(number)})"


def describe_oserror(exc: OSError) -> str:
    """Say an OSError with its errno name, e.g. ``ENOENT (No such file or directory)``."""
    if exc.errno is None:
        return str(exc)
    return errno_name(exc.errno)
