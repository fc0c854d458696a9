"""The command line: argument parsing and exit statuses, nothing else.

Each subcommand is a small function that hands off to the module that does
the work.  Exit statuses come from ``errors`` (0 success, 1 a runtime error,
2 a usage error; ``sandboxfs run`` has its own, see run/command.py).  Our
errors print as one line without a traceback; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from sandboxfs import __version__, compat, logs
from sandboxfs.cli import control_commands as commands
from sandboxfs.control.framing import DEFAULT_MAX_MESSAGE_SIZE
from sandboxfs.errors import (
    EXIT_INTERRUPTED, EXIT_OK, EXIT_RUN_FAILED, EXIT_RUNTIME, MappingError, SandboxfsError,
    UsageError, describe_oserror,
)
from sandboxfs.mount import TRANSPORTS, default_transport
from sandboxfs.tree.groups import DEFAULT_BUDGET_BYTES
from sandboxfs.tree.mapping import Mapping, parse_mapping_flag

log = logging.getLogger("sandboxfs")


def _mapping_arg(text: str) -> Mapping:
    try:
        return parse_mapping_flag(text)
    except MappingError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _seconds_arg(text: str) -> float:
    try:
        value = float(text[:-1] if text.endswith("s") else text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def _add_mount_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "mount",
        help="mount a sandboxfs and serve it until a signal or fusermount3 -u",
        description="Mount a sandboxfs at MOUNT_POINT and serve it until SIGINT, SIGTERM, "
        "SIGQUIT or SIGHUP (each detaches the mount lazily at once and exits 0) or an external "
        "fusermount3 -u.",
    )
    p.add_argument(
        "--mapping",
        action="append",
        type=_mapping_arg,
        default=[],
        metavar="TYPE:PATH:UNDERLYING",
        help="show host path UNDERLYING at PATH inside the mount; TYPE is ro or rw (repeatable)",
    )
    p.add_argument("--allow", choices=("self", "other", "root"), default="self",
                   help="who may use the mount besides the mounting user (default: self)")
    p.add_argument("--ttl", type=_seconds_arg, default=60.0, metavar="SECONDS",
                   help="how long the kernel may cache entries and attributes (default: 60)")
    p.add_argument("--xattrs", action="store_true",
                   help="pass extended attributes through to the host (default: EOPNOTSUPP)")
    p.add_argument("--control", metavar="PATH",
                   help="control socket path (default: MOUNT_POINT.sock beside the mount point)")
    p.add_argument("--no-control", action="store_true", help="do not open a control socket")
    p.add_argument("--control-allow-uid", type=int, action="append", default=[], metavar="UID",
                   help="let this uid use the control socket too (repeatable; "
                   "the mounting uid and root always may)")
    p.add_argument("--max-message-size", type=_size_arg, default=DEFAULT_MAX_MESSAGE_SIZE,
                   metavar="BYTES", help="largest control message accepted (default: 64 MiB)")
    p.add_argument("--control-timeout", type=_seconds_arg, default=30.0, metavar="SECONDS",
                   help="close a control connection that stalls inside a message or stops "
                   "reading its answers for this long (default: 30)")
    p.add_argument("--group-memory-mb", type=int, default=DEFAULT_BUDGET_BYTES >> 20, metavar="MB",
                   help="memory for the groups of mappings kept by digest, shared by all "
                   "connections (default: %(default)s)")
    p.add_argument("--transport", choices=TRANSPORTS, default=default_transport(),
                   help="kernel: our own /dev/fuse protocol (passthrough, cached listings); "
                   "pyfuse3: through libfuse (default: %(default)s, or $SANDBOXFS_TRANSPORT)")
    p.add_argument("--no-passthrough", action="store_true",
                   help="kernel transport: serve reads ourselves instead of FUSE passthrough")
    p.add_argument("--no-open", action="store_true",
                   help="kernel transport: FUSE no_open, the kernel opens files without asking "
                   "(a reopen costs no request; a write to a read-only file fails at write(), "
                   "not at open(); no passthrough: docs/design.md)")
    p.add_argument("--no-shared-inodes", action="store_true",
                   help="give each sandbox's read-only files inodes of their own instead of one "
                   "kernel inode per host file across sandboxes (docs/design.md)")
    p.add_argument("--spin-us", type=float, default=None, metavar="MICROSECONDS",
                   help="kernel transport: after answering, poll for the next request this "
                   "long before sleeping (default: 0 = never, or $SANDBOXFS_SPIN_US; 50 is a good "
                   "value on a quiet machine: docs/design.md)")
    p.add_argument("--log-level", default="info",
                   choices=("debug", "info", "warning", "error"), help="default: info")
    p.add_argument("mount_point", metavar="MOUNT_POINT")
    p.set_defaults(handler=_cmd_mount)


def _size_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of bytes") from None
    if value < 1024:
        raise argparse.ArgumentTypeError(f"{text!r} is below the minimum of 1024 bytes")
    return value


def _cmd_mount(args: argparse.Namespace) -> int:
    from sandboxfs.mount import MountConfig, default_control_path, run

    control = None if args.no_control else args.control or default_control_path(args.mount_point)
    config = MountConfig(
        mount_point=args.mount_point,
        mappings=tuple(args.mapping),
        allow=args.allow,
        ttl=args.ttl,
        xattrs=args.xattrs,
        control=control,
        control_allow_uids=tuple(args.control_allow_uid),
        max_message_size=args.max_message_size,
        control_timeout=args.control_timeout,
        group_memory=args.group_memory_mb << 20,
        transport=args.transport,
        passthrough=not args.no_passthrough,
        spin_us=args.spin_us,
        no_open=args.no_open,
        shared_inodes=not args.no_shared_inodes,
    )
    run(config)
    return EXIT_OK  # a signal or an external unmount is the normal end of `mount`


def _add_run_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "run",
        help="run a command in a fresh sandbox and destroy it afterwards",
        description="Create a sandbox with the given mappings (in a running mount, or in a "
        "private one started for this run), run COMMAND in it, pass its output and exit status "
        "through, and destroy the sandbox whatever happens. Exit status: the command's; "
        "128+N if it died of signal N; 124 on --timeout; 125 if sandboxfs failed; 126/127 "
        "if COMMAND cannot be run or found.",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--control", metavar="PATH", help="a running mount's control socket")
    where.add_argument("--mount-point", metavar="DIR", help="a running mount (DIR.sock)")
    p.add_argument("--mapping", action="append", type=_mapping_arg, default=[],
                   metavar="TYPE:PATH:UNDERLYING",
                   help="show host path UNDERLYING at PATH inside the sandbox (repeatable)")
    p.add_argument("--map-system", action="store_true",
                   help="also map /usr, /bin, /sbin, /lib* and /etc (without its secrets) read-only")
    p.add_argument("--rw-tmp", action="store_true",
                   help="without --confine: map a fresh writable directory at /tmp, set TMPDIR")
    p.add_argument("--confine", action="store_true",
                   help="make the sandbox the command's root filesystem in new mount, PID, IPC, "
                   "UTS and network namespaces, with /proc, a minimal /dev and a tmpfs /tmp")
    p.add_argument("--network", action="store_true", help="with --confine: keep the host network")
    p.add_argument("--cwd", default="/", metavar="PATH",
                   help="working directory inside the sandbox (default: its root)")
    p.add_argument("--timeout", type=_seconds_arg, metavar="SECONDS",
                   help="kill the command after this long (exit status 124)")
    p.add_argument("--report", metavar="FILE",
                   help="track accesses and write the access report to FILE (JSON; msgpack if "
                   "FILE ends in .msgpack; '-' for stderr)")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND ARGS")
    p.set_defaults(handler=_cmd_run, log_level="warning")


def _cmd_run(args: argparse.Namespace) -> int:
    from sandboxfs.run import command as run
    from sandboxfs.cli.control_commands import control_path

    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise UsageError("run: give the command to run after --")
    if args.network and not args.confine:
        raise UsageError("run: --network only means something with --confine")
    config = run.RunConfig(
        argv=tuple(argv),
        mappings=tuple(args.mapping),
        control=control_path(args) if args.control or args.mount_point else None,
        confine=args.confine,
        network=args.network,
        map_system=args.map_system,
        rw_tmp=args.rw_tmp,
        cwd=args.cwd,
        timeout=args.timeout,
        report=args.report,
    )
    try:
        return run.run(config)
    except SandboxfsError as exc:  # whatever it was, it was not the command's
        print(f"sandboxfs run: {exc.message}", file=sys.stderr)
        return EXIT_RUN_FAILED


def _add_server_options(p: argparse.ArgumentParser) -> None:
    """What ``serve`` and ``worker`` share: the mount's cache time, transport, log level."""
    p.add_argument("--ttl", type=_seconds_arg, default=60.0, metavar="SECONDS",
                   help="how long the kernel may cache entries and attributes (default 60)")
    p.add_argument("--transport", choices=TRANSPORTS, default=None,
                   help="kernel (default) or pyfuse3")
    p.add_argument("--no-open", action="store_true",
                   help="kernel transport: FUSE no_open, the kernel opens files without asking "
                   "(a reopen costs no request; a write to a read-only file fails at write(), "
                   "not at open(); no passthrough: docs/design.md)")
    p.add_argument("--log-level", default="warning",
                   choices=("debug", "info", "warning", "error"))


def _add_serve_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve Bazel's sandbox-backend protocol on stdin/stdout (docs/backend.md)",
        description="Mount once and create sandboxes from REAPI Merkle trees for Bazel's "
                    "sandbox-backend protocol, spoken on stdin/stdout.",
    )
    p.add_argument("--workspace", required=True, help="the Bazel workspace being built")
    p.add_argument("--state-dir", help="where the mount, the content store and scratch "
                                       "directories live (default: ~/.cache/sandboxfs/serve/HASH)")
    p.add_argument("--store-budget", metavar="SIZE",
                   help="bytes of pushed content kept for reuse, e.g. 2G (default 8G)")
    p.add_argument("--max-idle-slots", type=int, metavar="N",
                   help="destroyed sandboxes kept for reuse by Merkle diff (default 32)")
    _add_server_options(p)
    p.set_defaults(handler=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    from sandboxfs.backend.serve import run_serve  # protobuf only when serving

    return run_serve(args)


def _add_worker_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "worker",
        help="run remote-execution actions for an engine (BuildGrid) in sandboxes (docs/worker.md)",
        description="A Remote Workers API bot: take leases from the engine, run each action "
                    "in a sandbox whose input files are fetched from the engine's CAS on "
                    "first open, upload the outputs and report the result.",
    )
    p.add_argument("--engine", required=True, metavar="grpc://HOST:PORT",
                   help="the engine's Bots and CAS services")
    p.add_argument("--instance", default="", help="the engine's instance name (default: '')")
    p.add_argument("--concurrency", type=int, default=1, metavar="N",
                   help="actions run at once, one bot session each (default 1)")
    p.add_argument("--name", help="the bot name the engine sees (default: the host name); "
                                  "session i is NAME/i")
    p.add_argument("--state-dir", help="mount, content store and scratch "
                                       "(default: ~/.cache/sandboxfs/worker/HASH)")
    p.add_argument("--store-budget", metavar="SIZE",
                   help="bytes of fetched content kept for later actions (default 16G)")
    p.add_argument("--no-prefetch", action="store_true",
                   help="fetch every file on its first open, never what the same command "
                        "read last time")
    p.add_argument("--confine", action="store_true",
                   help="run each action in namespaces of its own, in a root holding only its "
                        "sandbox, the system directories (read-only), a private /proc, /dev "
                        "and /tmp, and no network")
    _add_server_options(p)
    p.set_defaults(handler=_cmd_worker)


def _cmd_worker(args: argparse.Namespace) -> int:
    from sandboxfs.worker.main import run_worker  # grpc only when working

    return run_worker(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sandboxfs",
        description="A FUSE filesystem that serves build sandboxes from an in-memory mapping tree.",
    )
    parser.add_argument("--version", action="version", version=f"sandboxfs {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_mount_parser(subparsers)
    commands.add_client_parsers(subparsers, _mapping_arg)
    _add_run_parser(subparsers)
    _add_serve_parser(subparsers)
    _add_worker_parser(subparsers)
    return parser


def _command_names(parser: argparse.ArgumentParser) -> set[str]:
    return {name for action in parser._actions
            if isinstance(action, argparse._SubParsersAction) for name in action.choices}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (argparse exits 2 on usage errors)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if compat.is_02_command_line(argv, _command_names(parser)):
        return compat.main(argv)  # the sandboxfs 0.2 command line: no subcommand
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    logs.configure(getattr(args, "log_level", "warning"))
    try:
        return args.handler(args)
    except SandboxfsError as exc:
        print(f"sandboxfs: {exc.message}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except OSError as exc:  # e.g. the control socket is not there
        where = f" {exc.filename}:" if exc.filename else ""
        print(f"sandboxfs:{where} {describe_oserror(exc)}", file=sys.stderr)
        return EXIT_RUNTIME
