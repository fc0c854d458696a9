"""Start-up of the 0.2 front end: options -> mount, the JSON service, exit codes."""

from __future__ import annotations

import contextlib
import cProfile
import logging
import signal
import sys
from typing import TYPE_CHECKING, Sequence

from sandboxfs import __version__, logs
from sandboxfs.errors import EXIT_INTERRUPTED, RuntimeFailure, SandboxfsError, UsageError
from sandboxfs.tree.mapping import Mapping
from sandboxfs.compat.common import PROGRAM
from sandboxfs.compat.args import HELP, Options, VERSION, parse_args, usage
from sandboxfs.compat.paths import back_intermediate_dirs, describe, require_root_first
from sandboxfs.compat.service import InputSource, JsonStream, OutputSink, os_error_text

if TYPE_CHECKING:  # pragma: no cover
    from sandboxfs.control.reconfig import Reconfigurer

log = logging.getLogger(__name__)



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
    config = mount.MountConfig(
        mount_point=options.mount_point,
        mappings=mount_mappings(options),
        allow=options.allow,
        ttl=options.ttl,
        xattrs=options.xattrs,
        control=None,  # 0.2 has no control socket
        transport=mount.default_transport(),
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
