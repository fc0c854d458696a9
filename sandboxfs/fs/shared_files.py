"""One kernel inode for one read-only host file, whichever sandbox looks it up.

Without this, ``/usr/include/stdio.h`` mapped into twenty sandboxes is twenty
nodes, so twenty kernel inodes: each pays its own attributes, its own pages
(when we serve reads) and its own passthrough backing id.  Here a lookup
that finds a regular file through a read-only mapping answers the node
already standing for that host file (same device and inode) if the kernel
still holds one, as a filesystem answers a hard link: the kernel then finds
the inode it has, warm.  With ``--no-open`` that is the whole difference
between a header costing a LOOKUP and a READ in each new sandbox, and costing
only the LOOKUP.

What makes it safe:
* only regular files of read-only mappings, and never while a sandbox is
  tracked (a tracked sandbox must see its own lookups and reads);
* the shared node keeps no path of its own: it reaches the host through the
  locations that looked it up (``places``), the first whose lstat still
  shows the same device and inode.  An open through a sandbox whose path is
  unchanged never reads a file that replaced it under another sandbox's path;
* a node the kernel already holds under its own number is never swapped for
  another one (the kernel would see a name change identity);
* the table holds a shared node only while the kernel does
  (``InodeTable`` calls ``unshare`` when it drops it).

Directories are never shared: the kernel allows no aliases of a directory.
"""

from __future__ import annotations

import os
import stat

from sandboxfs.tree.host_entries import HostEntry
from sandboxfs.tree.nodes import FoundNode, HostNode, MappedNode, Node

_SHAREABLE = (MappedNode, FoundNode)
MAX_PLACES = 8  # places kept per shared file (older sandboxes are usually gone)


class SharedFile(HostNode):
    """A read-only host file's one node across sandboxes.

    ``places`` are the locations (one sandbox's node each) whose lookups
    answered it, most recent first.  Host access goes through the first of
    them whose lstat still shows this file (device and inode): an open from
    a sandbox whose path is unchanged never reaches a file that replaced it
    under another sandbox's path.  When none does, the most recent place is
    used, as an unshared node would use its own path.
    """

    __slots__ = ("places", "key", "table")

    # Once a second place has shared it, a file below this keeps its pages instead of
    # passing through, as the sandbox backend's shared files do: read once for every
    # sandbox, then no READ and no GETATTR (a passthrough read makes the kernel drop the
    # atime).  Seen by one place only, it passes through, as an unshared node does: the
    # sandbox may be gone before another needs the pages (docs/design.md has both cases).
    passthrough_min = 1 << 20

    def __init__(self, place: HostNode, key: tuple[int, int], table: "SharedFiles") -> None:
        super().__init__(False)
        self.places = [place]
        self.key = key
        self.table = table

    def passes_through(self, size: int) -> bool:
        return size >= self.passthrough_min or len(self.places) < 2

    def add_place(self, place: HostNode) -> None:
        places = self.places
        if places[0] is not place:
            if place in places:
                places.remove(place)
            places.insert(0, place)
            del places[MAX_PLACES:]

    def _place(self) -> tuple[HostNode, os.stat_result | None]:
        """The first place still showing this host file, and its lstat (None: not taken)."""
        places = self.places
        if len(places) == 1:
            return places[0], None  # no other to choose: no lstat to check it
        key = self.key
        for place in places:
            try:
                st = place.lstat()
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == key:
                return place, st
        return places[0], None

    def host_path(self) -> bytes:
        return self._place()[0].host_path()

    def mapping_and_rest(self) -> tuple[MappedNode, list[bytes]]:
        return self._place()[0].mapping_and_rest()

    def entry(self) -> HostEntry:
        return self._place()[0].entry()

    def lstat(self) -> os.stat_result:
        place, st = self._place()
        return st if st is not None else place.lstat()

    def unshare(self) -> None:
        """The kernel forgot this node: a later lookup starts a new one."""
        if self.table.by_file.get(self.key) is self:
            del self.table.by_file[self.key]


class SharedFiles:
    """The shared nodes the kernel holds, by host file (st_dev, st_ino)."""

    def __init__(self) -> None:
        self.by_file: dict[tuple[int, int], SharedFile] = {}

    def node_for(self, node: Node, st: os.stat_result | None, create: bool = True) -> Node:
        """The node a lookup should answer for ``node``, whose lstat is ``st``.

        ``create=False`` (a plain listing, which holds nothing): only a shared node
        that exists already, so that a listed inode number is the one a lookup gives.
        """
        if (type(node) not in _SHAREABLE or node.writable or node.lookups or st is None
                or not stat.S_ISREG(st.st_mode)):
            return node
        key = (st.st_dev, st.st_ino)
        shared = self.by_file.get(key)
        if shared is None:
            if not create:
                return node
            shared = self.by_file[key] = SharedFile(node, key, self)
        else:
            shared.add_place(node)  # verified by this lookup's lstat
        if type(node) is FoundNode and node.parent is not None:
            node.parent.forget_known(node)  # only the shared node is held by the kernel
        return shared
