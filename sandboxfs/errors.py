"""The error types of sandboxfs.

Two families, because they travel different ways:

* ``SandboxfsError`` and its subclasses are *user* errors: bad input (a
  malformed mapping, a path that does not exist, a name already taken).  They
  carry a stable ``code`` (used by the control protocol) and a message that
  names the request, the path and the reason.  The CLI prints them without a
  traceback.
* Errors of the kernel interface are plain ``OSError``/``pyfuse3.FUSEError``
  with an errno; they never leave ``ops.py`` as anything but ``FUSEError``.

This module imports nothing from the rest of the package.
"""

from __future__ import annotations

import errno as _errno
import os


class SandboxfsError(Exception):
    """Base of every error caused by bad input rather than by a bug."""

    code = "error"

    def __init__(self, message: str, *, details: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class MappingError(SandboxfsError):
    """A mapping is malformed or cannot be applied (bad path, missing target, collision)."""

    code = "invalid_mapping"


class AlreadyMappedError(MappingError):
    """A path is already mapped, or is a scaffold directory of other mappings."""


class NotFoundError(SandboxfsError):
    """A sandbox or mapping that a request names does not exist."""

    code = "not_found"


class SandboxExistsError(SandboxfsError):
    """A sandbox with that name already exists."""

    code = "exists"


class InvalidRequestError(SandboxfsError):
    """A request is well framed but its content is wrong (types, names, fields)."""

    code = "invalid_request"


class UsageError(SandboxfsError):
    """The command line is wrong; the CLI exits with status 2."""

    code = "usage"


class TooLargeError(SandboxfsError):
    """A control message is over the server's size limit (the connection closes)."""

    code = "too_large"


class ProtocolError(SandboxfsError):
    """The byte stream could not be decoded (the connection closes)."""

    code = "invalid_framing"


class PermissionDeniedError(SandboxfsError):
    """The peer's uid may not use the control socket."""

    code = "permission_denied"


class ServerError(SandboxfsError):
    """The server hit a bug while answering; it keeps serving."""

    code = "internal"


_BY_CODE = {
    cls.code: cls
    for cls in (
        MappingError, NotFoundError, SandboxExistsError, InvalidRequestError,
        TooLargeError, ProtocolError, PermissionDeniedError, ServerError,
    )
}


def error_for_code(code: str, message: str, details: dict | None = None) -> SandboxfsError:
    """The typed exception for an error code received from the control socket."""
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
