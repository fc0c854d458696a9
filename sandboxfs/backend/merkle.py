"""REAPI Merkle input trees: validating Directory blobs, and the shared immutable trees built from them.

Bazel describes a sandbox's inputs as the digest of a root ``Directory``
whose blobs it sent earlier in Pushes.  ``DirectoryStore`` keeps those blobs,
checked once when they arrive (``add``): the blob hashes to its key, its
names are usable path components (non-empty, no '/', not '.' or '..', no
NUL), each list is sorted and unique and no name is in two lists, and every
digest it holds is well formed.  A Push has no response, so a bad blob cannot
be answered; it is remembered as rejected, with the reason, and a Create that
needs it fails with that reason instead of asking for it again forever.

``resolve`` turns a root digest into a ``MerkleDir`` tree, or into the list of
*every* directory digest below it that the store lacks (a Create answers them
in one MissingContent, not one round trip each).  Trees are immutable and
memoised by digest: the same digest always gives the same ``MerkleDir``
object, built once, so a thousand sandboxes over one toolchain hold one
toolchain tree, and comparing two subtrees is an identity test.

``MerkleDir`` is shaped to be served later as an immutable subtree: a
name -> child dict (bytes names, as in ``sandboxfs.tree``) and counts cached
at build time.  It is content, not a kernel inode: the kernel must not see
one directory at two paths, so whoever serves it wraps it per path.  Nothing
here knows the mapping tree.  ``diff`` lists what changed between two trees,
skipping subtrees whose digests match.

Pure: no I/O.  Thread-safe: Pushes and Creates may be handled in worker threads.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import NamedTuple
from operator import itemgetter

import attrs
from google.protobuf.message import DecodeError

from sandboxfs.backend.digests import all_hashes, describe_hash, sha256_hex
from sandboxfs.backend.proto.remote_execution_pb2 import Directory
from sandboxfs.errors import InvalidRequestError

# Always known: the empty Directory needs no Push to be resolved.
EMPTY_DIRECTORY_HASH = sha256_hex(b"")


class FileLeaf(NamedTuple):
    """A regular file of a tree: its content's digest, size and exec bit (a value; a tuple,
    since a tree holds one per file and a tuple is the cheapest value Python makes)."""

    digest: str
    size: int
    is_executable: bool


@attrs.frozen
class SymlinkLeaf:
    """A symbolic link of a tree and its target text."""

    target: bytes


class MerkleDir:
    """One directory of a tree, shared by every tree that holds its digest; never changed.

    ``entries`` maps each name (UTF-8 bytes, in sorted order) to a
    ``FileLeaf``, a ``SymlinkLeaf`` or a child ``MerkleDir``; it must not be
    mutated.  The counts are computed once, from the children's: ``subdirs``
    (direct, for ``nlink``), and for the whole subtree as a sandbox shows it
    (shared subtrees counted at each path) ``files``, ``nodes`` (entries of
    every kind) and ``content_bytes`` (sum of file sizes).
    """

    __slots__ = ("digest", "blob_size", "entries", "subdirs", "files", "nodes", "content_bytes")

    def __init__(self, digest: str, blob_size: int, entries: dict[bytes, Entry]) -> None:
        self.digest = digest
        self.blob_size = blob_size
        self.entries = entries
        subdirs = files = content_bytes = 0
        nodes = len(entries)
        for entry in entries.values():
            if type(entry) is FileLeaf:
                files += 1
                content_bytes += entry.size
            elif type(entry) is MerkleDir:
                subdirs += 1
                files += entry.files
                nodes += entry.nodes
                content_bytes += entry.content_bytes
        self.subdirs = subdirs
        self.files = files
        self.nodes = nodes
        self.content_bytes = content_bytes

    @property
    def nlink(self) -> int:
        """The link count a directory has: its name, its '.', and each child's '..'."""
        return 2 + self.subdirs

    def __repr__(self) -> str:
        return f"<MerkleDir {self.digest[:12]} {len(self.entries)} entries, {self.nodes} below>"


Entry = FileLeaf | SymlinkLeaf | MerkleDir


@attrs.frozen
class Resolution:
    """What ``resolve`` found: the tree, or every directory digest still missing below the root."""

    root: MerkleDir | None
    missing: tuple[str, ...] = ()
    sizes: dict[str, int] = attrs.field(factory=dict, eq=False)  # missing digest -> its size


@attrs.frozen
class Change:
    """One difference between two trees at ``path`` (relative, '/'-separated bytes).

    ``old`` is None for an added entry, ``new`` None for a removed one.  A
    changed directory present in both trees is not a Change itself: its
    changed entries are.  A subtree added, removed or replaced by another kind
    is one Change, not one per entry below it.
    """

    path: bytes
    old: Entry | None
    new: Entry | None


def _invalid(digest: str, why: str) -> InvalidRequestError:
    return InvalidRequestError(f"directory {digest}: {why}", details={"digest": digest})


_BAD_NAMES = {"": "is empty", ".": "is '.'", "..": "is '..'"}


def _name_problem(name: str) -> str:
    if name in _BAD_NAMES:
        return _BAD_NAMES[name]
    if "/" in name:
        return "contains '/'"
    if "\0" in name:
        return "contains NUL"
    return ""


def _check_names(digest: str, kind: str, names: list[str]) -> None:
    """Each name usable, and the list sorted by UTF-8 bytes without repeats."""
    raw = [name.encode() for name in names]
    if (raw == sorted(raw) and len(set(raw)) == len(raw) and not _BAD_NAMES.keys() & set(names)
            and "/".join(names).count("/") == len(names) - 1 and "\0" not in "".join(names)):
        return  # all fine, found with C-level passes; else the loop below says what is wrong
    previous: bytes | None = None
    for name in names:
        problem = _name_problem(name)
        if problem:
            raise _invalid(digest, f"{kind} name {name!r} {problem}")
        raw = name.encode()
        if previous is not None and raw <= previous:
            if raw == previous:
                raise _invalid(digest, f"{kind} {name!r} is listed twice")
            raise _invalid(digest, f"{kind} names are not sorted: {name!r} comes after "
                                   f"{previous.decode()!r}")
        previous = raw


def _check_digest(digest: str, what: str, node_digest) -> None:
    problem = describe_hash(node_digest.hash)
    if problem:
        raise _invalid(digest, f"{what}: digest hash {node_digest.hash!r} is {problem}")
    if node_digest.size_bytes < 0:
        raise _invalid(digest, f"{what}: digest size {node_digest.size_bytes} is negative")


def parse_directory(digest: str, blob: bytes) -> Directory:
    """The Directory in ``blob``, checked against its key ``digest`` and REAPI's rules.

    Raises InvalidRequestError naming the digest, the entry and the rule broken.
    """
    problem = describe_hash(digest)
    if problem:
        raise _invalid(digest, f"the key is {problem}")
    actual = sha256_hex(blob)
    if actual != digest:
        raise _invalid(digest, f"its {len(blob)} bytes hash to {actual}")
    try:
        directory = Directory.FromString(blob)
    except DecodeError as exc:
        raise _invalid(digest, f"not a serialized Directory ({exc})") from None
    files = [node.name for node in directory.files]
    subdirs = [node.name for node in directory.directories]
    links = [node.name for node in directory.symlinks]
    for kind, names in (("file", files), ("directory", subdirs), ("symlink", links)):
        _check_names(digest, kind, names)
    if len(set(files).union(subdirs, links)) != len(files) + len(subdirs) + len(links):
        for first, second, left, right in (("file", "directory", files, subdirs),
                                           ("file", "symlink", files, links),
                                           ("directory", "symlink", subdirs, links)):
            both = sorted(set(left).intersection(right))
            if both:
                raise _invalid(digest, f"{both[0]!r} is both a {first} and a {second}")
    nodes = [*directory.files, *directory.directories]
    digests = [node.digest for node in nodes]
    if not (all_hashes([d.hash for d in digests])
            and min((d.size_bytes for d in digests), default=0) >= 0):
        for node in directory.files:  # the slow way, to say which one is wrong
            _check_digest(digest, f"file {node.name!r}", node.digest)
        for node in directory.directories:
            _check_digest(digest, f"directory {node.name!r}", node.digest)
    for node in directory.symlinks:
        if not node.target:
            raise _invalid(digest, f"symlink {node.name!r} has an empty target")
        if "\0" in node.target:
            raise _invalid(digest, f"symlink {node.name!r} has a target that contains NUL")
    return directory


class DirectoryStore:
    """Validated Directory blobs by digest, and the trees resolved from them (memoised)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._blobs: dict[str, bytes] = {EMPTY_DIRECTORY_HASH: b""}
        self._rejected: dict[str, str] = {}  # digest -> why its blob was refused
        self._built: dict[str, MerkleDir] = {}
        self._blob_bytes = 0

    def __contains__(self, digest: str) -> bool:
        return digest in self._blobs

    def add(self, digest: str, blob: bytes) -> None:
        """Keep ``blob`` under ``digest`` after checking it (``parse_directory``).

        A refused blob is remembered with its reason; valid bytes for the same
        digest, pushed later, replace the refusal.
        """
        try:
            parse_directory(digest, blob)
        except InvalidRequestError as exc:
            with self._lock:
                if digest not in self._blobs:
                    self._rejected[digest] = exc.message
            raise
        with self._lock:
            if digest not in self._blobs:
                self._blobs[digest] = bytes(blob)
                self._blob_bytes += len(blob)
            self._rejected.pop(digest, None)

    def add_blobs(self, blobs: Mapping[str, bytes]) -> list[InvalidRequestError]:
        """``add`` each of a Push's blobs on its own: one bad blob does not drop the others.

        Returns the errors of the refused ones, for the caller to log (a Push has no response).
        """
        errors = []
        for digest, blob in blobs.items():
            try:
                self.add(digest, blob)
            except InvalidRequestError as exc:
                errors.append(exc)
        return errors

    def resolve(self, root_digest: str, root_size: int) -> Resolution:
        """The tree of ``root_digest``, or every directory digest below it that no Push brought.

        Raises InvalidRequestError when the tree can never be built: a malformed
        root digest, a directory whose blob was refused (with the reason), or a
        digest whose size disagrees with its blob.
        """
        problem = describe_hash(root_digest)
        if problem:
            raise InvalidRequestError(f"input root digest {root_digest!r} is {problem}")
        with self._lock:  # held while building, so a digest is never built twice
            parsed: dict[str, Directory] = {}
            missing: dict[str, int] = {}
            self._walk_unbuilt(root_digest, root_size, parsed, missing)
            if missing:
                return Resolution(None, tuple(sorted(missing)), missing)
            return Resolution(self._build(root_digest, parsed))

    def _walk_unbuilt(self, root: str, size: int, parsed: dict[str, Directory],
                      missing: dict[str, int]) -> None:
        """Parse every unbuilt directory below ``root`` into ``parsed``; the missing ones go
        into ``missing`` with the size their parent gives them."""
        pending = [(root, size, "the input root")]
        while pending:
            digest, size, referrer = pending.pop()
            built = self._built.get(digest)
            have = built.blob_size if built is not None else len(self._blobs.get(digest, b""))
            if built is None and digest not in self._blobs:
                if digest in self._rejected:
                    raise InvalidRequestError(
                        f"{referrer} needs directory {digest}, refused when pushed: "
                        f"{self._rejected[digest]}", details={"digest": digest})
                missing[digest] = size
                continue
            if size != have:
                raise InvalidRequestError(
                    f"{referrer} gives directory {digest} a size of {size} bytes; its blob "
                    f"is {have} bytes", details={"digest": digest})
            if built is not None or digest in parsed:
                continue
            directory = parsed[digest] = Directory.FromString(self._blobs[digest])
            for node in directory.directories:
                pending.append((node.digest.hash, node.digest.size_bytes,
                                f"directory {digest} (entry {node.name!r})"))

    def _build(self, root: str, parsed: dict[str, Directory]) -> MerkleDir:
        """Build the unbuilt directories of ``parsed``, children first (no recursion: trees
        may be deeper than Python's stack)."""
        stack = [(root, False)]
        while stack:
            digest, children_done = stack.pop()
            if digest in self._built:
                continue
            directory = parsed[digest]
            if children_done:
                self._built[digest] = self._make(digest, directory)
                continue
            stack.append((digest, True))
            stack.extend((node.digest.hash, False) for node in directory.directories
                         if node.digest.hash not in self._built)
        return self._built[root]

    def _make(self, digest: str, directory: Directory) -> MerkleDir:
        built = self._built
        new = tuple.__new__  # FileLeaf's own __new__ is a Python call; this is one C call
        items: list[tuple[bytes, Entry]] = [
            (node.name.encode(), new(FileLeaf, (d.hash, d.size_bytes, node.is_executable)))
            for node in directory.files for d in (node.digest,)
        ]
        items.extend((node.name.encode(), built[node.digest.hash])
                     for node in directory.directories)
        items.extend((node.name.encode(), SymlinkLeaf(node.target.encode()))
                     for node in directory.symlinks)
        items.sort(key=itemgetter(0))  # names are unique across the lists
        return MerkleDir(digest, len(self._blobs[digest]), dict(items))

    def stats(self) -> dict[str, int]:
        """Counts for ``stats`` output: blobs held and their bytes, trees built, blobs refused."""
        with self._lock:
            return {"directories": len(self._blobs), "directory_bytes": self._blob_bytes,
                    "built": len(self._built), "rejected": len(self._rejected)}


def walk(root: MerkleDir, prefix: bytes = b"") -> Iterator[tuple[bytes, Entry]]:
    """Every entry below ``root`` with its path (``prefix`` + '/'-joined names): a directory's
    entries in name order, then those of each of its subdirectories."""
    stack: list[tuple[bytes, MerkleDir]] = [(prefix, root)]
    while stack:
        base, directory = stack.pop()
        children = []
        for name, entry in directory.entries.items():
            path = base + b"/" + name if base else name
            yield path, entry
            if type(entry) is MerkleDir:
                children.append((path, entry))
        stack.extend(reversed(children))


def file_digests(roots: Iterable[MerkleDir]) -> set[str]:
    """The content digests of every file below ``roots``, visiting each shared directory once."""
    seen: set[str] = set()
    digests: set[str] = set()
    stack = list(roots)
    while stack:
        directory = stack.pop()
        if directory.digest in seen:
            continue
        seen.add(directory.digest)
        for entry in directory.entries.values():
            if type(entry) is FileLeaf:
                digests.add(entry.digest)
            elif type(entry) is MerkleDir:
                stack.append(entry)
    return digests


def _same(old: Entry | None, new: Entry | None) -> bool:
    if type(old) is MerkleDir and type(new) is MerkleDir:
        return old.digest == new.digest
    return old == new


def _names_of(left: MerkleDir, right: MerkleDir) -> Iterator[bytes]:
    return iter(sorted(left.entries.keys() | right.entries.keys()))


def diff(old: MerkleDir, new: MerkleDir) -> Iterator[Change]:
    """The Changes that turn tree ``old`` into tree ``new``, in path order.

    Walks only directories whose digests differ, so its cost follows the
    size of the change, not of the trees.
    """
    if old.digest == new.digest:
        return
    stack = [(b"", _names_of(old, new), old, new)]
    while stack:
        base, names, left, right = stack[-1]
        for name in names:
            before, after = left.entries.get(name), right.entries.get(name)
            if _same(before, after):
                continue
            path = base + name
            if type(before) is MerkleDir and type(after) is MerkleDir:
                stack.append((path + b"/", _names_of(before, after), before, after))
                break
            yield Change(path, before, after)
        else:
            stack.pop()
