"""The JSON stream, pure: bytes -> JSON values -> ``CreateSandbox``/``DestroySandbox``."""

from __future__ import annotations

import json
import re
from typing import Any

import attrs

from sandboxfs.errors import StreamError
from sandboxfs.compat.common import U32_MAX
from sandboxfs.compat.paths import quoted



class _Object(dict):
    """A JSON object that remembers which keys appeared more than once."""

    duplicates: frozenset = frozenset()


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        obj.duplicates = frozenset(k for k, _ in pairs if k in seen or seen.add(k))
    return obj


class StreamDecoder:
    """Splits a byte stream into JSON values, one at a time, as bytes arrive.

    Values follow each other with optional whitespace; one may span many
    reads.  A value's end is found by scanning only brackets and strings
    (resuming where the last read stopped), then the complete value is
    decoded with ``json``.  UTF-8 multi-byte sequences never contain ASCII
    bytes, so scanning bytes is safe.
    """

    _TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]|"', re.S)
    _SPACE = re.compile(rb"[ \t\n\r]*")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._resume = 0  # where the scan of the pending value goes on
        self._open: list[bytes] = []  # the closing brackets it still needs
        self._line = 1  # line of the buffer's first byte, for messages
        self._error: StreamError | None = None  # to raise after the values before it

    def feed(self, data: bytes) -> list[Any]:
        """Add bytes; return the values they completed.

        Raises StreamError for input that cannot be parsed -- after the
        values before it were returned, on the next call.
        """
        self._buffer += data
        return self._collect(final=False)

    def finish(self) -> list[Any]:
        """The input ended: return what is left, or raise StreamError for a partial value."""
        return self._collect(final=True)

    def raise_pending(self) -> None:
        """Raise the StreamError held back by the last call, if any."""
        if self._error is not None:
            raise self._error

    def _collect(self, final: bool) -> list[Any]:
        self.raise_pending()
        values: list[Any] = []
        try:
            self._values(values, final)
        except StreamError as exc:
            if not values:
                raise
            self._error = exc
        return values

    def _skip_space(self) -> None:
        buffer = self._buffer
        end = self._SPACE.match(buffer).end()
        if end:
            self._line += buffer.count(b"\n", 0, end)
            del buffer[:end]

    def _values(self, values: list[Any], final: bool) -> None:
        while True:
            if self._resume == 0:
                self._skip_space()
            buffer = self._buffer
            if not buffer:
                return
            if buffer[0] not in b"{[":
                raise StreamError(self._scalar_message(final))
            end = self._scan()
            if end is None:
                if final:
                    last_line = self._line + buffer.count(b"\n")
                    raise StreamError(f"EOF while parsing a value at line {last_line}")
                return
            values.append(self._decode(bytes(buffer[:end])))
            self._line += buffer.count(b"\n", 0, end)
            del buffer[:end]
            self._resume = 0
            self._open.clear()

    def _scan(self) -> int | None:
        """End offset of the value at the buffer's start, or None if it is incomplete.

        A closing bracket that does not match ends the value too: decoding
        it then reports the syntax error, as soon as it arrives.
        """
        open_ = self._open
        for match in self._TOKEN.finditer(self._buffer, self._resume):
            token = match.group()
            if token == b'"':  # a string that has not ended yet
                self._resume = match.start()
                return None
            if token[0] == 0x22:  # '"': a whole string
                continue
            if token in (b"{", b"["):
                open_.append(b"}" if token == b"{" else b"]")
            elif open_.pop() != token or not open_:
                return match.end()
        self._resume = len(self._buffer)
        return None

    def _decode(self, raw: bytes) -> Any:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = self._line + raw.count(b"\n", 0, exc.start)
            raise StreamError(f"invalid UTF-8 at line {line}") from None
        try:
            return json.loads(text, object_pairs_hook=_object)
        except json.JSONDecodeError as exc:
            raise StreamError(
                f"{exc.msg} at line {self._line + exc.lineno - 1} column {exc.colno}"
            ) from None

    def _scalar_message(self, final: bool) -> str:
        text = bytes(self._buffer[:200]).decode("utf-8", "replace")
        try:
            value, _ = json.JSONDecoder().raw_decode(text)
        except json.JSONDecodeError as exc:
            return f"{exc.msg} at line {self._line + exc.lineno - 1} column {exc.colno}"
        return (
            f"invalid type: {_kind(value)}, expected a CreateSandbox or DestroySandbox request "
            f"at line {self._line}"
        )


# -- the JSON stream: values -> requests --------------------------------------------------


@attrs.frozen
class JsonMapping:
    path: str
    underlying_path: str
    path_prefix: int = 0
    underlying_path_prefix: int = 0
    writable: bool = False


@attrs.frozen
class CreateSandbox:
    id: str
    mappings: tuple[JsonMapping, ...] = ()
    prefixes: tuple[tuple[str, str], ...] = ()


@attrs.frozen
class DestroySandbox:
    id: str


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{str(value).lower()}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value}`"
    if isinstance(value, str):
        return f"string {quoted(value)}"
    if isinstance(value, list):
        return "sequence"
    return "map"


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise StreamError(f"invalid type: {_kind(value)}, expected a string for {what}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise StreamError(f"invalid unicode code point in {what}") from None
    return value


def _fields(obj: Any, what: str, names: dict[str, str]) -> dict[str, Any]:
    """The fields of a 0.2 struct given by name or alias; unknown keys are ignored."""
    if not isinstance(obj, dict):
        raise StreamError(f"invalid type: {_kind(obj)}, expected {what}")
    found: dict[str, Any] = {}
    for key, value in obj.items():
        field = names.get(key)
        if field is None:
            continue
        if field in found or key in getattr(obj, "duplicates", ()):
            raise StreamError(f"duplicate field `{field}` in {what}")
        found[field] = value
    return found


def _u32(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= U32_MAX:
        raise StreamError(f"invalid value: {_kind(value)}, expected u32 for {what}")
    return value


_MAPPING_FIELDS = {
    "path": "path", "p": "path",
    "path_prefix": "path_prefix", "x": "path_prefix",
    "underlying_path": "underlying_path", "u": "underlying_path",
    "underlying_path_prefix": "underlying_path_prefix", "y": "underlying_path_prefix",
    "writable": "writable", "w": "writable",
}
_CREATE_FIELDS = {"id": "id", "i": "id", "mappings": "mappings", "m": "mappings",
                  "prefixes": "prefixes", "q": "prefixes"}
_VARIANTS = {"CreateSandbox": "CreateSandbox", "C": "CreateSandbox",
             "DestroySandbox": "DestroySandbox", "D": "DestroySandbox"}


def _decode_mapping(obj: Any) -> JsonMapping:
    fields = _fields(obj, "a mapping", _MAPPING_FIELDS)
    for required in ("path", "underlying_path"):
        if required not in fields:
            raise StreamError(f"missing field `{required}` in a mapping")
    writable = fields.get("writable", False)
    if not isinstance(writable, bool):
        raise StreamError(f"invalid type: {_kind(writable)}, expected a boolean for writable")
    return JsonMapping(
        path=_text(fields["path"], "path"),
        underlying_path=_text(fields["underlying_path"], "underlying_path"),
        path_prefix=_u32(fields.get("path_prefix", 0), "path_prefix"),
        underlying_path_prefix=_u32(fields.get("underlying_path_prefix", 0), "underlying_path_prefix"),
        writable=writable,
    )


def decode_request(value: Any) -> CreateSandbox | DestroySandbox:
    """One JSON value -> a 0.2 request; raises StreamError (fatal: the stream stops)."""
    if not isinstance(value, dict):
        raise StreamError(
            f"invalid type: {_kind(value)}, expected a CreateSandbox or DestroySandbox request"
        )
    if len(value) != 1:
        raise StreamError("a request must have exactly one key, CreateSandbox or DestroySandbox")
    ((key, body),) = value.items()
    variant = _VARIANTS.get(key)
    if variant is None:
        raise StreamError(f"unknown variant `{key}`, expected `CreateSandbox` or `DestroySandbox`")
    if variant == "DestroySandbox":
        return DestroySandbox(_text(body, "DestroySandbox"))
    fields = _fields(body, "a CreateSandbox request", _CREATE_FIELDS)
    if "id" not in fields:
        raise StreamError("missing field `id` in a CreateSandbox request")
    mappings = fields.get("mappings", [])
    if not isinstance(mappings, list):
        raise StreamError(f"invalid type: {_kind(mappings)}, expected a sequence for mappings")
    prefixes = fields.get("prefixes", {})
    if not isinstance(prefixes, dict):
        raise StreamError(f"invalid type: {_kind(prefixes)}, expected a map for prefixes")
    return CreateSandbox(
        id=_text(fields["id"], "id"),
        mappings=tuple(_decode_mapping(m) for m in mappings),
        prefixes=tuple((key, _text(path, f"prefix {key}")) for key, path in prefixes.items()),
    )
