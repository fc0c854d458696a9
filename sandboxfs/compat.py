"""The sandboxfs 0.2 front end: its command line and JSON reconfiguration stream, on our engine.

Build tools written for sandboxfs 0.2 (Bazel's ``--experimental_use_sandboxfs``
among them) start ``sandboxfs [flags] MOUNT_POINT`` and write JSON requests on
its stdin.  This module only translates: the 0.2 flags become a
``mount.MountConfig`` (no control socket), and each JSON request becomes a
``protocol.Request`` applied through ``Reconfigurer.execute`` -- the engine of
the msgpack socket, not a second filesystem.  docs/compat.md is the reference.

Layers, each testable on its own:

* ``parse_args``: the 0.2 argv rules (getopts) and their messages -> ``Options``;
* ``mapping_02``: the 0.2 path rules -> ``mapping.Mapping``;
* ``StreamDecoder``: bytes -> JSON values, incrementally;  ``decode_request``:
  a JSON value -> ``CreateSandbox``/``DestroySandbox`` (all pure);
* ``Translator``: the prefix table of one input stream, 0.2 mapping rules, and
  the host directories behind intermediate directories (``lstat`` only);
* ``JsonStream``: the trio service -- read, translate, apply with N workers, answer;
* ``main``: exit codes.

Must not touch: the tree (only ``Reconfigurer.execute``), pyfuse3 (``mount.run``
does), and stdout/stderr except through ``main`` and logging.
"""

from __future__ import annotations

import contextlib
import cProfile
import errno
import json
import logging
import os
import re
import signal
import stat
import sys
from typing import TYPE_CHECKING, Any, AsyncIterator, Collection, Sequence

import attrs
import trio

from . import __version__, logs
from .errors import AlreadyMappedError, SandboxExistsError, SandboxfsError, UsageError
from .mapping import Mapping, check_underlying
from .protocol import Request

if TYPE_CHECKING:  # pragma: no cover
    from .reconfig import Reconfigurer

log = logging.getLogger(__name__)

EXIT_RUNTIME = 1
EXIT_USAGE = 2
PROGRAM = "sandboxfs"
STDIO = "-"  # --input/--output value for stdin/stdout
DEFAULT_TTL = "60s"
# Each worker is a trio task; more than this only costs memory.
MAX_RECONFIG_WORKERS = 256
# Requests with more mappings than this are translated in a worker thread.
OFF_LOOP_MAPPINGS = 512
_U32_MAX = 2**32 - 1
_USIZE_MAX = 2**64 - 1


class RuntimeFailure(SandboxfsError):
    """Something outside the command line failed (a path, the mount); exit status 1."""

    code = "runtime"


# -- the command line ---------------------------------------------------------------------

_VALUE_OPTIONS = ("allow", "cpu_profile", "input", "mapping", "output", "reconfig_threads", "ttl")
_FLAG_OPTIONS = ("help", "node_cache", "version", "xattrs")
_REPEATABLE = ("mapping",)

HELP = "help"
VERSION = "version"


@attrs.frozen
class Options:
    """A valid 0.2 command line, with every value parsed."""

    mount_point: str
    mappings: tuple[Mapping, ...] = ()
    mapping_texts: tuple[str, ...] = ()  # as given, for messages
    allow: str = "self"
    ttl: float = 60.0
    input: str = STDIO
    output: str = STDIO
    reconfig_threads: int = 1
    cpu_profile: str | None = None
    node_cache: bool = False
    xattrs: bool = False


def usage() -> str:
    """The text of ``--help`` (stdout)."""
    return f"""\
Usage: {PROGRAM} [options] MOUNT_POINT

The sandboxfs 0.2 command line: mount at MOUNT_POINT, then read JSON
reconfiguration requests (CreateSandbox, DestroySandbox) from --input and
answer each on --output.  See docs/compat.md.

Options:
        --allow other|root|self
                        who besides the mounting user may use the file
                        system (default: self)
        --cpu_profile PATH
                        profile the run (cProfile) and write the pstats
                        data to PATH on exit
        --help          print this help and exit
        --input PATH    where to read reconfiguration requests from (- for
                        stdin; may be a FIFO) (default: -)
        --mapping TYPE:PATH:UNDERLYING_PATH
                        show UNDERLYING_PATH at PATH; TYPE is ro or rw
                        (repeatable)
        --node_cache    accepted for compatibility: node identities are
                        always kept
        --output PATH   where to write the responses to (- for stdout)
                        (default: -)
        --reconfig_threads COUNT
                        how many requests may be processed at once
                        (default: {_default_threads()})
        --ttl TIMEs     how long the kernel may cache entries and attributes
                        (default: {DEFAULT_TTL})
        --version       print the version and exit
        --xattrs        pass extended attributes through to the host

sandboxfs {__version__} also has subcommands (mount, create, destroy, map, unmap,
list, stats) and a msgpack control socket: run `{PROGRAM} mount --help`.
"""


def _default_threads() -> int:
    return os.cpu_count() or 1


def _getopts(argv: Sequence[str]) -> tuple[dict[str, list[str | None]], list[str]]:
    """Split argv as the getopts crate does: long options only, ``--`` ends them.

    Both ``--flag=value`` and ``--flag value``; options and arguments may mix.
    Structural errors come first, in the order getopts reports them.
    """
    given: dict[str, list[str | None]] = {}
    free: list[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        index += 1
        if arg == "--":
            free.extend(argv[index:])
            break
        if arg.startswith("--"):
            name, equals, value = arg[2:].partition("=")
            if name in _VALUE_OPTIONS:
                if not equals:
                    if index == len(argv):
                        raise UsageError(f"Argument to option '{name}' missing")
                    value = argv[index]
                    index += 1
                given.setdefault(name, []).append(value)
            elif name in _FLAG_OPTIONS:
                if equals:
                    raise UsageError(f"Option '{name}' does not take an argument")
                given.setdefault(name, []).append(None)
            else:
                raise UsageError(f"Unrecognized option: '{name}'")
        elif arg.startswith("-") and arg != "-":
            raise UsageError(f"Unrecognized option: '{arg[1]}'")
        else:
            free.append(arg)
    for name, values in given.items():
        if len(values) > 1 and name not in _REPEATABLE:
            raise UsageError(f"Option '{name}' given more than once")
    return given, free


def _parse_unsigned(text: str, maximum: int) -> int:
    """Rust's ``str::parse`` for unsigned integers, with its messages."""
    if not text:
        raise ValueError("cannot parse integer from empty string")
    digits = text[1:] if text.startswith("+") else text
    if not digits or not digits.isascii() or not digits.isdigit():
        raise ValueError("invalid digit found in string")
    value = int(digits)
    if value > maximum:
        raise ValueError("number too large to fit in target type")
    return value


def parse_allow(text: str) -> str:
    if text not in ("other", "root", "self"):
        raise UsageError(f"{text} must be one of other, root, or self")
    return text


def parse_duration(text: str) -> float:
    """``--ttl``: whole seconds with an ``s`` suffix (``60s``)."""
    split = re.match(r"[0-9-]*", text).end()
    value, unit = text[:split], text[split:]
    if not unit:
        raise UsageError(f"invalid time specification {text}: missing unit")
    if unit != "s":
        raise UsageError(
            f"invalid time specification {text}: unsupported unit '{unit}' (only 's' is allowed)"
        )
    try:
        return float(_parse_unsigned(value, _U32_MAX))
    except ValueError as exc:
        raise UsageError(f"invalid time specification {text}: {exc}") from None


def parse_threads(text: str) -> int:
    try:
        count = _parse_unsigned(text, _USIZE_MAX)
    except ValueError as exc:
        raise UsageError(f"invalid thread count {text}: {exc}") from None
    if count == 0:
        raise UsageError(f"invalid thread count {text}: must be at least 1")
    return count


def parse_mapping_flag(text: str) -> Mapping:
    """``--mapping TYPE:PATH:UNDERLYING`` with 0.2's rules: exactly three fields."""
    fields = text.split(":")
    if len(fields) != 3:
        raise UsageError(f"bad mapping {text}: expected three colon-separated fields")
    kind, path, underlying = fields
    if kind not in ("ro", "rw"):
        raise UsageError(f"bad mapping {text}: type was {kind} but should be ro or rw")
    try:
        return mapping_02(path, underlying, kind == "rw")
    except RefusedError as exc:
        raise UsageError(f"bad mapping {text}: {exc.message}") from None


def parse_args(argv: Sequence[str]) -> Options | str:
    """The 0.2 command line -> ``Options``, or ``HELP``/``VERSION``; raises UsageError.

    0.2's order: option syntax, then ``--help``, then ``--version``, then the
    values, then the number of arguments.
    """
    given, free = _getopts(argv)
    if "help" in given:
        return HELP
    if "version" in given:
        return VERSION

    def value(name: str, default: str | None = None) -> str | None:
        return given[name][0] if name in given else default

    allow = parse_allow(value("allow", "self"))
    texts = tuple(given.get("mapping", ()))
    mappings = tuple(parse_mapping_flag(text) for text in texts)
    ttl = parse_duration(value("ttl", DEFAULT_TTL))
    threads = value("reconfig_threads")
    reconfig_threads = parse_threads(threads) if threads is not None else _default_threads()
    if len(free) != 1:
        raise UsageError("invalid number of arguments")
    return Options(
        mount_point=free[0],
        mappings=mappings,
        mapping_texts=texts,
        allow=allow,
        ttl=ttl,
        input=value("input", STDIO),
        output=value("output", STDIO),
        reconfig_threads=reconfig_threads,
        cpu_profile=value("cpu_profile"),
        node_cache="node_cache" in given,
        xattrs="xattrs" in given,
    )


def is_02_command_line(argv: Sequence[str], commands: Collection[str]) -> bool:
    """Whether argv is for this front end rather than the subcommand CLI.

    No subcommand first, and either a flag first (``--allow=self``,
    ``--version``, ``--help``; ``-h`` stays with the subcommand CLI's help) or
    something that names a mount point: a path, an existing directory, or a
    word followed by more arguments.  A lone word that is none of these is
    reported as an unknown command by the subcommand CLI.
    """
    if not argv or argv[0] in commands or argv[0] == "-h":
        return False
    first = argv[0]
    return first.startswith("-") or len(argv) > 1 or "/" in first or os.path.isdir(first)


# -- 0.2 mappings -------------------------------------------------------------------------


class RefusedError(SandboxfsError):
    """A 0.2 request or mapping is refused; the message is 0.2's wording."""

    code = "invalid_mapping"


def _quoted(text: str) -> str:
    """A path as Rust's ``{:?}`` shows it: in double quotes, escaped."""
    return json.dumps(text, ensure_ascii=False)


def inner_components(path: str) -> tuple[bytes, ...]:
    """A path inside the mount or a sandbox, by 0.2's rules.

    Absolute; ``.`` and repeated or trailing slashes are dropped, as Rust's
    ``Path::components`` does; ``..`` is refused ("not normalized").
    """
    if not path.startswith("/"):
        raise RefusedError(f"path {_quoted(path)} is not absolute")
    if "\0" in path:
        raise RefusedError(f"path {_quoted(path)} contains a NUL byte")
    parts = [part for part in path.split("/") if part and part != "."]
    if ".." in parts:
        raise RefusedError(f"path {_quoted(path)} is not normalized")
    return tuple(os.fsencode(part) for part in parts)


def mapping_02(path: str, underlying: str, writable: bool) -> Mapping:
    """A Mapping from 0.2's parts; the underlying path must be absolute (``..`` allowed)."""
    components = inner_components(path)
    if not underlying.startswith("/"):
        raise RefusedError(f"path {_quoted(underlying)} is not absolute")
    if "\0" in underlying:
        raise RefusedError(f"path {_quoted(underlying)} contains a NUL byte")
    return Mapping(components, check_underlying(os.fsencode(underlying)), bool(writable))


def describe(mapping: Mapping, path: str | None = None) -> str:
    """0.2's display of a mapping: ``/path -> /underlying (read-only)``."""
    shown = path if path is not None else os.fsdecode(mapping.path)
    mode = "read/write" if mapping.writable else "read-only"
    return f"{shown} -> {os.fsdecode(mapping.underlying)} ({mode})"


def require_root_first(mappings: Sequence[Mapping], shown: Sequence[str]) -> None:
    """0.2 maps the root of the mount or a sandbox only as the first mapping."""
    for index, mapping in enumerate(mappings):
        if index > 0 and not mapping.components:
            raise RefusedError(f"Cannot map '{shown[index]}': Root can be mapped at most once")


def back_intermediate_dirs(mappings: Sequence[Mapping]) -> list[Mapping]:
    """Mappings for the host directories behind intermediate directories (0.2's rule).

    In 0.2, a directory between a mapped directory and a mapping nested below
    it shows the host directory of that name when one exists (with the mapped
    directory's writability); only otherwise is it a read-only scaffold.
    Bazel relies on it: it maps its execroot read-write onto a scratch
    directory and the inputs read-only below it, so output directories that
    also hold inputs must stay writable.  Our tree makes every intermediate
    directory a scaffold, so the rule becomes explicit mappings here: one
    ``lstat`` per distinct intermediate directory.  Returns only the additions.
    """
    explicit = {m.components: m for m in mappings}
    decided: dict[tuple[bytes, ...], bool] = {}
    added: list[Mapping] = []
    for mapping in mappings:
        comps = mapping.components
        depth = len(comps) - 1
        while depth >= 0 and comps[:depth] not in explicit:
            depth -= 1
        if depth < 0 or depth == len(comps) - 1:
            continue  # below scaffolds only, or a direct child of a mapping
        anchor = explicit[comps[:depth]]
        for end in range(depth + 1, len(comps)):
            key = comps[:end]
            known = decided.get(key)
            if known is None:
                host = b"/".join((anchor.underlying.rstrip(b"/"),) + comps[depth:end])
                try:
                    known = stat.S_ISDIR(os.lstat(host).st_mode)
                except OSError:
                    known = False
                decided[key] = known
                if known:
                    added.append(Mapping(key, host, anchor.writable))
            if not known:
                break  # a scaffold: everything below it is a scaffold too
    return added


# -- the JSON stream: bytes -> values -----------------------------------------------------


class StreamError(SandboxfsError):
    """The input stream cannot be parsed: answered without an id, and reading stops."""

    code = "invalid_framing"


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
        return f"string {_quoted(value)}"
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
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _U32_MAX:
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


# -- the JSON stream: requests -> engine requests -----------------------------------------


@attrs.frozen
class Job:
    """A translated request: what to execute, or the error to answer with."""

    id: str
    op: str = ""
    name: bytes = b""
    mappings: tuple[Mapping, ...] = ()
    shown: tuple[str, ...] = ()  # 0.2's display of each mapping, for messages
    error: str | None = None

    def request(self, op: str | None = None) -> Request:
        return Request(self.id, op or self.op, name=self.name, mappings=self.mappings)


def _path_key(path: str) -> tuple:
    """Rust compares PathBufs by components: ``/a/`` equals ``/a``."""
    return path.startswith("/"), tuple(p for p in path.split("/") if p and p != ".")


def _join(base: str, suffix: str) -> str:
    """Rust's ``PathBuf::join``."""
    if not base or suffix.startswith("/"):
        return suffix
    return base + suffix if base.endswith("/") else f"{base}/{suffix}"


def check_id(sandbox_id: str) -> None:
    if not sandbox_id:
        raise RefusedError("Identifier cannot be empty")
    if "/" in sandbox_id:
        raise RefusedError(f"Identifier {sandbox_id} is not a basename")


class Translator:
    """Turns 0.2 requests of one input stream into Jobs; owns that stream's prefix table.

    Prefixes are registered in input order (as 0.2's reader does), so a
    prefix is usable by the requests after the one that defines it, however
    the requests are then scheduled.
    """

    def __init__(self) -> None:
        self.prefixes: dict[int, str] = {0: ""}

    def translate(self, request: CreateSandbox | DestroySandbox) -> Job:
        try:
            if isinstance(request, DestroySandbox):
                check_id(request.id)
                return Job(request.id, "destroy_sandbox", os.fsencode(request.id))
            return self._create(request)
        except RefusedError as exc:
            return Job(request.id, error=exc.message)

    def _register(self, table: Sequence[tuple[str, str]]) -> None:
        new: dict[int, str] = {}
        for key, path in table:
            try:
                number = _parse_unsigned(key, _U32_MAX)
            except ValueError as exc:
                raise RefusedError(f"Bad prefix number: {exc}") from None
            known = self.prefixes.get(number, new.get(number))
            if known is None:
                new[number] = path
            elif _path_key(known) != _path_key(path):
                raise RefusedError(f"Prefix {number} already had path {known} but got new {path}")
        self.prefixes.update(new)

    def _build(self, prefix: int, suffix: str) -> str:
        if prefix != 0 and suffix.startswith("/"):
            raise RefusedError(f"Suffix {suffix} must be relative")
        base = self.prefixes[prefix]
        return _join(base, suffix) if suffix else base

    def _create(self, request: CreateSandbox) -> Job:
        self._register(request.prefixes)
        for m in request.mappings:
            for prefix in (m.path_prefix, m.underlying_path_prefix):
                if prefix not in self.prefixes:
                    raise RefusedError(f"Prefix {prefix} does not exist")
        check_id(request.id)
        mappings: list[Mapping] = []
        shown: list[str] = []
        for m in request.mappings:
            path = self._build(m.path_prefix, m.path)
            mapping = mapping_02(path, self._build(m.underlying_path_prefix, m.underlying_path),
                                 m.writable)
            mappings.append(mapping)
            shown.append(describe(mapping, path))
        require_root_first(mappings, shown)
        added = back_intermediate_dirs(mappings)
        shown.extend(describe(m) for m in added)
        return Job(request.id, "create_sandbox", os.fsencode(request.id),
                   tuple(mappings + added), tuple(shown))


def error_text(exc: SandboxfsError, shown: Sequence[str]) -> str:
    """Our error as 0.2 words it: ``Cannot map '/a -> /b (read-only)': Already mapped``."""
    index = exc.details.get("index")
    if isinstance(index, int) and 0 <= index < len(shown):
        if isinstance(exc, AlreadyMappedError):
            reason = "Already mapped"
        else:
            reason = exc.details.get("reason") or exc.message
        return f"Cannot map '{shown[index]}': {reason}"
    return exc.message


def response_line(request_id: str | None, error: str | None) -> bytes:
    """One response: ``{"id":"a","error":null}`` and a newline."""
    text = json.dumps({"id": request_id, "error": error}, ensure_ascii=False, separators=(",", ":"))
    return text.encode("utf-8") + b"\n"


# -- the JSON stream: the service ---------------------------------------------------------


def _os_error(exc: OSError) -> str:
    """An OSError as Rust's io::Error shows it: ``No such file or directory (os error 2)``."""
    if exc.errno is None:
        return str(exc)
    return f"{os.strerror(exc.errno)} (os error {exc.errno})"


class InputSource:
    """Where requests come from: a file descriptor, opened before the mount.

    A FIFO is opened without blocking (so the mount comes up before any
    writer exists) and then waited on: its input begins with the first
    writer and ends when the last writer closes it, as 0.2 (which blocked
    in ``open`` until a writer came) saw it.
    """

    def __init__(self, spec: str) -> None:
        self.spec = spec
        try:
            if spec == STDIO:
                fd = os.dup(0)
            else:
                fd = os.open(spec, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise RuntimeFailure(
                f"Failed to open reconfiguration input '{spec}': {_os_error(exc)}"
            ) from None
        self._fd: int | None = fd
        self._fifo = stat.S_ISFIFO(os.fstat(fd).st_mode)
        self._stream: trio.lowlevel.FdStream | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        """Yield what arrives; an empty chunk ends the input.  Raises OSError."""
        assert self._fd is not None, "InputSource read twice"
        self._stream, self._fd = trio.lowlevel.FdStream(self._fd), None
        if self._fifo:
            # With no writer yet, read() says EOF at once; epoll waits for one.
            await trio.lowlevel.wait_readable(self._stream.fileno())
        while True:
            try:
                data = await self._stream.receive_some(65536)
            except trio.BrokenResourceError as exc:
                raise OSError(getattr(exc.__cause__, "errno", errno.EIO), str(exc.__cause__ or exc))
            yield data
            if not data:
                return

    def close(self) -> None:
        self._stream = _close(self._stream, self._fd)
        self._fd = None


def _close(stream: trio.lowlevel.FdStream | None, fd: int | None) -> None:
    """Close a stream (which restores its descriptor's blocking mode) or a raw descriptor."""
    if stream is not None:
        try:
            stream.close()
        except RuntimeError:  # outside trio: the run is over, the process is ending
            pass
    if fd is not None:
        os.close(fd)
    return None


class OutputSink:
    """Where responses go: each one written and flushed as a whole line.

    Opened before the mount, without creating or truncating the file (as
    0.2).  A FIFO that has no reader yet is opened when the first response
    is due.  A failed write is logged once and later responses are dropped:
    the filesystem keeps serving.
    """

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self._fd: int | None = None
        try:
            if spec == STDIO:
                self._fd = os.dup(1)
            else:
                self._fd = os.open(spec, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: a FIFO without a reader yet
                raise RuntimeFailure(
                    f"Failed to open reconfiguration output '{spec}': {_os_error(exc)}"
                ) from None
        self._stream: trio.lowlevel.FdStream | None = None
        self._lock = trio.Lock()
        self._failed = False

    async def _open_stream(self) -> trio.lowlevel.FdStream:
        if self._stream is None:
            if self._fd is None:
                self._fd = await self._wait_for_reader()
            self._stream, self._fd = trio.lowlevel.FdStream(self._fd), None
        return self._stream

    async def _wait_for_reader(self) -> int:
        log.info("waiting for a reader on the reconfiguration output %s", self.spec)
        while True:
            try:
                return os.open(self.spec, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
            await trio.sleep(0.05)

    async def connect(self) -> None:
        """Open a FIFO output as soon as it has a reader (clients may wait for that)."""
        await self.write(b"")

    async def write(self, line: bytes) -> None:
        async with self._lock:
            if self._failed:
                return
            try:
                stream = await self._open_stream()
                if line:
                    await stream.send_all(line)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._failed = True
                log.warning("Failed to write to reconfiguration output %s: %s; "
                            "dropping further responses", self.spec, exc.__cause__ or exc)

    def close(self) -> None:
        self._stream = _close(self._stream, self._fd)
        self._fd = None


class JsonStream:
    """The 0.2 reconfiguration service: runs beside the FUSE loop (``mount.run`` services).

    The reader parses and translates requests in input order; ``workers``
    tasks apply them and answer each as soon as it is done.  With one worker
    requests are applied and answered strictly in order.  The Reconfigurer
    serialises tree changes anyway; concurrency overlaps the off-loop builds
    and the kernel cache invalidations.  When the input ends (or cannot be
    parsed) the service returns and the mount keeps serving.
    """

    def __init__(self, reconfigurer: "Reconfigurer", source: InputSource, sink: OutputSink,
                 workers: int) -> None:
        self.reconfigurer = reconfigurer
        self.source = source
        self.sink = sink
        self.workers = max(1, min(workers, MAX_RECONFIG_WORKERS))
        self.translator = Translator()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            async with trio.open_nursery() as outer:
                outer.start_soon(self.sink.connect)
                await self._serve()
                outer.cancel_scope.cancel()  # a FIFO output that never got a reader
        finally:  # in trio, which the streams need to close
            self.source.close()
            self.sink.close()

    async def _serve(self) -> None:
        send, receive = trio.open_memory_channel(0)
        async with trio.open_nursery() as nursery:
            for _ in range(self.workers):
                nursery.start_soon(self._work, receive.clone())
            await receive.aclose()
            async with send:
                fatal = await self._read(send)
        if fatal is not None:  # answered after everything read before it
            await self.sink.write(response_line(None, fatal))
            log.warning("Reconfigurations stopped: %s; the file system keeps serving", fatal)
        else:
            log.info("Reached end of reconfiguration input; file system mappings are now frozen")

    async def _read(self, send: trio.MemorySendChannel) -> str | None:
        """Feed jobs to the workers until the input ends (None) or is unusable (the message)."""
        decoder = StreamDecoder()
        try:
            async for chunk in self.source.chunks():
                values = decoder.feed(chunk) if chunk else decoder.finish()
                for value in values:
                    request = decode_request(value)
                    if isinstance(request, CreateSandbox) and len(request.mappings) > OFF_LOOP_MAPPINGS:
                        job = await trio.to_thread.run_sync(self.translator.translate, request)
                    else:
                        job = self.translator.translate(request)
                    await send.send(job)
                decoder.raise_pending()
        except StreamError as exc:
            return exc.message
        except OSError as exc:
            return f"Failed to read reconfiguration input: {_os_error(exc)}"
        return None

    async def _work(self, receive: trio.MemoryReceiveChannel) -> None:
        async with receive:
            async for job in receive:
                error = await self.apply(job)
                await self.sink.write(response_line(job.id, error))

    async def apply(self, job: Job) -> str | None:
        """Execute one job; returns None or the error message for its response."""
        if job.error is not None:
            return job.error
        try:
            try:
                await self.reconfigurer.execute(job.request())
            except SandboxExistsError:
                if job.op != "create_sandbox" or job.name not in self.reconfigurer.tree.sandboxes:
                    raise
                # 0.2 adds the mappings of a CreateSandbox for a live id to that sandbox.
                await self.reconfigurer.execute(job.request("map"))
        except SandboxfsError as exc:
            return error_text(exc, job.shown)
        except Exception as exc:  # a bug: answer it, keep serving
            log.exception("request %r failed unexpectedly", job.id)
            return f"internal error: {exc!r}"
        return None


# -- main ---------------------------------------------------------------------------------


def _usage_error(message: str) -> None:
    sys.stderr.write(
        f"usage: {PROGRAM} [options] MOUNT_POINT\n"
        f"{PROGRAM}: error: {message}\n"
        f"Type {PROGRAM} --help for more information\n"
    )


def mount_mappings(options: Options) -> tuple[Mapping, ...]:
    """The command line's mappings with 0.2's rules applied (root first, host-backed dirs)."""
    mappings = list(options.mappings)
    shown = [describe(m) for m in mappings]
    require_root_first(mappings, shown)
    return tuple(mappings + back_intermediate_dirs(mappings))


@contextlib.contextmanager
def cpu_profile(path: str | None):
    """``--cpu_profile``: cProfile of the main thread (the event loop), pstats at PATH on exit."""
    if path is None:
        yield
        return
    try:
        open(path, "wb").close()  # fail now, not after the run
    except OSError as exc:
        raise RuntimeFailure(f"Failed to start CPU profile: {path}: {_os_error(exc)}") from None
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()
        try:
            profiler.dump_stats(path)
        except OSError as exc:
            log.error("cannot write the CPU profile to %s: %s", path, _os_error(exc))


def serve(options: Options) -> int:
    """Mount, serve the JSON stream, unmount; 0 after an external unmount, 1 after a signal."""
    from . import mount  # pyfuse3 only when mounting

    if options.node_cache:
        log.info("--node_cache: accepted; node identities are always kept (docs/design.md)")
    config = mount.MountConfig(
        mount_point=options.mount_point,
        mappings=mount_mappings(options),
        allow=options.allow,
        ttl=options.ttl,
        xattrs=options.xattrs,
        control=None,  # 0.2 has no control socket
    )
    with contextlib.ExitStack() as cleanup:
        source = InputSource(options.input)
        cleanup.callback(source.close)
        sink = OutputSink(options.output)
        cleanup.callback(sink.close)

        def services(reconfigurer: "Reconfigurer"):
            return [JsonStream(reconfigurer, source, sink, options.reconfig_threads).run]

        with cpu_profile(options.cpu_profile):
            try:
                signum = mount.run(config, services_for=services)
            except SandboxfsError as exc:
                raise RuntimeFailure(
                    f"Failed to mount {options.mount_point}: {exc.message}"
                ) from None
    if signum:
        print(f"{PROGRAM}: Caught signal {signum} ({signal.Signals(signum).name})", file=sys.stderr)
        return EXIT_RUNTIME
    return 0


def main(argv: Sequence[str]) -> int:
    """Run the 0.2 command line; returns the exit status."""
    try:
        parsed = parse_args(argv)
    except UsageError as exc:
        _usage_error(exc.message)
        return EXIT_USAGE
    if parsed == HELP:
        sys.stdout.write(usage())
        return 0
    if parsed == VERSION:
        print(f"{PROGRAM} {__version__}")
        return 0
    logs.configure()
    try:
        return serve(parsed)
    except SandboxfsError as exc:
        print(f"{PROGRAM}: {exc.message}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:  # SIGINT before the mount watches signals: nothing is mounted
        return 130
