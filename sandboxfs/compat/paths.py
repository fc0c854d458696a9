"""The 0.2 path rules, and the host directories 0.2 shows between nested mappings."""

from __future__ import annotations

import json
import os
import stat
from typing import Sequence

from sandboxfs.compat.common import os_error_text
from sandboxfs.errors import RefusedError
from sandboxfs.tree.mapping import Mapping, check_underlying



def quoted(text: str) -> str:
    """A path as Rust's ``{:?}`` shows it: in double quotes, escaped."""
    return json.dumps(text, ensure_ascii=False)


def inner_components(path: str) -> tuple[bytes, ...]:
    """A path inside the mount or a sandbox, by 0.2's rules.

    Absolute; ``.`` and repeated or trailing slashes are dropped, as Rust's
    ``Path::components`` does; ``..`` is refused ("not normalized").
    """
    if not path.startswith("/"):
        raise RefusedError(f"path {quoted(path)} is not absolute")
    if "\0" in path:
        raise RefusedError(f"path {quoted(path)} contains a NUL byte")
    parts = [part for part in path.split("/") if part and part != "."]
    if ".." in parts:
        raise RefusedError(f"path {quoted(path)} is not normalized")
    return tuple(os.fsencode(part) for part in parts)


def mapping_02(path: str, underlying: str, writable: bool) -> Mapping:
    """A Mapping from 0.2's parts; the underlying path must be absolute (``..`` allowed)."""
    components = inner_components(path)
    if not underlying.startswith("/"):
        raise RefusedError(f"path {quoted(underlying)} is not absolute")
    if "\0" in underlying:
        raise RefusedError(f"path {quoted(underlying)} contains a NUL byte")
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


def with_02_rules(mappings: Sequence[Mapping], shown: Sequence[str] | None = None,
                  ) -> tuple[tuple[Mapping, ...], tuple[str, ...]]:
    """One request's (or the command line's) mappings under 0.2's rules, and how 0.2 shows each.

    The root only first; then the host directories behind intermediate
    directories as added mappings.  ``shown`` is 0.2's display of each given
    mapping (with its path as written); by default ``describe``.  Shared by
    the command line and the JSON stream so that both refuse and show alike.
    """
    shown = [describe(m) for m in mappings] if shown is None else list(shown)
    require_root_first(mappings, shown)
    added = back_intermediate_dirs(mappings)
    return tuple(mappings) + tuple(added), tuple(shown) + tuple(describe(m) for m in added)


def require_mountable_root(mappings: Sequence[Mapping]) -> None:
    """The mount's root mapping must be a directory, as in 0.2 (``Failed to map root: ...``).

    The kernel gives a FUSE root the type of the mount point, a directory:
    a root that then says it is a file makes every access to the mount fail
    with EIO.  (A *sandbox's* root may be a file; see docs/compat.md.)
    """
    if not mappings or mappings[0].components:
        return
    host = mappings[0].underlying
    try:
        st = os.lstat(host)
    except OSError as exc:
        raise RefusedError(f"Failed to map root: stat failed for {quoted(os.fsdecode(host))}: "
                           f"{os_error_text(exc)}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise RefusedError(f"Failed to map root: {quoted(os.fsdecode(host))} is not a directory")


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
