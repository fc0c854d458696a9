"""The local content store: the bytes of sandbox input files, kept once each by digest.

Bazel's Push sends a leaf's content inline or as a host path that holds it
only at that moment, so the bytes must be taken in at once and never read
from the path again.  ``ContentStore`` keeps each digest as one plain file,
``STATE/cas/ab/abcdef...``, mode 0444 (an executable bit is the serving
side's business: one digest may be executable in one directory and not in
another).  Every file is written under ``STATE/tmp`` and renamed into place
only after its bytes were hashed and matched their digest, so a file under
``cas/`` is always whole and correct; wrong bytes leave nothing behind.

``capture`` takes a host file as a reflink (``FICLONE``: a copy-on-write
snapshot, no bytes copied) where the filesystem can, else copies it, hashing
what it keeps either way.  It never hard-links: a link would follow later
writes to the source.

The store is bounded by ``budget_bytes``.  Past it, the least recently used
unpinned files go; a file pinned by a live sandbox (``pin``/``unpin`` by
sandbox id) never does, so pinned content alone may exceed the budget.
Content pushed as single-use goes as soon as its last sandbox unpins it.
Digests that were held and dropped are remembered (``was_evicted``): their
leaves were pushed from somewhere other than the default exec_root path, so
a Create that needs one again must answer MissingContent rather than read
the default path.  Content refused (bytes that did not match, a path that
could not be read) is remembered with its reason (``rejection``).

A store lives as long as its process: Bazel's record of what it pushed does
too, so files left by an earlier process are removed at start.  Thread-safe:
the index is behind one lock; reading and hashing run outside it.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import itertools
import logging
import os
import shutil
import stat
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from sandboxfs.backend.digests import describe_hash
from sandboxfs.errors import InvalidRequestError, describe_oserror

log = logging.getLogger(__name__)

DEFAULT_BUDGET_BYTES = 8 << 30
FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int); fcntl.FICLONE only from Python 3.12
# What FICLONE answers where a reflink cannot be made (the filesystem has none, two
# filesystems, ...): copy instead.  Any other error is a real failure to read.
_NO_REFLINK = frozenset((errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL,
                         errno.ENOSYS, errno.EPERM))
CHUNK = 1 << 20
FILE_MODE = 0o444


def clone_file(src_fd: int, dst_fd: int) -> bool:
    """Make ``dst_fd`` share ``src_fd``'s blocks copy-on-write; False where the filesystem cannot."""
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
    except OSError as exc:
        if exc.errno in _NO_REFLINK:
            return False
        raise
    return True


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _copy_hashing(src_fd: int, dst_fd: int) -> tuple[str, int]:
    """Copy ``src_fd`` to ``dst_fd``; the hash and size of exactly the bytes written."""
    digest, size = hashlib.sha256(), 0
    while chunk := os.read(src_fd, CHUNK):
        digest.update(chunk)
        _write_all(dst_fd, chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _hash_fd(fd: int) -> tuple[str, int]:
    """The hash and size of what ``fd`` holds, read from its start."""
    digest, size = hashlib.sha256(), 0
    while chunk := os.pread(fd, CHUNK, size):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


class _Entry:
    __slots__ = ("size", "single_use", "pins")

    def __init__(self, size: int, single_use: bool) -> None:
        self.size = size
        self.single_use = single_use
        self.pins = 0  # live sandboxes that use it


class ContentStore:
    """File contents by digest under ``state_dir``, bounded by ``budget_bytes`` (LRU, pins kept)."""

    def __init__(self, state_dir: str | os.PathLike, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        self.state_dir = Path(state_dir)
        self.budget_bytes = budget_bytes
        self._cas = self.state_dir / "cas"
        self._tmp = self.state_dir / "tmp"
        self._cas_prefix = f"{self._cas}/"
        self._tmp_prefix = f"{self._tmp}/"
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for own in (self._cas, self._tmp):
            if own.exists():
                shutil.rmtree(own)
            own.mkdir(mode=0o700)
        for prefix in range(256):
            (self._cas / f"{prefix:02x}").mkdir(mode=0o700)
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._pins: dict[str, set[str]] = {}  # sandbox id -> digests it pinned
        self._evicted: set[str] = set()
        self._rejected: dict[str, str] = {}
        self._no_reflink_devices: set[int] = set()  # source filesystems that refused FICLONE
        self._temp_names = itertools.count()
        self._bytes = 0
        self._counts = dict.fromkeys(
            ("evictions", "evicted_bytes", "single_use_dropped", "reflinks", "copies", "inline",
             "streamed"), 0)

    # -- asking -------------------------------------------------------------------------

    def __contains__(self, digest: str) -> bool:
        return digest in self._entries

    def path(self, digest: str) -> str | None:
        """Where the content of ``digest`` is, while the store holds it."""
        return self._path_of(digest) if digest in self._entries else None

    def path_for(self, digest: str) -> str:
        """Where the content of ``digest`` is kept when held (whether or not it is now)."""
        return self._path_of(digest)

    def size(self, digest: str) -> int | None:
        """The size of the content of ``digest``, or None if the store does not hold it."""
        entry = self._entries.get(digest)
        return None if entry is None else entry.size

    def was_evicted(self, digest: str) -> bool:
        """True if ``digest`` was held and dropped since (and not put again)."""
        return digest in self._evicted

    def rejection(self, digest: str) -> str | None:
        """Why content pushed for ``digest`` was refused, if it was (and not put since)."""
        return self._rejected.get(digest)

    def classify(self, digests: set[str]) -> tuple[set[str], set[str], dict[str, str]]:
        """Of ``digests``: those held, those evicted since, and those refused (with why).

        Set operations in C: a 16,000-file tree is classified without a Python step per
        digest, which is what a Create of a known tree may spend.
        """
        with self._lock:
            held = digests & self._entries.keys()
            evicted = (digests & self._evicted) - held if self._evicted else set()
            refused = ({d: self._rejected[d] for d in digests & self._rejected.keys()}
                       if self._rejected else {})
        return held, evicted, refused

    def stats(self) -> dict[str, int]:
        """Bytes and files held, pins, and counts of evictions, reflinks, copies and refusals."""
        with self._lock:
            pinned = [entry for entry in self._entries.values() if entry.pins]
            return {"bytes": self._bytes, "files": len(self._entries),
                    "budget_bytes": self.budget_bytes, "pinned_files": len(pinned),
                    "pinned_bytes": sum(entry.size for entry in pinned),
                    "sandboxes": len(self._pins), "rejected": len(self._rejected),
                    **self._counts}

    # -- taking content in ----------------------------------------------------------------

    def put_inline(self, digest: str, data: bytes, *, single_use: bool = False) -> None:
        """Keep ``data`` as the content of ``digest``; InvalidRequestError if it does not hash to it."""
        if self._already_held(digest, single_use):
            return
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise self._reject(digest, f"the {len(data)} inline bytes hash to {actual}")
        with self._new_file(digest) as (temp, fd):
            _write_all(fd, data)
        self._install(digest, temp, len(data), single_use, "inline")

    def put_stream(self, digest: str, chunks: Iterable[bytes]) -> None:
        """Keep the bytes of ``chunks`` (a download) as the content of ``digest``, hashed as they
        are written; InvalidRequestError, with nothing kept, if they do not hash to it."""
        if self._already_held(digest, False):
            return
        hasher = hashlib.sha256()
        size = 0
        with self._new_file(digest) as (temp, fd):
            for chunk in chunks:
                hasher.update(chunk)
                _write_all(fd, chunk)
                size += len(chunk)
            actual = hasher.hexdigest()
            if actual != digest:
                raise self._reject(digest, f"the {size} bytes received hash to {actual}")
        self._install(digest, temp, size, False, "streamed")

    def capture(self, digest: str, source: str | os.PathLike, *, single_use: bool = False) -> None:
        """Take in the file at ``source`` now (reflink, else copy) as the content of ``digest``.

        The source is opened following symlinks (runfiles locations are
        symlinks).  InvalidRequestError, with nothing kept, if it cannot be
        read, is not a regular file, or does not hash to ``digest``.
        """
        if self._already_held(digest, single_use):
            return
        where = os.fsdecode(source)
        try:
            src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise self._reject(digest, f"cannot open {where}: {describe_oserror(exc)}") from None
        try:
            temp, size, how = self._take_copy(digest, src, where)
        finally:
            os.close(src)
        self._install(digest, temp, size, single_use, how)

    def _take_copy(self, digest: str, src: int, where: str) -> tuple[str, int, str]:
        """A verified copy of ``src`` in tmp/: its path, its size, and "reflinks" or "copies"."""
        try:
            st = os.fstat(src)
        except OSError as exc:
            raise self._reject(digest, f"cannot stat {where}: {describe_oserror(exc)}") from None
        if not stat.S_ISREG(st.st_mode):
            raise self._reject(digest, f"{where} is not a regular file")
        with self._new_file(digest) as (temp, dst):
            try:
                cloned = st.st_dev not in self._no_reflink_devices and clone_file(src, dst)
                if cloned:  # a snapshot of the source: hash what we now hold
                    actual, size = _hash_fd(dst)
                else:
                    self._no_reflink_devices.add(st.st_dev)
                    actual, size = _copy_hashing(src, dst)
            except OSError as exc:
                raise self._reject(digest, f"cannot copy {where}: {describe_oserror(exc)}") from None
            if actual != digest:
                raise self._reject(digest, f"{where} holds {size} bytes that hash to {actual} "
                                           "(changed since Bazel hashed it?)")
        return temp, size, "reflinks" if cloned else "copies"

    def _already_held(self, digest: str, single_use: bool) -> bool:
        """Check ``digest``; if it is held, count this push as a use of it."""
        problem = describe_hash(digest)
        if problem:
            raise InvalidRequestError(f"content {digest!r}: the key is {problem}",
                                      details={"digest": digest})
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return False
            entry.single_use = entry.single_use and single_use  # one reuse push keeps it
            self._entries.move_to_end(digest)
            return True

    @contextmanager
    def _new_file(self, digest: str) -> Iterator[tuple[str, int]]:
        """A new file in tmp/ (its path and a read-write fd), removed if the block fails."""
        temp = f"{self._tmp_prefix}{digest}.{next(self._temp_names)}"  # str: a hot path
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)  # exactly 0444, whatever the umask
            yield temp, fd
        except BaseException:
            os.close(fd)
            with suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        os.close(fd)

    def _install(self, digest: str, temp: str, size: int, single_use: bool, how: str) -> None:
        with self._lock:
            self._counts[how] += 1
            if digest in self._entries:  # another thread took it in meanwhile
                os.unlink(temp)
                return
            os.rename(temp, self._path_of(digest))
            self._entries[digest] = _Entry(size, single_use)
            self._bytes += size
            self._evicted.discard(digest)
            self._rejected.pop(digest, None)
            self._evict_over_budget(keep=digest)

    def _reject(self, digest: str, why: str) -> InvalidRequestError:
        message = f"content {digest}: {why}; nothing kept"
        with self._lock:
            if digest not in self._entries:  # another push of it may have succeeded meanwhile
                self._rejected[digest] = message
        return InvalidRequestError(message, details={"digest": digest})

    def _path_of(self, digest: str) -> str:
        return f"{self._cas_prefix}{digest[:2]}/{digest}"

    # -- sandboxes ------------------------------------------------------------------------

    def pin(self, sandbox_id: str, digests: Iterable[str]) -> list[str]:
        """Keep ``digests`` while sandbox ``sandbox_id`` lives; return those not held (sorted).

        All or nothing: if any is missing, nothing is pinned, so a Create that
        answers MissingContent leaves no pins behind.
        """
        wanted = set(digests)
        with self._lock:
            missing = sorted(digest for digest in wanted if digest not in self._entries)
            if missing:
                return missing
            held = self._pins.setdefault(sandbox_id, set())
            for digest in wanted - held:
                self._entries[digest].pins += 1
                self._entries.move_to_end(digest)
            held |= wanted
            return []

    def unpin(self, sandbox_id: str) -> None:
        """Release every pin of ``sandbox_id``: its single-use content goes now, the rest by LRU."""
        with self._lock:
            for digest in self._pins.pop(sandbox_id, ()):
                entry = self._entries[digest]
                entry.pins -= 1
                if not entry.pins and entry.single_use:
                    self._drop(digest, "single_use_dropped")
            self._evict_over_budget()

    def _evict_over_budget(self, keep: str | None = None) -> None:
        """Drop unpinned files, least recently used first, until within the budget (never ``keep``:
        the file just taken in is needed by the Create that follows)."""
        if self._bytes <= self.budget_bytes:
            return
        for digest in [d for d, entry in self._entries.items() if not entry.pins and d != keep]:
            if self._bytes <= self.budget_bytes:
                break
            self._drop(digest, "evictions")
        if self._bytes > self.budget_bytes:
            log.debug("content store over budget: %d of %d bytes pinned or just added",
                      self._bytes, self.budget_bytes)

    def _drop(self, digest: str, counter: str) -> None:
        entry = self._entries.pop(digest)
        try:
            os.unlink(self._path_of(digest))  # a sandbox that still has it open keeps reading it
        except FileNotFoundError:
            pass
        self._bytes -= entry.size
        self._evicted.add(digest)
        self._counts[counter] += 1
        if counter == "evictions":
            self._counts["evicted_bytes"] += entry.size
