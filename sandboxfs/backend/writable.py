"""The writable places of a backend sandbox, and Collect: outputs from scratch to exec root.

Outputs and writable directories are the only writable places of a
sandbox.  Each is a read-write mapping of the sandbox's scratch directory
(or, for a writable directory with a host path, of that path), placed at the
first component of its path that the tree lacks; an output directory that is
itself an input directory becomes a writable scratch directory showing the
tree's entries as read-only nested mappings.  ``collect`` renames outputs to
their destinations, copying only across filesystems.

Pure: no pyfuse3, no trio.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat

import attrs

from sandboxfs.backend.merkle import MerkleDir
from sandboxfs.errors import InvalidRequestError, MappingError
from sandboxfs.tree.content import ContentDir
from sandboxfs.tree.mapping import display, split_inner_path
from sandboxfs.tree.nodes import MappedNode, Node, ScaffoldDir

Changed = list[tuple[Node, bytes]]


@attrs.frozen
class Output:
    """A declared output: its path in the sandbox, its kind, where Collect moves it."""

    components: tuple[bytes, ...]
    kind: str  # "file" | "dir"
    dest: bytes  # relative to Collect's exec root


def parse_outputs(label: str, outputs, writable_dirs) -> tuple[list[Output], list]:
    """The manifest's outputs and writable directories, checked (InvalidRequestError)."""
    parsed = []
    for key in sorted(outputs):
        output = outputs[key]
        comps = _inner(label, "output", key)
        if output.type not in ("file", "dir"):
            raise InvalidRequestError(f"{label}: output {key!r} has type {output.type!r}; "
                                      "expected 'file' or 'dir'")
        if not comps:
            raise InvalidRequestError(f"{label}: output {key!r} is the sandbox root")
        dest = os.fsencode(output.dest or key).lstrip(b"/")
        if not dest or any(part in (b"", b".", b"..") for part in dest.split(b"/")):
            raise InvalidRequestError(f"{label}: output {key!r} has a bad destination "
                                      f"{output.dest!r}")
        parsed.append(Output(comps, output.type, dest))
    writable = []
    for key in sorted(writable_dirs):
        comps = _inner(label, "writable directory", key)
        host = writable_dirs[key]
        if host and not os.path.isabs(host):
            raise InvalidRequestError(f"{label}: writable directory {key!r} has a relative host "
                                      f"path {host!r}")
        writable.append((comps, os.fsencode(host)))
    return parsed, writable


def _inner(label: str, what: str, key: str) -> tuple[bytes, ...]:
    path = key if key.startswith("/") else "/" + key
    try:
        return split_inner_path(path)
    except MappingError as exc:
        raise InvalidRequestError(f"{label}: {what} {key!r}: {exc.message}") from None


def join(*parts: bytes) -> bytes:
    return b"/".join(part.strip(b"/") if index else part.rstrip(b"/")
                     for index, part in enumerate(parts) if part)


def place_writable(slot, label: str, outputs: list[Output], writable) -> Changed:
    """Make the slot's outputs and writable directories writable (``slot.overrides`` records
    what was added, ``slot.outputs`` where each output will be); returns the entries to forget."""
    changed: Changed = []
    for comps, host in writable:
        _make_writable(slot, label, comps, host or None, changed)
    for output in outputs:
        comps = output.components if output.kind == "dir" else output.components[:-1]
        if not comps:
            raise InvalidRequestError(f"{label}: output '/{display(b'/'.join(output.components))}'"
                                      " is directly in the sandbox root, which stays read-only")
        parent = _make_writable(slot, label, comps, None, changed)
        host = parent if output.kind == "dir" else join(parent, output.components[-1])
        slot.outputs.append((output, host))
    return changed


def _make_writable(slot, label: str, comps: tuple[bytes, ...],
                   host: bytes | None, changed: Changed) -> bytes:
    """Make ``comps`` a writable directory of the sandbox; returns its host path."""
    shown = "/" + display(b"/".join(comps))
    node: Node = slot.node
    for index, part in enumerate(comps):
        last = index == len(comps) - 1
        if type(node) is ContentDir:
            child = node.child(part)
            if child is None and type(node.listing.entries.get(part)) not in (MerkleDir,
                                                                             type(None)):
                raise InvalidRequestError(f"{label}: writable path {shown}: "
                                          f"'{display(part)}' is an input file")
            if child is None or (last and type(child) is ContentDir):
                mapped = _writable_node(slot, comps[:index + 1], comps, host, child)
                node.set_override(part, mapped)
                slot.overrides.append((node, part))
                changed.append((node, part))
                return host if host is not None else join(mapped.host_path(),
                                                           *comps[index + 1:])
            if type(child) not in (ContentDir, MappedNode, ScaffoldDir):
                raise InvalidRequestError(f"{label}: writable path {shown}: "
                                          f"'{display(part)}' is an input file")
            node = child
        elif type(node) is MappedNode and node.writable:
            child = node.overlay(part)
            if child is None:
                if host is not None:
                    raise InvalidRequestError(f"{label}: writable directory {shown} lies "
                                              "inside another writable place")
                path = join(node.host_path(), *comps[index:])
                mkdirs(path)
                return path
            if type(child) is ContentDir and last:
                mapped = _writable_node(slot, comps, comps, host, child)
                node.overlays[part] = mapped
                changed.append((node, part))
                return mapped.host_path()
            if type(child) is not ContentDir:
                raise InvalidRequestError(f"{label}: writable path {shown}: "
                                          f"'{display(part)}' is an input file")
            node = child
        elif type(node) is ScaffoldDir:
            child = node.children.get(part)
            if child is None:
                if last:
                    mapped = _writable_node(slot, comps, comps, host, None)
                    node.children[part] = mapped
                    return mapped.host_path()
                child = node.children[part] = ScaffoldDir()
            node = child
        else:
            raise InvalidRequestError(f"{label}: writable path {shown}: "
                                      f"'{display(part)}' is an input file")
    if isinstance(node, MappedNode) and node.writable:
        return node.host_path()
    raise InvalidRequestError(f"{label}: writable path {shown} is an input directory")


def _writable_node(slot, at: tuple[bytes, ...], full: tuple[bytes, ...],
                   host: bytes | None, inputs: Node | None) -> Node:
    """The node placed at ``at`` (a prefix of ``full``) for a writable ``full``."""
    if host is not None and at != full:
        # A host directory for a deeper path: scaffolds down to it.
        top = ScaffoldDir()
        node = top
        for part in full[len(at):-1]:
            node = node.children.setdefault(part, ScaffoldDir())
        node.children[full[-1]] = MappedNode.of_path(host, True)
        return top
    path = host or join(slot.scratch, *at)
    mkdirs(join(path, *full[len(at):]) if host is None else path)
    mapped = MappedNode.of_path(path, True)
    if type(inputs) is ContentDir:  # an input directory that is also writable
        mapped.overlays = {name: child for name in inputs.names()
                           if (child := inputs.child(name)) is not None}
    return mapped


def move_output(source: bytes, dest: bytes, kind: str) -> bool:
    """Move one output to ``dest`` (replacing what is there); False if it was not produced."""
    try:
        st = os.lstat(source)
    except FileNotFoundError:
        return False
    if kind == "dir" and not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, "a directory output is not a directory")
    mkdirs(os.path.dirname(dest))
    _remove(dest)
    try:
        os.rename(source, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        if stat.S_ISDIR(st.st_mode):
            shutil.copytree(source, dest, symlinks=True)
            shutil.rmtree(source)
        else:
            shutil.copy2(source, dest, follow_symlinks=False)
            os.unlink(source)
    if kind == "dir":
        os.mkdir(source)  # the sandbox still shows its (now empty) output directory
    return True


def mkdirs(path: bytes) -> None:
    """``mkdir -p`` with mode 0755 at every level (the server runs with umask 0)."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent != path:
        mkdirs(parent)
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass


def _remove(path: bytes) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)
