"""Our own FUSE transport: the kernel's protocol spoken on /dev/fuse from the trio loop.

Why: through pyfuse3 + libfuse a request costs ~18 us of server CPU, and
pyfuse3 cannot ask the kernel for passthrough, cached listings or more
background requests.  Here a request is one ``readv`` into a reused buffer,
one dict lookup of its handler, the operation, and one ``write`` of the reply.

The loop reads and answers requests inline (operations are synchronous and
take microseconds: see ``fs.interface``), so several requests are in flight
in the kernel while we answer one at a time; a host read that would block
and fsync run in worker threads and answer when done.  The fd is
non-blocking: an empty queue parks the loop in ``wait_readable``, and every
``CHECKPOINT_EVERY`` requests the loop yields so the control server runs.

What the kernel sends never ends the loop: a malformed request is answered
EINVAL, an unknown opcode ENOSYS, a failing operation its errno (anything
but OSError is logged and answered EIO).  ENODEV from the device means the
mount is gone: ``serve`` returns.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import resource
import select
import struct
import time

import trio

from sandboxfs.fs.interface import Context, Opened, StaleError, errno_of
from sandboxfs.fs.operations import Operations
from sandboxfs.fuse.kernel import device, wire
from sandboxfs.fuse.kernel.handlers import NO_REPLY, Handlers

log = logging.getLogger(__name__)

MAX_WRITE = 1 << 20
MAX_PAGES = MAX_WRITE // 4096
BUFFER_SIZE = MAX_WRITE + 64 * 1024
MAX_BACKGROUND = 64
CONGESTION_THRESHOLD = 48
CHECKPOINT_EVERY = 32
# After answering, poll the device this long before sleeping in epoll: a client
# that issues its next request at once (stat after stat, a compiler's lookups)
# finds the server awake, instead of paying a wake-up of both sides per request.
# Off by default: it won 0.6x on a quiet host and lost 1.2-1.4x on a contended one
# (docs/design.md).  --spin-us or $SANDBOXFS_SPIN_US turns it on.
DEFAULT_SPIN_US = 0
SPIN_MISSES = 4  # polls in a row that found nothing: the client has gone quiet ...
SPIN_REST = 64  # ... so sleep at once for this many waits before polling again
MAX_KEPT_BACKING = 10_000  # idle passthrough backing ids kept for reopens (each pins a host file)
THREADS = trio.CapacityLimiter(16)  # bounded: slow disks cannot spawn unbounded threads
# Opens waiting for content from a remote CAS (sandboxfs.worker): network-bound, not disk-bound,
# so apart from THREADS (a slow engine must not hold up reads).
FETCH_THREADS = trio.CapacityLimiter(32)

_IN = wire.IN_HEADER.unpack_from
_OUT = wire.OUT_HEADER.pack


def _spin(ready, deadline_ns: int, now_ns) -> bool:
    """Poll the device without sleeping until ``deadline_ns``; True once a request waits."""
    while now_ns() < deadline_ns:
        if ready(0):
            return True
    return False


class KernelNotifier:
    """``interface.KernelNotifier`` by writing notifications to the device.

    The kernel handles a notification synchronously and may wait for a lookup
    in progress in that directory, which only our loop can answer: so the
    writes happen in a worker thread while the loop keeps serving.
    """

    def __init__(self, transport: "KernelTransport") -> None:
        self.transport = transport

    async def invalidate_entries(self, entries: list[tuple[int, bytes]]) -> None:
        await trio.to_thread.run_sync(self._write_all, entries)

    def _write_all(self, entries: list[tuple[int, bytes]]) -> None:
        fd = self.transport.fd
        for parent, name in entries:
            body = struct.pack("=QII", parent, len(name), 0) + name + b"\0"
            try:
                os.write(fd, _OUT(wire.OUT_HEADER_SIZE + len(body), wire.NOTIFY_INVAL_ENTRY, 0)
                         + body)
            except FileNotFoundError:
                pass  # the kernel had nothing cached under that name
            except OSError as exc:
                if exc.errno in (errno.ENODEV, errno.EBADF):
                    return  # unmounted meanwhile
                log.warning("invalidating entry %r in inode %d: %s", name, parent, exc)


class KernelTransport:
    """Mount, serve and unmount through /dev/fuse with our own protocol code."""

    name = "kernel"

    def __init__(self, ops: Operations, *, passthrough: bool = True,
                 spin_us: float | None = None, no_open: bool = False) -> None:
        self.ops = ops
        self.no_open = no_open  # answer OPEN ENOSYS: the kernel then opens files without us
        if spin_us is None:
            spin_us = float(os.environ.get("SANDBOXFS_SPIN_US", DEFAULT_SPIN_US))
        self.spin_ns = int(spin_us * 1000)
        self.spins = {"hits": 0, "misses": 0}
        self.fd = -1
        self.mount_point = ""
        self._real_path = b""
        self._mounted_as: str | None = None  # our mount's id (device.mounted_device)
        self.want_passthrough = passthrough
        self.passthrough = False      # what INIT settled
        self.notifier = KernelNotifier(self)
        self.handlers = Handlers(ops, self._register_backing, self._release_backing,
                                 self.forgotten)
        self.request_counts: collections.Counter[str] = collections.Counter()
        self.cpu_seconds = 0.0
        self._backing: dict[int, list] = {}  # ino -> [backing id, opens, host file identity]
        self._backed: dict[int, int] = {}         # fh of a passthrough open -> ino
        # Opens we serve while passthrough is on (the kernel's cached I/O mode): a
        # passthrough open beside them would fail (_register_backing).
        self._cached: dict[int, int] = {}         # fh -> ino
        self._cached_opens: collections.Counter[int] = collections.Counter()  # ino -> opens
        self._buffer = bytearray(BUFFER_SIZE)
        self.kernel_minor = 0

    # -- lifetime --------------------------------------------------------------------

    def mount(self, mount_point: str, options: set[str]) -> None:
        """Mount; raises RuntimeError when the kernel refuses."""
        self._real_path = os.fsencode(os.path.realpath(mount_point))  # before: no stat of ours
        try:
            self.fd = device.mount(mount_point, options)
        except OSError as exc:
            raise RuntimeError(str(exc)) from None
        self.mount_point = mount_point
        self._mounted_as = device.mounted_device(self._real_path)
        device.set_nonblocking(self.fd)
        if self.no_open:  # a host fd per inode the kernel holds (fs.inode_files)
            _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    def unmount(self) -> None:
        """Detach our mount, close the device.

        Nothing is detached when the kernel already ended the session (the
        mount was removed from outside, and the path may hold someone else's
        mount by now: mount ids are reused at once), nor when another mount
        was made on top of ours.  An aborted connection's dead mount is then
        left to the next start (``mount.prepare_mount_point``), as libfuse does.
        """
        if self.mount_point and self.fd >= 0 and not device.session_ended(self.fd):
            now = device.mounted_device(self._real_path)
            if self._mounted_as is None or now == self._mounted_as:
                device.unmount(self.mount_point)
            else:
                log.warning("%s has another mount on top of ours (%s, ours is %s): left alone",
                            self.mount_point, now, self._mounted_as)
        self.close_device()

    def close_device(self) -> None:
        """Close the session's fd; a loop waiting on it ends (``serve`` returns)."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            try:
                trio.lowlevel.notify_closing(fd)
            except RuntimeError:
                pass  # not inside trio: nothing waits on it
            os.close(fd)

    def counts(self) -> dict[str, int]:
        counts = dict(self.request_counts)
        counts["server_cpu_us"] = int(self.cpu_seconds * 1e6)
        counts["spin_hits"], counts["spin_misses"] = self.spins["hits"], self.spins["misses"]
        return counts

    # -- the loop --------------------------------------------------------------------

    async def serve(self) -> None:
        """Answer requests until the kernel ends the session (unmount)."""
        buf = self._buffer
        view = memoryview(buf)
        fd = self.fd
        readv = os.readv
        table = self.handlers.table
        counts = self.request_counts
        names = wire.OPCODE_NAMES
        clock = time.thread_time
        served = 0
        spin_ns = self.spin_ns
        now_ns = time.perf_counter_ns
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        ready = poller.poll
        spins = self.spins
        busy = False  # answered a request since the last sleep
        misses = rest = 0
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    n = readv(fd, [buf])
                except BlockingIOError:
                    if busy and spin_ns:
                        if rest:
                            rest -= 1
                        elif _spin(ready, now_ns() + spin_ns, now_ns):
                            misses = 0
                            spins["hits"] += 1
                            continue  # a request came while polling: read it
                        else:
                            spins["misses"] += 1
                            misses += 1
                            if misses >= SPIN_MISSES:
                                misses, rest = 0, SPIN_REST
                    busy = False
                    try:
                        await trio.lowlevel.wait_readable(fd)
                    except trio.ClosedResourceError:
                        nursery.cancel_scope.cancel()
                        return  # close_device: we are shutting down
                    served = 0
                    continue
                except OSError as exc:
                    if exc.errno in (errno.ENOENT, errno.EINTR):
                        continue  # the request was interrupted before we read it
                    if exc.errno in (errno.ENODEV, errno.ECONNABORTED, errno.EBADF):
                        log.info("the session ended (%s)", errno.errorcode[exc.errno])
                        nursery.cancel_scope.cancel()
                        return  # unmounted, aborted, or our fd closed
                    raise
                started = clock()
                if n < wire.IN_HEADER_SIZE:
                    log.error("short request from the kernel (%d bytes); ignored", n)
                    continue
                length, opcode, unique, nodeid, uid, gid, pid, _ = _IN(buf)
                counts[names.get(opcode, "unknown")] += 1
                ctx = Context(uid, gid, pid)
                if opcode == wire.READ:
                    self._read(nursery, unique, nodeid, buf)
                elif opcode == wire.WRITE:
                    self._answer(unique, table[opcode], nodeid, ctx,
                                 view[wire.IN_HEADER_SIZE:min(n, length)])
                elif opcode == wire.FSYNC or opcode == wire.FSYNCDIR:
                    nursery.start_soon(self._fsync, unique, opcode, nodeid,
                                       bytes(view[wire.IN_HEADER_SIZE:n]))
                elif opcode == wire.OPEN and self.no_open:
                    self._reply_error(unique, errno.ENOSYS)  # the first OPEN, and the last
                elif opcode == wire.OPEN and (fetch := self.ops.fetch_for(nodeid)) is not None:
                    nursery.start_soon(self._open_after, fetch, unique, table[opcode], nodeid,
                                       ctx, bytes(view[wire.IN_HEADER_SIZE:min(n, length)]))
                elif opcode == wire.INIT:
                    self._init(unique, bytes(view[wire.IN_HEADER_SIZE:n]))
                elif opcode == wire.INTERRUPT:
                    pass  # every request ends soon on its own; replying is allowed to win
                else:
                    handler = table.get(opcode)
                    if handler is None:
                        self._reply_error(unique, errno.ENOSYS)
                    else:
                        self._answer(unique, handler, nodeid, ctx,
                                     bytes(view[wire.IN_HEADER_SIZE:min(n, length)]))
                self.cpu_seconds += clock() - started
                busy = True
                served += 1
                if served >= CHECKPOINT_EVERY:
                    served = 0
                    await trio.lowlevel.checkpoint()

    def _answer(self, unique: int, handler, nodeid: int, ctx: Context, data) -> None:
        try:
            body = handler(nodeid, ctx, data)
        except (ValueError, struct.error, IndexError):
            log.warning("malformed %s request (%d bytes of arguments); answering EINVAL",
                        getattr(handler, "__name__", "?"), len(data))
            self._reply_error(unique, errno.EINVAL)
            return
        except Exception as exc:
            self._reply_error(unique, errno_of(exc, f"{handler.__name__}({nodeid})"))
            return
        if body is NO_REPLY:
            return
        self._write(_OUT(wire.OUT_HEADER_SIZE + len(body), 0, unique) + body, unique)

    def _write(self, reply, unique: int) -> None:
        try:
            os.write(self.fd, reply)
        except FileNotFoundError:
            pass  # the request was interrupted and is gone: nothing waits for the answer
        except OSError as exc:
            if exc.errno not in (errno.ENODEV, errno.EBADF):
                log.warning("writing the reply to request %d: %s", unique, exc)

    def _reply_error(self, unique: int, number: int) -> None:
        self._write(_OUT(wire.OUT_HEADER_SIZE, -number, unique), unique)

    # -- requests that may block -----------------------------------------------------

    def _read(self, nursery: trio.Nursery, unique: int, nodeid: int, buf: bytearray) -> None:
        try:
            fh, offset, size, _ = wire.READ_IN.unpack_from(buf, wire.IN_HEADER_SIZE)
            if not fh:  # a no-open session: by inode, once its content is here
                fetch = self.ops.fetch_for(nodeid)
                if fetch is not None:
                    nursery.start_soon(self._read_after, fetch, unique, nodeid, offset, size)
                    return
                fh = self.ops.inode_fh(nodeid)
            data = self.ops.read_nowait(fh, offset, size)
        except Exception as exc:
            self._reply_error(unique, errno_of(exc, "read"))
            return
        if data is None:
            nursery.start_soon(self._read_in_thread, unique, fh, offset, size)
            return
        self._reply_data(unique, data)

    def _reply_data(self, unique: int, data) -> None:
        header = _OUT(wire.OUT_HEADER_SIZE + len(data), 0, unique)
        try:
            os.writev(self.fd, [header, data])
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.ENODEV, errno.EBADF):
                log.warning("writing the reply to read %d: %s", unique, exc)

    async def _read_in_thread(self, unique: int, fh: int, offset: int, size: int) -> None:
        try:
            # abandon_on_cancel: a read stalled on a hung host filesystem must not
            # hold the unmount (the only time this is cancelled).
            data = await trio.to_thread.run_sync(self.ops.read, fh, offset, size,
                                                 limiter=THREADS, abandon_on_cancel=True)
        except Exception as exc:
            self._reply_error(unique, errno_of(exc, "read"))
            return
        self._reply_data(unique, data)

    async def _read_after(self, fetch, unique: int, nodeid: int, offset: int,
                          size: int) -> None:
        """READ of a no-open session's file whose content is still remote: fetch, then read."""
        try:
            await trio.to_thread.run_sync(fetch, limiter=FETCH_THREADS, abandon_on_cancel=True)
            fh = self.ops.inode_fh(nodeid)
        except Exception as exc:
            self._reply_error(unique, errno_of(exc, "read"))
            return
        await self._read_in_thread(unique, fh, offset, size)

    async def _open_after(self, fetch, unique: int, handler, nodeid: int, ctx: Context,
                          data: bytes) -> None:
        """OPEN of a file whose content is still remote: fetch it in a thread, then open."""
        try:
            await trio.to_thread.run_sync(fetch, limiter=FETCH_THREADS, abandon_on_cancel=True)
        except Exception as exc:
            self._reply_error(unique, errno_of(exc, "open"))
            return
        self._answer(unique, handler, nodeid, ctx, data)

    async def _fsync(self, unique: int, opcode: int, nodeid: int, data: bytes) -> None:
        """FSYNC and FSYNCDIR: they wait for the disk, so in a worker thread."""
        sync = self.ops.fsync if opcode == wire.FSYNC else self.ops.fsyncdir
        try:
            fh, flags = wire.FSYNC_IN.unpack_from(data)
            if not fh and opcode == wire.FSYNC:  # a no-open session
                fh = self.ops.inode_fh(nodeid)
            await trio.to_thread.run_sync(sync, fh, bool(flags & wire.FSYNC_FDATASYNC),
                                          limiter=THREADS, abandon_on_cancel=True)
        except Exception as exc:
            self._reply_error(unique, errno_of(exc, "fsync"))
            return
        self._write(_OUT(wire.OUT_HEADER_SIZE, 0, unique), unique)

    # -- INIT ------------------------------------------------------------------------

    def _init(self, unique: int, data: bytes) -> None:
        try:
            major, minor, max_readahead, flags, flags2 = wire.INIT_IN.unpack_from(data)
        except struct.error:
            self._reply_error(unique, errno.EINVAL)
            return
        if major != wire.KERNEL_MAJOR or minor < 31:
            log.error("the kernel speaks FUSE %d.%d; we need 7.31 or later", major, minor)
            self._reply_error(unique, errno.EPROTO)
            return
        offered = flags | (flags2 << 32 if flags & wire.INIT_EXT else 0)
        # Without OPEN nobody would truncate at open(O_TRUNC): the kernel must send SETATTR.
        atomic_trunc = 0 if self.no_open else wire.ATOMIC_O_TRUNC
        want = (wire.ASYNC_READ | atomic_trunc | wire.BIG_WRITES | wire.AUTO_INVAL_DATA
                | wire.DO_READDIRPLUS | wire.READDIRPLUS_AUTO | wire.ASYNC_DIO
                | wire.PARALLEL_DIROPS | wire.HANDLE_KILLPRIV | wire.MAX_PAGES | wire.INIT_EXT)
        if self.want_passthrough and os.geteuid() == 0 and minor >= 40:
            want |= wire.PASSTHROUGH
        chosen = want & offered
        self.passthrough = bool(chosen & wire.PASSTHROUGH)
        self.kernel_minor = min(minor, wire.KERNEL_MINOR)
        body = wire.INIT_OUT.pack(
            wire.KERNEL_MAJOR, self.kernel_minor, max_readahead, chosen & 0xFFFFFFFF,
            MAX_BACKGROUND, CONGESTION_THRESHOLD, MAX_WRITE, 1, MAX_PAGES, 0, chosen >> 32,
            1 if self.passthrough else 0)
        log.info("FUSE %d.%d; passthrough %s", major, minor, "on" if self.passthrough else "off")
        self._write(_OUT(wire.OUT_HEADER_SIZE + len(body), 0, unique) + body, unique)

    # -- passthrough -----------------------------------------------------------------

    def _register_backing(self, ino: int, opened: Opened) -> int:
        """The backing id for this open of ``ino`` (one per inode, shared by its opens),
        or 0: we serve it (the kernel's cached I/O mode).

        An id stays registered after the last release, until the kernel forgets
        the inode (``forgotten``): a reopen -- gcc opening the same headers action
        after action -- then costs no ioctl.  It is reused only while the host
        file is the same one (device and inode).

        The kernel's I/O modes decide the rest.  While an inode has passthrough
        opens, it fails (EIO) every other open of it but one passing through the
        same backing file, even a direct-I/O one; while it has opens we serve, it
        fails a passthrough open.  So an open beside passthrough ones passes
        through too, even one we would have served (an untracked node reopened
        while some sandbox is tracked: a tracked sandbox's nodes never pass
        through, so none is held here), and even when the host file was replaced
        meanwhile (it then reads the file its inode's open files read); and an
        open beside served ones is served.
        """
        if not self.passthrough:
            return 0
        held = self._backing.get(ino)
        if held is not None and held[1] > 0:
            held[1] += 1
            self._backed[opened.fh] = ino
            return held[0]
        if opened.backing_fd < 0 or ino in self._cached_opens:
            self._cached_open(opened.fh, ino)
            return 0
        st = os.fstat(opened.backing_fd)
        identity = (st.st_dev, st.st_ino)  # the page cache is the host file's own: no ctime
        if held is not None:
            if held[2] == identity:
                held[1] += 1
                self._backed[opened.fh] = ino
                return held[0]
            self._close_backing(ino)  # an idle id of a file since replaced
        try:
            backing_id = device.backing_open(self.fd, opened.backing_fd)
        except OSError as exc:
            log.info("passthrough refused (%s); serving reads ourselves", exc)
            if exc.errno in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTTY):
                self.passthrough = False
            self._cached_open(opened.fh, ino)
            return 0
        self._backing[ino] = [backing_id, 1, identity]
        self._backed[opened.fh] = ino
        return backing_id

    def _cached_open(self, fh: int, ino: int) -> None:
        self._cached[fh] = ino
        self._cached_opens[ino] += 1

    def _release_backing(self, fh: int) -> None:
        """A handle was released; with too many idle ids kept, close this one now."""
        ino = self._cached.pop(fh, None)
        if ino is not None:
            left = self._cached_opens[ino] - 1
            if left:
                self._cached_opens[ino] = left
            else:
                del self._cached_opens[ino]
            return
        ino = self._backed.pop(fh, None)
        if ino is None:
            return
        held = self._backing.get(ino)
        if held is not None:
            held[1] -= 1
            if held[1] <= 0 and len(self._backing) > MAX_KEPT_BACKING:
                self._close_backing(ino)

    def forgotten(self, ino: int) -> None:
        """The kernel dropped references to ``ino``: close its idle backing id once it is gone."""
        held = self._backing.get(ino)
        if held is None or held[1] > 0:
            return
        try:
            self.ops.inodes[ino]
        except StaleError:
            self._close_backing(ino)

    def _close_backing(self, ino: int) -> None:
        held = self._backing.pop(ino)
        try:
            device.backing_close(self.fd, held[0])
        except OSError as exc:
            log.warning("closing backing file %d of inode %d: %s", held[0], ino, exc)
