"""Client subcommands: ``sandboxfs create | destroy | map | unmap | list | stats``.

Each talks to a running mount through its control socket with
``client.Client`` and prints a short human answer, or JSON with ``--json``.
Argument parsing is set up here; ``cli`` only wires it in and maps errors to
exit codes.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Callable

import msgpack

from sandboxfs.control.client import Client
from sandboxfs.errors import InvalidRequestError, UsageError


def control_path(args: argparse.Namespace) -> str:
    if args.control:
        return args.control
    if args.mount_point:
        from sandboxfs.mount import default_control_path

        return default_control_path(args.mount_point)
    raise UsageError("give --control PATH (or --mount-point DIR to use DIR.sock)")


def _load_mappings_file(path: str) -> list:
    """Mappings from a JSON or msgpack file: a list, or {"mappings": list}.

    Each mapping is ``[path, underlying, writable]`` or
    ``{"path": ..., "underlying": ..., "writable": ...}``.
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        try:
            value = msgpack.unpackb(data, raw=False, strict_map_key=False)
        except Exception as exc:
            raise InvalidRequestError(f"--from {path}: neither JSON nor msgpack ({exc})") from None
    if isinstance(value, dict):
        value = value.get("mappings")
    if not isinstance(value, list):
        raise InvalidRequestError(f"--from {path}: expected a list of mappings")
    out = []
    for index, item in enumerate(value):
        if isinstance(item, dict):
            item = [item.get("path"), item.get("underlying"), bool(item.get("writable", False))]
        if (not isinstance(item, list) or len(item) not in (2, 3)
                or not all(isinstance(p, (str, bytes)) for p in item[:2])):
            raise InvalidRequestError(
                f"--from {path}: mapping {index} is not [path, underlying, writable] with string paths"
            )
        out.append(item)
    return out


def _print(args: argparse.Namespace, value: Any, human: Callable[[Any], str]) -> int:
    if args.json:
        print(json.dumps(value, indent=2, sort_keys=True, default=os.fsdecode))
    else:
        print(human(value))
    return 0


def _cmd_create(args: argparse.Namespace) -> int:
    mappings = list(args.mapping)
    if args.from_file:
        mappings.extend(_load_mappings_file(args.from_file))
    with Client(control_path(args)) as client:
        result = client.create_sandbox(args.name, mappings)
    return _print(args, result, lambda r: f"created {r['name']} with {r['mappings']} mapping(s) at {r.get('path', '?')}")


def _cmd_destroy(args: argparse.Namespace) -> int:
    with Client(control_path(args)) as client:
        result = client.destroy_sandbox(args.name)
    return _print(args, result, lambda r: f"destroyed {r['name']}")


def _cmd_map(args: argparse.Namespace) -> int:
    with Client(control_path(args)) as client:
        result = client.map(args.name, list(args.mapping))
    return _print(args, result, lambda r: f"mapped {r['mapped']} path(s) in {r['name']}")


def _cmd_unmap(args: argparse.Namespace) -> int:
    with Client(control_path(args)) as client:
        result = client.unmap(args.name, list(args.paths))
    return _print(args, result, lambda r: f"unmapped {r['unmapped']} path(s) in {r['name']}")


def _table(rows: list[tuple[str, str]]) -> str:
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _cmd_list(args: argparse.Namespace) -> int:
    with Client(control_path(args)) as client:
        sandboxes = client.list()
    return _print(
        args,
        sandboxes,
        lambda rows: _table([("SANDBOX", "MAPPINGS")] + [(str(s["name"]), str(s["mappings"])) for s in rows])
        if rows else "no sandboxes",
    )


def _flatten(prefix: str, value: Any) -> list[tuple[str, str]]:
    if isinstance(value, dict):
        rows = []
        for key in sorted(value, key=str):
            rows.extend(_flatten(f"{prefix}.{key}" if prefix else str(key), value[key]))
        return rows
    return [(prefix, str(value))]


def _cmd_stats(args: argparse.Namespace) -> int:
    with Client(control_path(args)) as client:
        stats = client.stats()
    return _print(args, stats, lambda s: _table(_flatten("", s)))


def add_client_parsers(subparsers, mapping_arg: Callable[[str], Any]) -> None:
    """Register the client subcommands on the top-level parser."""

    def common(name: str, help_text: str, handler) -> argparse.ArgumentParser:
        p = subparsers.add_parser(name, help=help_text, description=help_text)
        where = p.add_mutually_exclusive_group()
        where.add_argument("--control", metavar="PATH", help="the mount's control socket")
        where.add_argument("--mount-point", metavar="DIR", help="use DIR.sock as the control socket")
        p.add_argument("--json", action="store_true", help="print JSON for machines")
        p.set_defaults(handler=handler, log_level="warning")
        return p

    p = common("create", "create a sandbox in a running mount", _cmd_create)
    p.add_argument("name", metavar="NAME")
    p.add_argument("--mapping", action="append", type=mapping_arg, default=[],
                   metavar="TYPE:PATH:UNDERLYING", help="a mapping inside the sandbox (repeatable)")
    p.add_argument("--from", dest="from_file", metavar="FILE",
                   help="read mappings from a JSON or msgpack FILE")

    p = common("destroy", "destroy a sandbox", _cmd_destroy)
    p.add_argument("name", metavar="NAME")

    p = common("map", "add mappings to a live sandbox", _cmd_map)
    p.add_argument("name", metavar="NAME")
    p.add_argument("--mapping", action="append", type=mapping_arg, default=[], required=True,
                   metavar="TYPE:PATH:UNDERLYING")

    p = common("unmap", "remove mappings from a live sandbox", _cmd_unmap)
    p.add_argument("name", metavar="NAME")
    p.add_argument("paths", nargs="+", metavar="PATH", help="mapped paths inside the sandbox")

    common("list", "list live sandboxes", _cmd_list)
    common("stats", "show server statistics", _cmd_stats)

