"""Start-up of the 0.2 front end: options -> mount, the JSON service, 0.2's shutdown, exit codes."""

from __future__ import annotations

import contextlib
import cProfile
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Sequence

from sandboxfs import __version__, logs
from sandboxfs.errors import (
    EXIT_INTERRUPTED, MappingError, RuntimeFailure, SandboxfsError, UsageError,
)
from sandboxfs.tree.mapping import Mapping
from sandboxfs.compat.common import PROGRAM, UNMOUNT_TIMEOUT, UNMOUNT_TIMEOUT_VARIABLE, os_error_text
from sandboxfs.compat.args import HELP, Options, VERSION, parse_args, usage
from sandboxfs.compat.paths import require_mountable_root, with_02_rules
from sandboxfs.compat.service import InputSource, JsonStream, OutputSink
from sandboxfs.compat.translate import error_text

if TYPE_CHECKING:  # pragma: no cover
    from sandboxfs.control.reconfig import Reconfigurer

log = logging.getLogger(__name__)



def _usage_error(message: str) -> None:
    sys.stderr.write(
        f"usage: {PROGRAM} [options] MOUNT_POINT\n"
        f"{PROGRAM}: error: {message}\n"
        f"Type {PROGRAM} --help for more information\n"
    )


def mount_mappings(options: Options) -> tuple[tuple[Mapping, ...], tuple[str, ...]]:
    """The command line's mappings with 0.2's rules applied, and 0.2's display of each.

    Root first and a directory (``Failed to map root: ...``), host-backed
    intermediate directories added.
    """
    require_mountable_root(options.mappings)
    return with_02_rules(options.mappings)


def unmount_timeout() -> float:
    """How long a busy mount is kept after a signal: ``$SANDBOXFS_UNMOUNT_TIMEOUT`` or 30 s.

    0.2 retried for ever; a bound keeps a shell left in the mount from holding
    a shutdown (and the build tool waiting on it) for ever.
    """
    text = os.environ.get(UNMOUNT_TIMEOUT_VARIABLE)
    if text is None:
        return UNMOUNT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise RuntimeFailure(
            f"{UNMOUNT_TIMEOUT_VARIABLE}={text!r}: not a number of seconds (0 or more)")
    return value


@contextlib.contextmanager
def cpu_profile(path: str | None):
    """``--cpu_profile``: cProfile of the main thread (the event loop), pstats at PATH on exit."""
    if path is None:
        yield
        return
    try:
        open(path, "wb").close()  # fail now, not after the run
    except OSError as exc:
        raise RuntimeFailure(f"Failed to start CPU profile: {path}: {os_error_text(exc)}") from None
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()
        try:
            profiler.dump_stats(path)
        except OSError as exc:
            log.error("cannot write the CPU profile to %s: %s", path, os_error_text(exc))


def serve(options: Options) -> int:
    """Mount, serve the JSON stream, unmount; 0 after an external unmount, 1 after a signal."""
    from sandboxfs import mount  # pyfuse3 only when mounting

    if options.node_cache:
        log.info("--node_cache: accepted; node identities are always kept (docs/design.md)")
    mappings, shown = mount_mappings(options)
    config = mount.MountConfig(
        mount_point=options.mount_point,
        mappings=mappings,
        allow=options.allow,
        ttl=options.ttl,
        xattrs=options.xattrs,
        control=None,  # 0.2 has no control socket
        transport=mount.default_transport(),
        unmount_timeout=unmount_timeout(),  # 0.2's plain unmount, retried while busy
    )
    with contextlib.ExitStack() as cleanup:
        source = InputSource(options.input)
        cleanup.callback(source.close)
        sink = OutputSink(options.output)
        cleanup.callback(sink.close)

        def services(reconfigurer: "Reconfigurer"):
            # 0.2 accepts a sandbox whose root is mapped to a file: /ID is then that file.
            reconfigurer.tree.file_tops = True
            return [JsonStream(reconfigurer, source, sink, options.reconfig_threads).run]

        with cpu_profile(options.cpu_profile):
            try:
                signum = mount.run(config, services_for=services)
            except MappingError as exc:  # the tree refused a --mapping: 0.2's wording
                raise RuntimeFailure(error_text(exc, shown)) from None
            except SandboxfsError as exc:
                raise RuntimeFailure(
                    f"Failed to mount {options.mount_point}: {exc.message}"
                ) from None
    if signum:
        print(f"{PROGRAM}: Caught signal {signum} ({signal.Signals(signum).name})", file=sys.stderr)
        return RuntimeFailure.exit_status
    return 0


def main(argv: Sequence[str]) -> int:
    """Run the 0.2 command line; returns the exit status."""
    try:
        parsed = parse_args(argv)
    except UsageError as exc:
        _usage_error(exc.message)
        return exc.exit_status
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
        return exc.exit_status
    except KeyboardInterrupt:  # SIGINT before the mount watches signals: nothing is mounted
        return EXIT_INTERRUPTED
