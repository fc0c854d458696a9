"""The 0.2 command line: getopts-style flags, their messages and ``Options``."""

from __future__ import annotations

import os
import re
from typing import Collection, Sequence

import attrs

from sandboxfs import __version__
from sandboxfs.errors import UsageError
from sandboxfs.tree.mapping import Mapping
from sandboxfs.compat.common import DEFAULT_TTL, PROGRAM, STDIO, U32_MAX, USIZE_MAX
from sandboxfs.compat.paths import RefusedError, mapping_02


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
    -h, --help          print this help and exit
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
    ``-h`` is ``--help``.  Structural errors come first, in the order getopts
    reports them.
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
            for letter in arg[1:]:  # short options, grouped as getopts allows: only -h
                if letter != "h":
                    raise UsageError(f"Unrecognized option: '{letter}'")
                given.setdefault("help", []).append(None)
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
        return float(_parse_unsigned(value, U32_MAX))
    except ValueError as exc:
        raise UsageError(f"invalid time specification {text}: {exc}") from None


def parse_threads(text: str) -> int:
    try:
        count = _parse_unsigned(text, USIZE_MAX)
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

    No arguments at all (0.2's usage error, which build tools may test for),
    or no subcommand first and either a flag first (``--allow=self``,
    ``--version``, ``--help``, ``-h``) or something that names a mount point:
    a path, an existing directory, or a word followed by more arguments.  A
    lone word that is none of these is reported as an unknown command by the
    subcommand CLI.
    """
    if not argv:
        return True
    first = argv[0]
    if first in commands:
        return False
    return first.startswith("-") or len(argv) > 1 or "/" in first or os.path.isdir(first)
