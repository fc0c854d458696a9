"""Finding names in the tree: lookups, listings and walks, as the filesystem asks for them.

Scaffold directories answer from memory.  Mapped directories answer their
overlays first (nested mappings shadow host entries of the same name), then
the host.  Nothing here creates a node for a name that is only listed: the
caller does that when it needs attributes.

Pure: no pyfuse3, no trio; reads the host only through the nodes.
"""

from __future__ import annotations

import errno
import os
from typing import Sequence

from sandboxfs.tree.content import ContentDir
from sandboxfs.tree.nodes import HostNode, Node, ScaffoldDir


def child_of(container: dict | None, name: bytes) -> Node | None:
    """The node stored under ``name`` (a LazyFile becomes its node), or None."""
    if not container:
        return None
    value = container.get(name)
    return value.resolve(container, name) if value is not None else None


def lookup(parent: Node, name: bytes) -> tuple[Node, os.stat_result | None] | None:
    """Resolve ``name`` in directory ``parent``: (node, its lstat or None), or None if absent.

    A scaffold's stat is None (the caller synthesises it).  Raises OSError
    for host errors other than "not there".
    """
    if type(parent) is ScaffoldDir:
        child = child_of(parent.children, name)
        if child is None:
            return None
        return child, stat_of(child)
    if type(parent) is ContentDir:
        child = parent.child(name)
        if child is None:
            return None
        return child, stat_of(child)
    assert isinstance(parent, HostNode)
    child = child_of(parent.overlays, name)
    if child is not None:
        return child, stat_of(child)
    try:
        st = parent.lstat_child(name)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # our directory was swapped for a symlink
            return None
        raise
    return parent.found(name, st), st


def stat_of(node: Node) -> os.stat_result | None:
    """lstat of a node's host object, a virtual node's own attributes, or None for a scaffold."""
    if isinstance(node, HostNode):
        return node.lstat()
    return node.synthetic_stat()


def list_directory(node: Node, dir_fd: int = -1) -> list[tuple[bytes, Node | None]]:
    """The entries of a directory, in a fixed order: (name, node or None if on disk only).

    Explicit children come first (for a mapped directory, its overlays, which
    replace host entries of the same name), then host entries in the order
    the host lists them: from ``dir_fd`` when given (an open directory handle
    lists the directory it opened, even after a rename), else from the path.
    """
    if type(node) is ContentDir:
        # Made into nodes now (the listing needs their attributes anyway); a leaf
        # the source cannot show is left out, as a lookup of it finds nothing.
        children = [(name, node.child(name)) for name in node.names()]
        return [(name, child) for name, child in children if child is not None]
    container = node.contents() or {}
    entries: list[tuple[bytes, Node | None]] = [
        (name, child_of(container, name)) for name in list(container)
    ]
    if not isinstance(node, HostNode):
        return entries
    if dir_fd >= 0:
        names = os.listdir(dir_fd)  # lists a dup from the start; str names (surrogate escapes)
    else:
        fd = node.open_dir(os.O_RDONLY | os.O_DIRECTORY)
        try:
            names = os.listdir(fd)
        finally:
            os.close(fd)
    for text in names:
        name = os.fsencode(text)
        if name not in container:
            entries.append((name, None))
    return entries


Chain = list[tuple[Node | None, bytes, Node]]


def walk_explicit(top: Node, comps: Sequence[bytes]) -> Chain | None:
    """The explicit nodes from ``top`` down to ``comps``: [(parent, name, node), ...].

    The first element is (None, b"", top).  None when some component is not
    an explicit entry (only mappings and scaffolds are walked, never the host).
    """
    chain: Chain = [(None, b"", top)]
    node = top
    for part in comps:
        child = child_of(node.contents(), part)
        if child is None:
            return None
        chain.append((node, part, child))
        node = child
    return chain
