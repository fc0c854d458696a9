"""An action's outputs as REAPI describes them: files, directories as Trees, symlinks.

The outputs were written to the sandbox's scratch directories (outside the
mount), so they are read straight from there: ``collect_outputs`` lstat()s
each declared path, hashes files, turns a directory into a ``Tree`` (its
root ``Directory`` and every directory below it, each listing sorted by
name, encoded deterministically so equal trees get equal digests), and
records a symlink's target without following it.  A declared output the
action did not make is left out, as REAPI asks.  Paths in the result are
relative to the Command's working directory, as declared.
"""

from __future__ import annotations

import hashlib
import os
import stat

from sandboxfs.backend.proto import remote_execution_pb2 as re
from sandboxfs.worker.engine import digest_of

Blobs = dict  # hash -> (size, bytes, or a str path to read): what the engine must get


def _hash_file(path: bytes) -> tuple[re.Digest, bool]:
    hasher = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            hasher.update(chunk)
            size += len(chunk)
        executable = bool(os.fstat(f.fileno()).st_mode & 0o111)
    return digest_of(hasher.hexdigest(), size), executable


def _blob(data: bytes, blobs: Blobs) -> re.Digest:
    digest = digest_of(hashlib.sha256(data).hexdigest(), len(data))
    blobs[digest.hash] = (len(data), data)
    return digest


def _directory(path: bytes, blobs: Blobs, children: dict[str, re.Directory]) -> re.Directory:
    """The Directory of host directory ``path``; every directory below goes into ``children``
    (each once, by digest) and every file into ``blobs``."""
    directory = re.Directory()
    with os.scandir(path) as listing:
        entries = sorted(listing, key=lambda entry: entry.name)
    for entry in entries:
        name = os.fsdecode(entry.name)
        mode = entry.stat(follow_symlinks=False).st_mode
        if stat.S_ISLNK(mode):
            directory.symlinks.add(name=name, target=os.fsdecode(os.readlink(entry.path)))
        elif stat.S_ISDIR(mode):
            child = _directory(entry.path, blobs, children)
            data = child.SerializeToString(deterministic=True)
            digest = _blob(data, blobs)
            children.setdefault(digest.hash, child)
            directory.directories.add(name=name, digest=digest)
        elif stat.S_ISREG(mode):
            digest, executable = _hash_file(entry.path)
            blobs[digest.hash] = (digest.size_bytes, os.fsdecode(entry.path))
            directory.files.add(name=name, digest=digest, is_executable=executable)
    return directory


def collect_outputs(result: re.ActionResult, outputs, command: re.Command, blobs: Blobs) -> None:
    """Describe the outputs in ``result``; the blobs they need go into ``blobs``.

    ``outputs`` is the slot's list of (Output, host path), keyed by the
    output's path relative to the input root (``action.output_paths``).
    """
    host_of = {os.fsdecode(output.dest): host for output, host in outputs}
    base = command.working_directory.strip("/")
    declared = list(command.output_paths) or [*command.output_files,
                                             *command.output_directories]
    for path in dict.fromkeys(declared):
        full = os.path.normpath(f"{base}/{path}" if base else path)
        host = host_of.get(full)
        if host is None:
            continue
        try:
            mode = os.lstat(host).st_mode
        except FileNotFoundError:
            continue  # not produced: left out of the result
        if stat.S_ISLNK(mode):
            target = os.fsdecode(os.readlink(host))
            result.output_symlinks.add(path=path, target=target)
            if path in command.output_files:
                result.output_file_symlinks.add(path=path, target=target)
            elif path in command.output_directories:
                result.output_directory_symlinks.add(path=path, target=target)
        elif stat.S_ISDIR(mode):
            children: dict[str, re.Directory] = {}
            root = _directory(host, blobs, children)
            tree = re.Tree(root=root, children=list(children.values()))
            digest = _blob(tree.SerializeToString(deterministic=True), blobs)
            result.output_directories.add(path=path, tree_digest=digest)
        elif stat.S_ISREG(mode):
            digest, executable = _hash_file(host)
            blobs[digest.hash] = (digest.size_bytes, os.fsdecode(host))
            result.output_files.add(path=path, digest=digest, is_executable=executable)
