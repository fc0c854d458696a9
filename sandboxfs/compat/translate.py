"""One input stream's requests -> engine requests: prefixes, 0.2 mapping rules,
and the 0.2 error texts of responses."""

from __future__ import annotations

import json
import os
from typing import Sequence

import attrs

from sandboxfs.errors import AlreadyMappedError, SandboxfsError
from sandboxfs.tree.mapping import Mapping
from sandboxfs.control.requests import CreateSandbox as CreateRequest, DestroySandbox as DestroyRequest, Map
from sandboxfs.compat.common import U32_MAX
from sandboxfs.compat.args import _parse_unsigned
from sandboxfs.compat.paths import RefusedError, describe, mapping_02, with_02_rules
from sandboxfs.compat.jsondecode import CreateSandbox, DestroySandbox



@attrs.frozen
class Job:
    """A translated request: what to execute, or the error to answer with."""

    id: str
    op: str = ""
    name: bytes = b""
    mappings: tuple[Mapping, ...] = ()
    shown: tuple[str, ...] = ()  # 0.2's display of each mapping, for messages
    error: str | None = None

    def request(self, as_op: type | None = None) -> CreateRequest | DestroyRequest | Map:
        """The engine request: this job's own op, or ``as_op`` (Map, for a live id)."""
        if as_op is Map:
            return Map(self.name, self.mappings)
        if self.op == "destroy_sandbox":
            return DestroyRequest(self.name)
        return CreateRequest(self.name, self.mappings)


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
                number = _parse_unsigned(key, U32_MAX)
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
        specs, texts = with_02_rules(mappings, shown)
        return Job(request.id, "create_sandbox", os.fsencode(request.id), specs, texts)


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
