"""Input trees and files from the engine's CAS, brought in only when needed.

* Directories: ``fetch_tree`` asks the ``DirectoryStore`` what the input
  root lacks and reads just those directory blobs, one batch per level, so
  a subtree seen in an earlier action (a toolchain) costs nothing.
* Files: a sandbox shows each file as a ``tree.content.CasFile`` whose
  bytes come into the local ``ContentStore`` on its first open
  (``CasFetcher.fetch``, run by the transport in a thread).  Small blobs
  come in ``BatchReadBlobs`` batches, big ones through ByteStream straight
  into the store; each is hashed before it is kept, so wrong bytes are
  never served.  Two opens of one digest fetch it once.
* Read-ahead: when the files of a directory are opened in order (each miss
  the first missing file after the last one fetched there), a miss brings
  along the missing files after it (``fetch``), more each time: 3, 15, 63,
  then 255.  A file opened out of order comes alone and starts over, so an
  action reading a few files pays a round trip for each and fetches nothing
  more, and one reading whole directories pays a handful per directory
  instead of one per file.
* Prefetch: ``fetch_many`` takes a whole set in parallel batches.  The
  worker uses it for the files an action with the same Command looked up
  when it ran before (``ReadHistory``), so a repeated kind of action pays
  for a few batches instead of a round trip per file.  It runs while the
  command runs, in the order the files were first looked up, with a small
  first batch: an open of a file still on its way waits for its batch
  instead of asking again.

A blob that cannot be had (missing from the CAS, wrong bytes, the engine
failing) fails the open with EIO and is recorded in ``failures`` with the
reason, so the lease reports which input was wrong instead of only the
command's own complaint.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from sandboxfs.backend.merkle import DirectoryStore, FileLeaf, MerkleDir, SymlinkLeaf
from sandboxfs.backend.store import ContentStore
from sandboxfs.errors import InvalidRequestError, SandboxfsError
from sandboxfs.tree.content import CasFile, ContentDir, VirtualSymlink
from sandboxfs.tree.nodes import Node
from sandboxfs.worker.engine import (
    BATCH_BLOB_MAX, BATCH_BYTES, BATCH_COUNT, Engine, EngineError, digest_of,
)

log = logging.getLogger(__name__)

EMPTY_HASH = hashlib.sha256(b"").hexdigest()
PREFETCH_THREADS = 4
FIRST_BATCH = 64  # blobs in an ordered prefetch's first batch: the command's first opens wait for it
READAHEAD_MAX = 255  # siblings fetched along with a miss, at most
READAHEAD_FIRST = 3  # siblings fetched along with the first miss that follows another in order
READAHEAD_GROWTH = 4  # then each miss in order brings 4x as many
MAX_DIRECTORIES_TRACKED = 100_000  # directories whose read-ahead is tracked, before starting over
NOT_FOUND = 5  # google.rpc.Code


class Failure(NamedTuple):
    """Why a blob could not be had, and when (``time.monotonic``)."""

    at: float
    kind: str  # "missing" | "corrupt" | "engine"
    why: str


class InputError(SandboxfsError):
    """An input (tree or file) the engine could not give; ``kind`` as in ``Failure``."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class CasFetcher:
    """Fetches file content from ``engine`` into ``store`` (thread-safe)."""

    def __init__(self, engine: Engine, store: ContentStore) -> None:
        self.engine = engine
        self.store = store
        self._lock = threading.Lock()
        self._inflight: dict[str, threading.Event] = {}
        self.failures: dict[str, Failure] = {}
        self.counts: collections.Counter[str] = collections.Counter()
        self._place: dict[str, tuple[MerkleDir, bytes]] = {}  # digest -> where last looked up
        # directory digest -> (name of the last file fetched there, read-ahead last time)
        self._ahead: dict[str, tuple[bytes, int]] = {}

    def held_path(self, digest: str) -> str | None:
        return self.store.path(digest)

    def note_place(self, digest: str, directory: MerkleDir, name: bytes) -> None:
        """A sandbox looked ``digest`` up as ``name`` in ``directory`` (for read-ahead)."""
        self._place[digest] = (directory, name)

    def fetch(self, digest: str, size: int) -> None:
        """One file, for an open (blocking), with its read-ahead; OSError(EIO) naming the
        blob if it cannot be had."""
        self.counts["on_open"] += 1
        wanted = {digest: size}
        wanted.update(self._readahead(digest))
        self.fetch_many(wanted, threads=1)  # one batch: the open waits for all of it
        if self.store.path(digest) is None:
            failure = self.failures.get(digest)
            why = failure.why if failure else "not fetched"
            raise OSError(errno.EIO, f"input {digest}/{size}: {why}")

    def fetch_many(self, wanted: dict[str, int], threads: int = PREFETCH_THREADS, *,
                   ordered: bool = False, stop: threading.Event | None = None) -> None:
        """Bring every digest of ``wanted`` (hash -> size) into the store; failures are
        recorded, not raised.  ``ordered``: batches follow ``wanted``'s order (the order
        the files will be opened in), the first one small.  Once ``stop`` is set, batches
        not started yet are dropped (an open of one of their blobs then fetches it)."""
        mine: dict[str, int] = {}
        theirs: list[threading.Event] = []
        with self._lock:
            for digest, size in wanted.items():
                if self.store.path(digest) is not None:
                    continue
                event = self._inflight.get(digest)
                if event is not None:
                    theirs.append(event)
                else:
                    self._inflight[digest] = threading.Event()
                    mine[digest] = size
        try:
            jobs = _plan(mine, ordered=ordered)

            def run(job: list[tuple[str, int]]) -> None:
                if stop is None or not stop.is_set():
                    self._run_job(job)
            if threads > 1 and len(jobs) > 1:
                with ThreadPoolExecutor(min(threads, len(jobs))) as pool:
                    list(pool.map(run, jobs))
            else:
                for job in jobs:
                    run(job)
        finally:
            with self._lock:
                for digest in mine:
                    self._inflight.pop(digest).set()
        for event in theirs:
            event.wait()

    def _readahead(self, digest: str) -> dict[str, int]:
        """The missing files to fetch with a miss of ``digest``: those after its name in
        its directory when the miss follows the last one there in order, more each time;
        none in flight (an open must not wait for them)."""
        place = self._place.get(digest)
        if place is None:
            return {}
        directory, name = place
        entries = directory.entries
        with self._lock:
            if len(self._ahead) >= MAX_DIRECTORIES_TRACKED:
                self._ahead.clear()
            last = self._ahead.get(directory.digest)
            budget = 0
            if last is not None and self._follows(entries, last[0], name):
                budget = min(READAHEAD_MAX, last[1] * READAHEAD_GROWTH + READAHEAD_FIRST)
            found: dict[str, int] = {}
            total = 0
            end = name
            if budget:
                after = False
                for entry_name, leaf in entries.items():  # sorted by name
                    if not after:
                        after = entry_name == name
                        continue
                    if (type(leaf) is not FileLeaf or not 0 < leaf.size <= BATCH_BLOB_MAX
                            or leaf.digest in found or leaf.digest in self._inflight
                            or leaf.digest in self.store):
                        continue
                    found[leaf.digest] = leaf.size
                    total += leaf.size
                    end = entry_name
                    if len(found) >= budget or total >= BATCH_BYTES:
                        break
            self._ahead[directory.digest] = (end, budget)
        self.counts["readahead"] += len(found)
        return found

    def _follows(self, entries: dict, last: bytes, name: bytes) -> bool:
        """Whether ``name`` comes after ``last`` with only held files (or no files) between."""
        if name <= last:
            return False
        for entry_name, leaf in entries.items():
            if entry_name <= last:
                continue
            if entry_name == name:
                return True
            if type(leaf) is FileLeaf and leaf.digest not in self.store:
                return False
        return False

    def _run_job(self, job: list[tuple[str, int]]) -> None:
        if len(job) == 1 and job[0][1] > BATCH_BLOB_MAX:
            digest, size = job[0]
            try:
                self.store.put_stream(digest, self.engine.read_stream(digest_of(digest, size)))
                self._fetched(size)
            except InvalidRequestError as exc:
                self._failed(digest, size, "corrupt", exc.message)
            except EngineError as exc:
                self._failed(digest, size, "missing" if exc.code.value[0] == NOT_FOUND
                             else "engine", str(exc))
            return
        try:
            replies = list(self.engine.read_batch([digest_of(d, s) for d, s in job]))
        except EngineError as exc:
            for digest, size in job:
                self._failed(digest, size, "engine", str(exc))
            return
        self.counts["batches"] += 1
        answered = set()
        for digest, code, message, data in replies:
            answered.add(digest.hash)
            if code:
                kind = "missing" if code == NOT_FOUND else "engine"
                self._failed(digest.hash, digest.size_bytes, kind,
                             f"the CAS answered status {code}: {message or 'no message'}")
                continue
            try:
                if len(data) != digest.size_bytes:
                    raise InvalidRequestError(f"the CAS sent {len(data)} bytes for a "
                                              f"{digest.size_bytes}-byte blob")
                self.store.put_inline(digest.hash, data)
                self._fetched(len(data))
            except InvalidRequestError as exc:
                self._failed(digest.hash, digest.size_bytes, "corrupt", exc.message)
        for digest, size in job:
            if digest not in answered and digest != EMPTY_HASH:
                self._failed(digest, size, "missing", "the CAS did not answer for it")

    def _fetched(self, size: int) -> None:
        with self._lock:
            self.counts["files"] += 1
            self.counts["bytes"] += size

    def _failed(self, digest: str, size: int, kind: str, why: str) -> None:
        log.error("input blob %s/%d: %s", digest, size, why)
        with self._lock:
            self.counts["failed"] += 1
            self.failures[digest] = Failure(time.monotonic(), kind, why)

    def failures_since(self, since: float, digests: Iterable[str]) -> dict[str, Failure]:
        """The failures recorded after ``since`` for any of ``digests``."""
        with self._lock:
            recent = {d: f for d, f in self.failures.items() if f.at >= since}
        return {d: recent[d] for d in recent.keys() & set(digests)}


def _plan(wanted: dict[str, int], *, ordered: bool = False) -> list[list[tuple[str, int]]]:
    """Batches of small blobs (by total bytes and count), and one job per big blob.  The
    empty blob needs no engine: it is put at once.  By size (fewest batches), or
    ``ordered``: in ``wanted``'s order, the first batch at most ``FIRST_BATCH`` blobs."""
    jobs: list[list[tuple[str, int]]] = []
    batch: list[tuple[str, int]] = []
    total = 0
    limit = FIRST_BATCH if ordered else BATCH_COUNT
    items = wanted.items() if ordered else sorted(wanted.items(), key=lambda item: item[1])
    for digest, size in items:
        if size == 0:
            continue
        if size > BATCH_BLOB_MAX:
            jobs.append([(digest, size)])
            continue
        if batch and (total + size > BATCH_BYTES or len(batch) >= limit):
            limit = BATCH_COUNT
            jobs.append(batch)
            batch, total = [], 0
        batch.append((digest, size))
        total += size
    if batch:
        jobs.append(batch)
    return jobs


def put_empty(store: ContentStore) -> None:
    """The empty blob, which engines need not store."""
    store.put_inline(EMPTY_HASH, b"")


def fetch_tree(engine: Engine, directories: DirectoryStore, root: str, size: int) -> MerkleDir:
    """The input tree of ``root``, reading only the directory blobs not held yet (blocking).

    InputError names a directory the CAS lacks or sent wrong; the
    DirectoryStore's own checks (names, sizes) raise InvalidRequestError.
    """
    while True:
        resolution = directories.resolve(root, size)
        if resolution.root is not None:
            return resolution.root
        for job in _plan(resolution.sizes):
            replies = engine.read_batch([digest_of(d, s) for d, s in job])
            for digest, code, message, data in replies:
                if code:
                    raise InputError(f"input directory {digest.hash}/{digest.size_bytes}: the "
                                     f"CAS answered status {code}: {message or 'no message'}",
                                     "missing" if code == NOT_FOUND else "engine")
                try:
                    directories.add(digest.hash, data)
                except InvalidRequestError as exc:
                    raise InputError(f"input directory {digest.hash}: {exc.message}",
                                     "corrupt") from None


class CasLeafSource:
    """A worker slot's leaves: ``CasFile`` nodes over the store, fetched by ``fetcher``.

    ``looked_up`` collects the paths of the files the current sandbox looked
    up for the first time in this slot (``ReadHistory``'s record).
    """

    __slots__ = ("store", "fetcher", "exec_root", "files", "missing", "looked_up")

    def __init__(self, store: ContentStore, fetcher: CasFetcher, exec_root: bytes,
                 files) -> None:
        self.store = store
        self.fetcher = fetcher
        self.exec_root = exec_root
        self.files = files  # (digest, executable) -> CasFile, shared by every slot
        self.missing = 0
        self.looked_up: list[bytes] = []

    def node_for(self, directory: ContentDir, name: bytes, leaf) -> Node | None:
        kind = type(leaf)
        if kind is MerkleDir:
            return ContentDir(leaf, directory.child_path(name), self)
        if kind is SymlinkLeaf:
            return VirtualSymlink(leaf.target)
        self.looked_up.append(directory.child_path(name))
        self.fetcher.note_place(leaf.digest, directory.listing, name)
        key = (leaf.digest, leaf.is_executable)
        node = self.files.get(key)
        if node is None:
            node = self.files[key] = CasFile(os.fsencode(self.store.path_for(leaf.digest)),
                                             leaf.digest, leaf.size, leaf.is_executable,
                                             self.fetcher)
        return node


class ReadHistory:
    """The files each kind of action (its Command digest) looked up when it ran before.

    A run's record is added to the earlier ones' (in first-lookup order): a
    rerun in a reused slot looks up only what changed, since the kernel
    still holds the other names, and must not make the history forget them.
    """

    def __init__(self, max_commands: int = 4096, max_paths: int = 200_000) -> None:
        self._paths: collections.OrderedDict[str, list[bytes]] = collections.OrderedDict()
        self.max_commands = max_commands
        self.max_paths = max_paths

    def record(self, command: str, paths: list[bytes]) -> None:
        known = self._paths.get(command)
        if known:
            merged = dict.fromkeys(known)
            merged.update(dict.fromkeys(paths))
            paths = list(merged)
        self._paths[command] = paths[:self.max_paths]
        self._paths.move_to_end(command)
        while len(self._paths) > self.max_commands:
            self._paths.popitem(last=False)

    def paths(self, command: str) -> list[bytes]:
        """The recorded paths of ``command``, in first-lookup order."""
        return list(self._paths.get(command, ()))

    def wanted(self, command: str, root: MerkleDir, store: ContentStore) -> dict[str, int]:
        """Digest -> size of the files at the recorded paths of ``command`` in ``root`` that
        the store lacks."""
        wanted: dict[str, int] = {}
        for path in self._paths.get(command, ()):
            leaf = _leaf_at(root, path)
            if leaf is not None and leaf.digest not in store:
                wanted[leaf.digest] = leaf.size
        return wanted


def _leaf_at(root: MerkleDir, path: bytes) -> FileLeaf | None:
    entry = root
    for part in path.split(b"/"):
        if type(entry) is not MerkleDir:
            return None
        entry = entry.entries.get(part)
        if entry is None:
            return None
    return entry if type(entry) is FileLeaf else None
