"""The Mapping value: a path inside the mount, the host path behind it, writable or not.

Pure: no I/O here.  A Mapping that exists has been validated, so the tree can
trust its fields.  Paths are ``bytes`` throughout so that file names that are
not UTF-8 work; ``str`` input is encoded with ``os.fsencode``.
"""

from __future__ import annotations

import os

import attrs

from sandboxfs.errors import MappingError

PathLike = str | bytes

# Path components that would let two spellings name one node, or climb out.
BAD_COMPONENTS = frozenset((b"", b".", b".."))


_CONTROL_ESCAPES = {
    **{code: f"\\x{code:02x}" for code in (*range(32), 0x7F)},
    # C1 controls as \u0080..: "\x80" already means an undecodable byte.
    **{code: f"\\u{code:04x}" for code in range(0x80, 0xA0)},
}


def display(path: bytes) -> str:
    """Render a bytes path for messages and logs: undecodable bytes and control
    characters (NUL, newline, ...) show as ``\\xff`` escapes.

    The result is always valid UTF-8, so it can travel in any message.
    """
    return path.decode("utf-8", "backslashreplace").translate(_CONTROL_ESCAPES)


def split_inner_path(path: PathLike) -> tuple[bytes, ...]:
    """Split and check a path inside the mount (or inside a sandbox).

    Returns its components; ``()`` is the root.  The path must be absolute;
    one trailing slash is tolerated.  Empty components (``//``), ``.``, ``..``
    and NUL bytes are refused, because each of them would let two spellings
    name one node or escape the sandbox.
    """
    raw = os.fsencode(path)
    if not raw.startswith(b"/"):
        raise MappingError(f"path '{display(raw)}' is not absolute")
    if b"\0" in raw:
        raise MappingError(f"path '{display(raw)}' contains a NUL byte")
    if raw == b"/":
        return ()
    body = raw[1:-1] if raw.endswith(b"/") else raw[1:]
    parts = tuple(body.split(b"/"))
    for part in parts:
        if part in BAD_COMPONENTS:
            what = "an empty component" if not part else f"a {part.decode()!r} component"
            raise MappingError(f"path '{display(raw)}' has {what}")
    return parts


def check_underlying(path: PathLike) -> bytes:
    """Check a host path: absolute, no NUL; trailing slashes are dropped."""
    raw = os.fsencode(path)
    if not raw.startswith(b"/"):
        raise MappingError(f"underlying path '{display(raw)}' is not absolute")
    if b"\0" in raw:
        raise MappingError(f"underlying path '{display(raw)}' contains a NUL byte")
    stripped = raw.rstrip(b"/")
    return stripped or b"/"


@attrs.frozen(slots=True)
class Mapping:
    """One entry of a sandbox: ``path`` (inside it) shows ``underlying`` (on the host).

    Build it with :meth:`Mapping.of`, which validates; the constructor trusts
    its arguments (the protocol decoder uses it after its own checks).
    """

    components: tuple[bytes, ...]
    underlying: bytes
    writable: bool = False

    @classmethod
    def of(cls, path: PathLike, underlying: PathLike, writable: bool = False) -> "Mapping":
        """Validate and build a mapping; raises MappingError naming the bad path."""
        return cls(split_inner_path(path), check_underlying(underlying), bool(writable))

    @property
    def path(self) -> bytes:
        """The path inside the mount or sandbox, as bytes (``b"/"`` for the root)."""
        return b"/" + b"/".join(self.components)

    def describe(self) -> str:
        mode = "rw" if self.writable else "ro"
        return f"{mode}:{display(self.path)}:{display(self.underlying)}"


def parse_mapping_flag(text: str) -> Mapping:
    """Parse ``TYPE:PATH:UNDERLYING`` as given to ``--mapping`` (TYPE is ro or rw).

    The underlying path may itself contain colons; the inner path may not.
    """
    fields = text.split(":", 2)
    if len(fields) != 3:
        raise MappingError(f"bad mapping {text}: expected three colon-separated fields")
    kind, path, underlying = fields
    if kind not in ("ro", "rw"):
        raise MappingError(f"bad mapping {text}: type was {kind} but should be ro or rw")
    try:
        return Mapping.of(path, underlying, kind == "rw")
    except MappingError as exc:
        raise MappingError(f"bad mapping {text}: {exc.message}") from None


_BAD_NAME = "a name is empty, '.' or '..', or has such a component"


def check_names(blob: bytes, count: int) -> str | None:
    """Why ``count`` NUL-separated relative paths are unusable, or None if they are fine.

    Each may hold '/' (a path below the group's directory) but no empty,
    '.' or '..' component.  Bulk checks over the whole blob, in C: a
    100,000-name group is checked without a Python step per name.
    ``first_bad_name`` then finds which one, when this says something is wrong.
    """
    if count < 1:
        return "a group has no names"
    if blob.count(b"\0") != count - 1:
        return "a name contains a NUL byte"
    padded = b"\0" + blob.replace(b"/", b"\0") + b"\0"
    if b"\0\0" in padded or b"\0.\0" in padded or b"\0..\0" in padded:
        return _BAD_NAME
    return None


def first_bad_name(names: list[bytes]) -> tuple[int, str] | None:
    """(offset, reason) of the first unusable name: the slow path of ``check_names``."""
    for offset, name in enumerate(names):
        reason = check_names(name, 1)
        if reason:
            return offset, reason
    return None
