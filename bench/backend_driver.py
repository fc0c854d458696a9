"""Playing Bazel's part of the sandbox-backend protocol, for tests and benchmarks.

``InputTree`` builds a sandbox's REAPI Merkle input tree as Bazel does (names
sorted by UTF-8 bytes, deterministic serialization, SHA-256) and the Pushes
that carry it.  ``BackendClient`` runs a backend (``sandboxfs serve`` by
default) and speaks the varint-delimited stream on its stdin/stdout, matching
responses by rid so that several threads may pipeline requests as Bazel does.
It trusts nothing: an unknown rid, a bad frame or the process dying fails every
pending request with a message saying so, and every wait has a timeout, so a
broken server fails a test instead of hanging it.  Never imported by sandboxfs.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import itertools
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, NamedTuple

from sandboxfs.backend.proto import sandbox_pb2 as sb
from sandboxfs.backend.proto.remote_execution_pb2 import (
    Digest, Directory, DirectoryNode, FileNode, SymlinkNode,
)
from sandboxfs.backend.wire import DelimitedReader, encode

FileSpec = bytes | str | os.PathLike | tuple[bytes | str | os.PathLike, bool]  # [+ exec bit]
DEFAULT_TIMEOUT = 60.0  # seconds to wait for one response
DEFAULT_MAX_ATTEMPTS = 8  # Creates per create_pushing (one per round of missing digests)


class BackendError(Exception):
    """The backend broke the protocol, died, or did not answer in time."""


class FileEntry(NamedTuple):
    """A file of a tree: its content digest hash, size and exec bit."""

    hash: str
    size: int
    executable: bool


class HashCache:
    """SHA-256 of host files by path, reused while the file's stat is unchanged: benchmarks
    build many trees over one toolchain, and a file rewritten in place is read again."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[tuple[int, ...], str, int]] = {}

    def digest(self, path: str) -> tuple[str, int]:
        """(hash, size) of the regular file at ``path`` (symlinks followed)."""
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path}: not a regular file")
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        known = self._known.get(path)
        if known is not None and known[0] == key:
            return known[1], known[2]
        with open(path, "rb") as f:
            data = f.read()
        result = hashlib.sha256(data).hexdigest(), len(data)
        self._known[path] = (key, *result)
        return result


_SHARED_CACHE = HashCache()


def _place(children: dict[str, dict[str, object]], path: str, node: object) -> None:
    """Put ``node`` at in-tree ``path``, making its parents; refuse what a Directory cannot hold."""
    parent, slash, name = path.rpartition("/")
    if name in ("", ".", "..") or "\0" in name or (slash and not parent):
        raise ValueError(f"{path!r}: not a relative path of plain components")
    if parent not in children:
        _place(children, parent, "dir")
    if name in children[parent]:
        raise ValueError(f"{path!r} is given twice (or as both a directory and a leaf)")
    children[parent][name] = node
    if node == "dir":
        children[path] = {}


class InputTree:
    """The Merkle tree of a sandbox's inputs: its Directory blobs, root digest and leaf sources.

    ``files`` maps in-tree paths ("pkg/a.h") to bytes, a host path to read, or
    ``(either, executable)``; ``symlinks`` maps paths to targets; ``empty_dirs``
    adds directories that hold nothing.  All work is done here, once, so that
    timing a backend does not time the client.
    """

    def __init__(self, files: Mapping[str, FileSpec], symlinks: Mapping[str, str] | None = None,
                 empty_dirs: Iterable[str] = (), hash_cache: HashCache | None = None) -> None:
        cache = hash_cache or _SHARED_CACHE
        self.files: dict[str, FileEntry] = {}
        self.symlinks: dict[str, str] = dict(symlinks or {})
        self.file_sources: dict[str, bytes | str] = {}  # content hash -> bytes or host path
        self.sizes: dict[str, int] = {}  # content hash -> size
        children: dict[str, dict[str, object]] = {"": {}}  # dir path -> name -> node
        for path, spec in files.items():
            source, executable = spec if isinstance(spec, tuple) else (spec, False)
            if isinstance(source, bytes):
                digest, size = hashlib.sha256(source).hexdigest(), len(source)
            else:
                source = os.fspath(source)
                digest, size = cache.digest(source)
            self.file_sources.setdefault(digest, source)
            self.sizes[digest] = size
            entry = self.files[path] = FileEntry(digest, size, bool(executable))
            _place(children, path, entry)
        for path, target in self.symlinks.items():
            if not target or "\0" in target:
                raise ValueError(f"symlink {path!r}: bad target {target!r}")
            _place(children, path, ("link", target))
        for path in empty_dirs:
            if path not in children:
                _place(children, path, "dir")
        self._build(children)

    def _build(self, children: dict[str, dict[str, object]]) -> None:
        """Serialize every directory, deepest first, so each parent knows its children's digests."""
        self.blobs: dict[str, bytes] = {}
        self.directories: dict[str, Directory] = {}
        self.dir_digests: dict[str, Digest] = {}
        for path in sorted(children, key=lambda p: -p.count("/") if p else 1):
            files, dirs, links = [], [], []
            for name in sorted(children[path], key=str.encode):
                node = children[path][name]
                if type(node) is FileEntry:
                    files.append(FileNode(name=name, digest=Digest(hash=node.hash,
                                          size_bytes=node.size), is_executable=node.executable))
                elif node == "dir":
                    child = self.dir_digests[f"{path}/{name}" if path else name]
                    dirs.append(DirectoryNode(name=name, digest=child))
                else:
                    links.append(SymlinkNode(name=name, target=node[1]))
            message = Directory(files=files, directories=dirs, symlinks=links)
            blob = message.SerializeToString(deterministic=True)
            digest = hashlib.sha256(blob).hexdigest()
            self.blobs[digest] = blob
            self.directories[digest] = message
            self.dir_digests[path] = Digest(hash=digest, size_bytes=len(blob))
        self.root_digest: Digest = self.dir_digests[""]

    @classmethod
    def from_directory(cls, host_dir: str | os.PathLike, prefix: str = "",
                       hash_cache: HashCache | None = None) -> InputTree:
        """The tree of everything below ``host_dir``, placed at ``prefix`` in the tree.

        Regular files are leaves read by host path, executable if the owner may
        execute them; symlinks stay symlinks; empty directories stay.  Other
        kinds are refused: a Directory cannot describe them.
        """
        files: dict[str, FileSpec] = {}
        symlinks: dict[str, str] = {}
        empty = [prefix] if prefix else []
        pending = [(os.fspath(host_dir), prefix)]
        while pending:
            host, tree = pending.pop()
            with os.scandir(host) as entries:
                for entry in entries:
                    path = f"{tree}/{entry.name}" if tree else entry.name
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISLNK(st.st_mode):
                        symlinks[path] = os.readlink(entry.path)
                    elif stat.S_ISDIR(st.st_mode):
                        empty.append(path)
                        pending.append((entry.path, path))
                    elif stat.S_ISREG(st.st_mode):
                        files[path] = (entry.path, bool(st.st_mode & stat.S_IXUSR))
                    else:
                        raise ValueError(f"{entry.path}: neither a file, a directory nor a link")
        return cls(files, symlinks, empty, hash_cache)

    def push_for(self, hashes: Iterable[str], *, inline_limit: int = 0,
                 retention: int = sb.RETENTION_REUSE) -> sb.Push:
        """A Push carrying exactly ``hashes``: directories as blobs, files as Content.

        Bytes given in the spec go inline.  Host files go by ``location``, as
        Bazel sends files it has on disk, unless they are at most
        ``inline_limit`` bytes (default 0: never), which are read and sent inline.
        Raises KeyError for a digest that is not in this tree.
        """
        push = sb.Push()
        for digest in hashes:
            blob, source = self.blobs.get(digest), self.file_sources.get(digest)
            if blob is None and source is None:
                raise KeyError(f"digest {digest} is neither a directory nor a file of this tree")
            if blob is not None:  # both is possible: the empty Directory and the empty file
                push.blobs[digest] = blob
            if isinstance(source, str) and self.sizes[digest] <= inline_limit:
                with open(source, "rb") as f:
                    source = f.read()
            if source is not None:
                kind = "inline" if isinstance(source, bytes) else "location"
                push.content[digest].CopyFrom(sb.Content(**{kind: source}, retention=retention))
        return push

    def push_all(self, **options) -> sb.Push:
        """A Push of every directory blob and every file content of the tree."""
        return self.push_for(itertools.chain(self.blobs, self.file_sources), **options)


def manifest(tree: InputTree, exec_root: str, outputs: Mapping[str, str],
             writable_dirs: Mapping[str, str] | None = None,
             mnemonic: str = "Genrule") -> sb.Manifest:
    """A Manifest over ``tree``; ``outputs`` maps sandbox paths to "file" or "dir"."""
    result = sb.Manifest(mnemonic=mnemonic, exec_root=exec_root, hash_function="SHA-256",
                         writable_dirs=dict(writable_dirs or {}))
    result.input_root_digest.CopyFrom(tree.root_digest)
    for path, kind in outputs.items():
        if kind not in ("file", "dir"):
            raise ValueError(f"output {path!r}: type {kind!r} is not 'file' or 'dir'")
        result.outputs[path].type = kind
    return result


class BackendClient:
    """A backend process and the request/response stream on its stdin/stdout.

    ``argv`` replaces the default command, ``sandboxfs serve --workspace ws
    [--state-dir dir]``; ``extra_args`` are appended to either.  ``stderr`` is
    None (pass it through), a path to write it to, or a file object or fd.
    Every method may be called from several threads at once.
    """

    def __init__(self, workspace: str | os.PathLike, state_dir: str | os.PathLike | None = None,
                 *, argv: Sequence[str] | None = None, extra_args: Sequence[str] = (),
                 stderr: str | os.PathLike | int | IO | None = None,
                 env: Mapping[str, str] | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        if argv is None:
            argv = [sys.executable, "-m", "sandboxfs", "serve", "--workspace", os.fspath(workspace)]
            if state_dir is not None:
                argv += ["--state-dir", os.fspath(state_dir)]
        self.argv = [*argv, *extra_args]
        self.timeout = timeout
        self.stderr_path = os.fspath(stderr) if isinstance(stderr, (str, os.PathLike)) else None
        self._stderr_file = open(self.stderr_path, "wb") if self.stderr_path else None
        self._lock = threading.Lock()  # guards _pending, _broken, the rid counter and counts
        self._send_lock = threading.Lock()  # one frame at a time on stdin
        self._pending: dict[int, tuple[concurrent.futures.Future, str]] = {}
        self._broken: str | None = None  # why the stream is unusable, once it is
        self._closing = False
        self._rids = itertools.count(1)
        self.counts: collections.Counter[str] = collections.Counter()  # requests sent, by op
        self._proc = subprocess.Popen(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
            stderr=self._stderr_file if self._stderr_file else stderr,
            env=dict(env) if env is not None else None)
        self.pid = self._proc.pid
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()

    def _read_loop(self) -> None:
        reader, fd, problem = DelimitedReader(), self._proc.stdout.fileno(), None
        try:
            while chunk := os.read(fd, 1 << 20):
                if problem is not None:
                    continue  # drain, so a backend writing more does not block on a full pipe
                try:
                    for body in reader.feed(chunk):
                        self._deliver(body)
                except Exception as exc:  # noqa: BLE001 - any of these breaks the stream
                    problem = f"{type(exc).__name__}: {exc}"
                    self._fail(f"backend {self.pid} broke the protocol ({problem})")
        except OSError as exc:
            problem = problem or f"reading its stdout failed: {exc}"
        if problem is None:
            try:
                reader.finish()
            except Exception as exc:  # noqa: BLE001
                problem = f"its stdout ended inside a frame ({exc})"
        try:
            status = f"exited with status {self._proc.wait(timeout=5)}"
        except subprocess.TimeoutExpired:
            status = "closed its stdout but is still running"
        if self._closing:
            status += " after the client closed its stdin"
        self._fail(f"backend {self.pid} {status}" + (f"; {problem}" if problem else ""))

    def _deliver(self, body: bytes) -> None:
        response = sb.Response.FromString(body)
        with self._lock:
            waiting = self._pending.pop(response.rid, None)
        if waiting is None:
            raise BackendError(f"response with rid {response.rid}, which no pending request has "
                               f"({response.WhichOneof('result')})")
        if not waiting[0].done():
            waiting[0].set_result(response)

    def _fail(self, reason: str) -> None:
        """Fail every pending request, and every later one, with ``reason``."""
        with self._lock:
            if self._broken is None:
                self._broken = reason + self._stderr_tail()
            pending, self._pending = self._pending, {}
        for future, what in pending.values():
            if not future.done():
                future.set_exception(BackendError(f"{what}: {self._broken}"))

    def _stderr_tail(self, limit: int = 2000) -> str:
        try:
            with open(self.stderr_path or "", "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - limit))
                tail = f.read().decode(errors="replace").strip()
        except OSError:
            return ""
        return f"\n--- end of its stderr ({self.stderr_path}) ---\n{tail}" if tail else ""

    def send_raw(self, data: bytes) -> None:
        """Write bytes to the backend's stdin as they are (for tests of malformed streams)."""
        view = memoryview(data)
        with self._send_lock:
            try:
                while view:
                    view = view[os.write(self._proc.stdin.fileno(), view):]
            except (OSError, ValueError) as exc:
                raise BackendError(f"cannot write to backend {self.pid}: {exc}"
                                   + (f" ({self._broken})" if self._broken else "")) from None

    def submit(self, request: sb.Request) -> concurrent.futures.Future:
        """Send ``request`` (given a rid if it has none); the Future gets its Response, or
        None at once for a Push, which has no response."""
        op = request.WhichOneof("op") or "no-op"
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if not request.rid:
                request.rid = next(self._rids)
            elif request.rid in self._pending:
                raise ValueError(f"rid {request.rid} is already waiting for its response")
            what = f"rid {request.rid} ({op} {request.sandbox_id!r})"
            self.counts[op] += 1
            if self._broken is not None:
                future.set_exception(BackendError(f"{what}: {self._broken}"))
                return future
            if op == "push":
                future.set_result(None)
            else:
                self._pending[request.rid] = (future, what)
        try:
            self.send_raw(encode(request.SerializeToString()))
        except BackendError:
            with self._lock:
                self._pending.pop(request.rid, None)
            raise
        return future

    def _call(self, request: sb.Request, arm: str):
        future = self.submit(request)
        try:
            response = future.result(timeout=self.timeout)
        except concurrent.futures.TimeoutError:
            raise BackendError(f"no response to rid {request.rid} ({arm} "
                               f"{request.sandbox_id!r}) within {self.timeout} s") from None
        if response.WhichOneof("result") != arm:
            raise BackendError(f"rid {request.rid} was a {arm} but its response holds "
                               f"{response.WhichOneof('result')!r}")
        return getattr(response, arm)

    def negotiate(self, options: Iterable[str] = (),
                  versions: Iterable[int] = (sb.VERSION_1,)) -> sb.Negotiate.Result:
        """The first request: the backend's options and the versions we speak."""
        request = sb.Request(negotiate=sb.Negotiate(options=list(options), versions=list(versions)))
        return self._call(request, "negotiate")

    def push(self, blobs: Mapping[str, bytes] | None = None,
             content: Mapping[str, sb.Content] | None = None) -> None:
        """Send Directory blobs and leaf content; the backend answers nothing."""
        self.send_push(sb.Push(blobs=dict(blobs or {}), content=dict(content or {})))

    def send_push(self, push: sb.Push) -> None:
        """Send a Push message built elsewhere (e.g. ``InputTree.push_for``)."""
        self.submit(sb.Request(push=push)).result(timeout=0)  # raises if the stream broke

    def create(self, sandbox_id: str, manifest: sb.Manifest) -> sb.Create.Result:
        """One Create, answered with ok, missing_content or error."""
        return self._call(sb.Request(sandbox_id=sandbox_id, create=sb.Create(manifest=manifest)),
                          "create")

    def create_pushing(self, sandbox_id: str, tree: InputTree, manifest: sb.Manifest, *,
                       max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                       **push_options) -> sb.Create.Result:
        """Create; after each missing_content push exactly the digests asked for (with
        ``push_options`` for ``InputTree.push_for``) and retry, as Bazel does.  Returns the
        ok or error Result; raises BackendError if content is still missing after
        ``max_attempts`` Creates, or the backend asks for a digest not in ``tree``."""
        wanted: list[str] = []
        for _ in range(max_attempts):
            result = self.create(sandbox_id, manifest)
            if result.WhichOneof("outcome") != "missing_content":
                return result
            wanted = list(result.missing_content.digest_hashes)
            try:
                self.send_push(tree.push_for(wanted, **push_options))
            except KeyError as exc:
                raise BackendError(f"create {sandbox_id!r}: {exc.args[0]}") from None
        raise BackendError(f"create {sandbox_id!r} still misses {len(wanted)} digest(s) after "
                           f"{max_attempts} attempts, e.g. {wanted[:3]}")

    def destroy(self, sandbox_id: str) -> sb.Destroy.Result:
        """Remove a sandbox."""
        return self._call(sb.Request(sandbox_id=sandbox_id, destroy=sb.Destroy()), "destroy")

    def collect(self, sandbox_id: str, exec_root: str) -> sb.Collect.Result:
        """Move a sandbox's outputs to their places under ``exec_root``."""
        return self._call(sb.Request(sandbox_id=sandbox_id,
                                     collect=sb.Collect(exec_root=exec_root)), "collect")

    def close(self, timeout: float = 10.0) -> int:
        """Close the backend's stdin (its signal to exit) and return its exit status.

        A backend still running after ``timeout`` seconds is killed (by its PID);
        the status is then negative, the signal's number.
        """
        self._closing = True
        locked = self._send_lock.acquire(timeout=timeout)
        if not locked:  # a writer is stuck on a full pipe: the backend reads no more
            self._proc.kill()
            locked = self._send_lock.acquire(timeout=timeout)  # the writer fails with EPIPE
        if locked:
            self._proc.stdin.close()
            self._send_lock.release()
        try:
            status = self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            status = self._proc.wait()
        self._reader.join(timeout)  # a grandchild holding stdout open keeps it reading
        if not self._reader.is_alive():
            self._proc.stdout.close()
        self._fail(f"the client closed backend {self.pid} (status {status})")
        if self._stderr_file is not None:
            self._stderr_file.close()
        return status

    def __enter__(self) -> BackendClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
