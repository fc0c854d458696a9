"""The control operations: one request class per op, and the table of them.

Adding an op is one class here (its fields are its wire fields), one
handler (``Reconfigurer.<op>``) and one client method; the server, both
Python clients and the command-line client find everything else through
``OPS``.  A test checks that every op has its handler and its client methods.

Field values depend on the side: a client fills ``mappings`` with the
caller's mappings, the decoder with validated specs (``tree.Mapping`` and
``tree.groups.Group``); ``name`` is bytes once decoded.

Pure: no I/O.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from sandboxfs.tree.groups import Group

PROTOCOL_VERSION = 2


def _size(mappings: Any) -> int:
    return sum(spec.count if type(spec) is Group else 1 for spec in mappings)


@attrs.frozen
class Ping:
    """The protocol version both sides speak, and the server's version."""

    op: ClassVar[str] = "ping"
    version: int = 1


@attrs.frozen
class CreateSandbox:
    """Create sandbox ``name`` from ``mappings``, all or nothing."""

    op: ClassVar[str] = "create_sandbox"
    name: Any
    mappings: Any
    track_access: bool = False

    @property
    def mapping_count(self) -> int:
        return _size(self.mappings)


@attrs.frozen
class DestroySandbox:
    """Destroy sandbox ``name``; its access report if it was tracked."""

    op: ClassVar[str] = "destroy_sandbox"
    name: Any


@attrs.frozen
class AccessReport:
    """What was accessed so far in a tracked sandbox."""

    op: ClassVar[str] = "access_report"
    name: Any


@attrs.frozen
class Map:
    """Add mappings to a live sandbox, all or nothing."""

    op: ClassVar[str] = "map"
    name: Any
    mappings: Any

    @property
    def mapping_count(self) -> int:
        return _size(self.mappings)


@attrs.frozen
class Unmap:
    """Remove mappings (paths inside the sandbox) from a live sandbox, all or nothing."""

    op: ClassVar[str] = "unmap"
    name: Any
    paths: Any


@attrs.frozen
class ListSandboxes:
    """The live sandboxes."""

    op: ClassVar[str] = "list"


@attrs.frozen
class Stats:
    """The server's counters."""

    op: ClassVar[str] = "stats"


Request = Ping | CreateSandbox | DestroySandbox | AccessReport | Map | Unmap | ListSandboxes | Stats

OPS: dict[str, type] = {
    cls.op: cls
    for cls in (Ping, CreateSandbox, DestroySandbox, AccessReport, Map, Unmap, ListSandboxes, Stats)
}


def fields_of(cls: type) -> tuple[str, ...]:
    """The wire fields of a request class (besides ``id``, ``op`` and ``prefixes``)."""
    return tuple(field.name for field in attrs.fields(cls))


def required_fields(cls: type) -> tuple[str, ...]:
    return tuple(field.name for field in attrs.fields(cls) if field.default is attrs.NOTHING)
