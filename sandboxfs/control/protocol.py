"""Control messages: what each request means, decoded from plain msgpack values.

No I/O here (``framing`` moves bytes, ``server`` answers, ``reconfig``
applies).  A request is a msgpack map ``{"id": ..., "op": ..., ...}``; a
response is ``{"id": ..., "result": {...}}`` or ``{"id": ..., "error":
{"code", "message", "details"}}``.  docs/protocol.md is the reference.

Paths travel as msgpack str (UTF-8) or bin (any bytes), or prefix-compressed
as ``[prefix_id, rest]`` where ``prefix_id`` was registered in a
``prefixes`` table of this or an earlier request on the same connection.
Groups travel in full (``[directory, host_directory, writable, names]``) or,
from protocol version 2 on, by digest (``{"group": digest}``) when the
server holds them (``tree.groups.GroupStore``).  The mapping decoder is the
hot path of a 100,000-mapping request, so it is one tight loop with the
checks inlined; ``mapping.split_inner_path`` states the same rules for the
slow path.
"""

from __future__ import annotations

import os
import reprlib
from typing import Any

from sandboxfs.control.requests import OPS, PROTOCOL_VERSION, Ping, fields_of, required_fields
from sandboxfs.errors import InvalidRequestError, MappingError, MissingGroupError, SandboxfsError
from sandboxfs.tree.groups import DIGEST_SIZE, Group, GroupStore, make_group
from sandboxfs.tree.mapping import (
    BAD_COMPONENTS, Mapping, check_underlying, display, first_bad_name, split_inner_path,
)

Spec = Mapping | Group


class PrefixTable:
    """The prefixes a connection registered: id -> absolute directory (bytes)."""

    def __init__(self) -> None:
        self._paths: dict[int, bytes] = {}
        self._components: dict[int, tuple[bytes, ...]] = {}

    def register(self, table: Any, label: str) -> None:
        if not isinstance(table, dict):
            raise InvalidRequestError(f"{label}: 'prefixes' must be a map of int to path")
        paths = self._paths
        for key, value in table.items():  # one pass per directory of a large request: keep it tight
            if type(key) is not int or key <= 0:
                raise InvalidRequestError(f"{label}: prefix id {key!r} is not a positive integer")
            path = value if type(value) is bytes else _as_bytes(value, f"{label}: prefix {key}")
            if path[:1] != b"/" or b"\0" in path:
                raise InvalidRequestError(
                    f"{label}: prefix {key} ({display(path)}) must be an absolute path without NUL"
                )
            if path[-1:] == b"/":
                path = path.rstrip(b"/") or b"/"
            known = paths.get(key)
            if known is None:
                paths[key] = path
            elif known != path:
                raise InvalidRequestError(
                    f"{label}: prefix {key} is already {display(known)}, cannot redefine it "
                    f"as {display(path)}"
                )

    def path(self, key: Any, label: str) -> bytes:
        try:
            return self._paths[key]
        except (KeyError, TypeError):
            raise InvalidRequestError(f"{label}: unknown prefix id {key!r}") from None

    def components(self, key: Any, label: str) -> tuple[bytes, ...]:
        path = self.path(key, label)  # first: refuses unknown and unhashable ids
        comps = self._components.get(key)
        if comps is None:
            try:
                comps = split_inner_path(path)
            except MappingError as exc:
                raise MappingError(f"{label}: prefix {key}: {exc.message}") from None
            self._components[key] = comps
        return comps


def _as_bytes(value: Any, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return os.fsencode(value)
    raise InvalidRequestError(f"{what}: expected a string or bytes, got {type(value).__name__}")


def _mapping_error(label: str, index: int, path: Any, reason: str) -> MappingError:
    shown = display(path) if isinstance(path, bytes) else reprlib.repr(path)
    return MappingError(
        f"{label}: mapping {index} ({shown}): {reason}",
        details={"index": index, "path": shown, "reason": reason},
    )


def _prefixed(raw: list | tuple, label: str, what: str) -> tuple[Any, bytes]:
    """(prefix_id, rest) of a path given as [prefix_id, rest]."""
    if len(raw) != 2:
        raise MappingError(f"{label}: a prefixed path must be [prefix_id, rest]")
    return raw[0], _as_bytes(raw[1], f"{label}: {what}")


def decode_inner_path(raw: Any, prefixes: PrefixTable, label: str) -> tuple[bytes, ...]:
    """Components of a path inside a sandbox, given absolute or as [prefix_id, rest]."""
    if isinstance(raw, (list, tuple)):
        prefix_id, rest = _prefixed(raw, label, "path")
        base = prefixes.components(prefix_id, label)
        if not rest:
            return base
        parts = rest.split(b"/")
        if b"\0" in rest or any(p in BAD_COMPONENTS for p in parts):
            raise MappingError(f"{label}: relative path '{display(rest)}' is not a plain relative path")
        return base + tuple(parts)
    return split_inner_path(_as_bytes(raw, f"{label}: path"))


def decode_underlying(raw: Any, prefixes: PrefixTable, label: str) -> bytes:
    if isinstance(raw, (list, tuple)):
        prefix_id, rest = _prefixed(raw, label, "underlying path")
        base = prefixes.path(prefix_id, label)
        if not rest:
            return base
        if rest.startswith(b"/") or b"\0" in rest:
            raise MappingError(f"{label}: relative path '{display(rest)}' is absolute or has NUL")
        return (base if base != b"/" else b"") + b"/" + rest
    return check_underlying(_as_bytes(raw, f"{label}: underlying path"))


def _names_blob(raw: Any, label: str) -> tuple[bytes, int]:
    """A group's names as one NUL-separated bin, and how many there are.

    They travel as one bin (what the Python client sends: split and checked
    in C) or as an array of str/bin.
    """
    if isinstance(raw, bytes):
        return raw, raw.count(b"\0") + 1
    if isinstance(raw, list):
        try:
            return b"\0".join(raw), len(raw)  # all bytes already
        except TypeError:
            return b"\0".join([_as_bytes(n, f"{label}: name") for n in raw]), len(raw)
    raise MappingError(f"{label}: the names of a group must be an array or a NUL-separated bin")


class _Groups:
    """Groups of one request: made from full groups or found by digest in the store."""

    def __init__(self, store: GroupStore | None) -> None:
        self.store = store
        self.missing: list[bytes] = []

    def full(self, item: list, prefixes: PrefixTable, label: str, index: int) -> Group:
        """``[directory, host_directory, writable, names]``, split and kept by digest."""
        path, underlying, writable, raw = item
        blob, count = _names_blob(raw, label)
        directory = decode_inner_path(path, prefixes, label)
        host_dir = decode_underlying(underlying, prefixes, label)
        group = make_group(directory, host_dir, writable, blob, count)
        if group is None:
            _refuse_names(raw, blob, directory, label, index, path, prefixes)
        return self.store.add(group) if self.store is not None else group

    def named(self, item: dict, label: str, index: int) -> Group | None:
        """``{"group": digest}``: the stored group, or None (and the digest noted) if not held."""
        digest = item.get("group")
        if len(item) != 1 or type(digest) is not bytes or len(digest) != DIGEST_SIZE:
            raise _mapping_error(label, index, item,
                                 f"a group named by digest must be {{'group': <{DIGEST_SIZE}-byte bin>}}")
        group = self.store.get(digest) if self.store is not None else None
        if group is None:
            self.missing.append(digest)
        return group

    def refuse_missing(self, label: str) -> None:
        missing = list(dict.fromkeys(self.missing))
        shown = ", ".join(d.hex()[:16] for d in missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise MissingGroupError(
            f"{label}: {len(missing)} group(s) named by digest are not held by the server "
            f"(evicted, restarted, or never sent): {shown}; send them in full", missing)


def _refuse_names(raw: Any, blob: bytes, directory: tuple[bytes, ...], label: str, index: int,
                  path: Any, prefixes: PrefixTable) -> None:
    """Raise the error naming the first unusable name of a group (the slow path)."""
    names = raw if isinstance(raw, list) else blob.split(b"\0")
    offset, reason = first_bad_name([_as_bytes(n, label) for n in names]) or (0, "a group has no names")
    shown = b"/" + b"/".join(directory + (_as_bytes(names[offset], label),)) if names \
        else _display_raw(path, prefixes)
    raise _mapping_error(label, index + offset, shown, reason)


def decode_mappings(raw: Any, prefixes: PrefixTable, label: str,
                    store: GroupStore | None = None) -> tuple[Spec, ...]:
    """Decode the ``mappings`` array; errors name the mapping's index, path and reason.

    An element is a mapping ``[path, underlying, writable]``, a group
    ``[directory, host_directory, writable, names]`` (names: an array, or one
    bin of NUL-separated names; a name may be a relative path), which stands
    for one mapping per name and counts as that many for indices, or a group
    named by digest ``{"group": digest}``.  Digests the store does not hold
    fail the whole request with ``missing_group`` naming every one of them.
    """
    if not isinstance(raw, (list, tuple)):
        raise InvalidRequestError(f"{label}: 'mappings' must be an array")
    groups = _Groups(store)
    out: list[Spec] = []
    index = 0
    try:
        for item in raw:
            if type(item) is dict:
                group = groups.named(item, label, index)
                if group is not None:
                    out.append(group)
                    index += group.count
                continue
            if not isinstance(item, (list, tuple)) or not 2 <= len(item) <= 4:
                raise _mapping_error(label, index, item,
                                     "must be [path, underlying, writable], "
                                     "[directory, host_directory, writable, [names]] or "
                                     "{'group': digest}")
            path, underlying = item[0], item[1]
            writable = item[2] if len(item) >= 3 else False
            if not isinstance(writable, bool):
                raise _mapping_error(label, index, _display_raw(path, prefixes),
                                     "'writable' must be true or false")
            try:
                if len(item) == 4:
                    group = groups.full(item, prefixes, label, index)
                    out.append(group)
                    index += group.count
                    continue
                comps = decode_inner_path(path, prefixes, label)
                host = decode_underlying(underlying, prefixes, label)
            except SandboxfsError as exc:
                if "index" in exc.details:  # a group already named the member at fault
                    raise
                reason = exc.message.removeprefix(f"{label}: ")
                raise _mapping_error(label, index, _display_raw(path, prefixes), reason) from None
            out.append(Mapping(comps, host, writable))
            index += 1
    except SandboxfsError:
        if groups.missing:  # indices after a missing group are unknown: resend first
            groups.refuse_missing(label)
        raise
    if groups.missing:
        groups.refuse_missing(label)
    return tuple(out)


def _display_raw(path: Any, prefixes: PrefixTable) -> Any:
    if isinstance(path, (list, tuple)) and len(path) == 2:
        try:
            return prefixes.path(path[0], "") + b"/" + _as_bytes(path[1], "")
        except SandboxfsError:
            return path
    if isinstance(path, (str, bytes)):
        return os.fsencode(path)
    return path


def _decode_paths(raw: Any, prefixes: PrefixTable, label: str) -> tuple[tuple[bytes, ...], ...]:
    paths = []
    for index, item in enumerate(raw):
        try:
            paths.append(decode_inner_path(item, prefixes, label))
        except SandboxfsError as exc:
            reason = exc.message.removeprefix(f"{label}: ")
            raise _mapping_error(label, index, _display_raw(item, prefixes), reason) from None
    return tuple(paths)


# Each field: the wire types it accepts, and how it becomes the request's value.
_FIELD_TYPES: dict[str, tuple] = {
    "name": (str, bytes), "mappings": (list,), "paths": (list,), "version": (int,),
    "track_access": (bool,),
}


def _field(message: dict, key: str, label: str, required: bool) -> Any:
    value = message.get(key)
    if value is None:
        if required:
            raise InvalidRequestError(f"{label}: missing field {key!r}")
        return None
    kinds = _FIELD_TYPES[key]
    if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
        names = " or ".join(k.__name__ for k in kinds)
        raise InvalidRequestError(
            f"{label}: field {key!r} must be {names}, got {type(value).__name__}"
        )
    return value


def decode_request(message: Any, prefixes: PrefixTable, store: GroupStore | None = None):
    """Turn one decoded msgpack value into a request object (``requests.OPS``), or raise
    InvalidRequestError / MappingError / MissingGroupError naming what is wrong."""
    if not isinstance(message, dict):
        raise InvalidRequestError(f"a request must be a map, got {type(message).__name__}")
    op = message.get("op")
    if not isinstance(op, str):
        raise InvalidRequestError("request has no string field 'op'")
    cls = OPS.get(op)
    if cls is None:
        raise InvalidRequestError(f"unknown op {op!r}; known: {', '.join(OPS)}")
    fields = fields_of(cls)
    unknown = set(message) - {"id", "op", "prefixes", *fields}
    if unknown:
        raise InvalidRequestError(f"{op}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    if "prefixes" in message:
        prefixes.register(message["prefixes"], op)
    required = required_fields(cls)
    values: dict[str, Any] = {}
    label = op
    if "name" in fields:
        name = values["name"] = _as_bytes(_field(message, "name", op, True), op)
        label = f"{op} '{display(name)}'"
    for key in fields:
        if key == "name":
            continue
        value = _field(message, key, label, key in required)
        if value is None:
            continue
        if key == "mappings":
            value = decode_mappings(value, prefixes, label, store)
        elif key == "paths":
            value = _decode_paths(value, prefixes, label)
        elif key == "version" and value < 1:
            raise InvalidRequestError(f"ping: version {value} is not a protocol version (1 or more)")
        values[key] = value
    return cls(**values)


def request_id(message: Any) -> Any:
    """The id of a request message (None when it has none or is not a map)."""
    return message.get("id") if isinstance(message, dict) else None


def ping_result(request: Ping, server: str) -> dict:
    return {"protocol": min(request.version, PROTOCOL_VERSION),
            "server_protocol": PROTOCOL_VERSION, "server": server}


def name_value(raw: bytes) -> str | bytes:
    """A name for a response: str when it is UTF-8, bytes otherwise."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw


def ok(request_id: Any, result: dict | None = None) -> dict:
    return {"id": request_id, "result": result or {}}


def error(request_id: Any, code: str, message: str, details: dict | None = None) -> dict:
    return {"id": request_id, "error": {"code": code, "message": message, "details": details or {}}}


def error_from(request_id: Any, exc: SandboxfsError) -> dict:
    return error(request_id, exc.code, exc.message, exc.details)
