"""The ways to build a sandbox, behind one interface: ``setup`` returns the
directory an action runs in, ``collect`` moves its outputs to their host
directory, ``teardown`` removes the sandbox.

A ``Spec`` says what a sandbox holds: the first N files of the toolchain (under
``tc/``), a few extra files, and one output directory.  Strategies:

* ``in_place``: no sandbox; one prepared execroot (``tc`` is a symlink to the
  toolchain), reused by every action.
* ``symlink_py``: Bazel's processwrapper-sandbox: mkdir per directory, one symlink
  per input, rmtree afterwards (the code of the old bench/control_speed.py).
* ``symlink_cp``: the same forest with ``cp -rs`` / ``rm -rf``.
* ``hardlink``: ``cp -al`` / ``rm -rf``.
* ``copy``: ``cp -r`` / ``rm -rf``.
* ``sandboxfs``: create_sandbox / destroy_sandbox through the control socket.
* ``sandboxfs_reuse``: one sandbox per worker slot kept alive; each action maps and
  unmaps only what differs from the previous one (like --reuse_sandbox_directories).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import attrs

from sandboxfs.client import Client, prepare


@attrs.frozen
class Spec:
    tree_root: Path
    tree_dirs: tuple[str, ...]    # leaf dirs relative to tree_root, holding exactly tree_files
    tree_files: tuple[str, ...]   # relative to tree_root; appear at tc/<rel>
    extra_files: tuple[tuple[str, str], ...] = ()  # (path in sandbox, host path)
    output: tuple[str, str] | None = None          # (dir in sandbox, host dir)

    def mappings(self) -> dict[str, tuple[str, bool]]:
        """Sandbox path -> (host path, writable), as sandboxfs mappings."""
        root = str(self.tree_root)
        found = {f"/tc/{rel}": (f"{root}/{rel}", False) for rel in self.tree_files}
        for path, host in self.extra_files:
            found["/" + path] = (host, False)
        if self.output:
            found["/" + self.output[0]] = (self.output[1], True)
        return found


class Strategy:
    name = ""

    def __init__(self, workdir: Path) -> None:
        self.base = workdir / "sandboxes" / self.name
        self.base.mkdir(parents=True, exist_ok=True)

    def ready(self, spec: Spec) -> None:
        """Work done before an action's timer starts (forests: none)."""

    def setup(self, ident: str, spec: Spec, slot: int = 0) -> Path:
        raise NotImplementedError

    def collect(self, ident: str, spec: Spec, sandbox: Path) -> None:
        """Move outputs written inside a forest to the host output directory."""
        if spec.output is None:
            return
        inside, host = sandbox / spec.output[0], Path(spec.output[1])
        for entry in os.listdir(inside):
            os.replace(inside / entry, host / entry)

    def teardown(self, ident: str, spec: Spec, slot: int = 0) -> None:
        raise NotImplementedError

    def close(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


class InPlace(Strategy):
    """No sandbox: every action runs in an execroot prepared once per worker slot."""
    name = "in_place"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self._prepared: set[tuple[int, str]] = set()

    def setup(self, ident, spec, slot=0):
        root = self.base / f"execroot{slot}"  # one per worker: outputs never collide
        if not root.exists():
            root.mkdir()
            os.symlink(spec.tree_root, root / "tc")
        for path, host in spec.extra_files:
            if (slot, path) not in self._prepared:  # once: running in place costs nothing
                target = root / path
                target.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(host, target)
                self._prepared.add((slot, path))
        if spec.output:
            out = root / spec.output[0]
            if out.is_symlink():
                out.unlink()
            out.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(spec.output[1], out)
        return root

    def collect(self, ident, spec, sandbox):
        pass  # outputs went straight to the host directory

    def teardown(self, ident, spec, slot=0):
        pass


def _add_extras(sandbox: Path, spec: Spec) -> None:
    for path, host in spec.extra_files:
        target = sandbox / path
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(host, target)
    if spec.output:
        (sandbox / spec.output[0]).mkdir(parents=True)


class SymlinkForestPython(Strategy):
    """Build then delete a symlink forest the way processwrapper-sandbox does."""
    name = "symlink_py"

    def setup(self, ident, spec, slot=0):
        sandbox = self.base / ident
        made = set()
        root = str(spec.tree_root)
        for rel in spec.tree_files:
            target = os.path.join(sandbox, "tc", rel)
            parent = os.path.dirname(target)
            if parent not in made:
                os.makedirs(parent, exist_ok=True)
                made.add(parent)
            os.symlink(os.path.join(root, rel), target)
        sandbox.mkdir(exist_ok=True)
        _add_extras(sandbox, spec)
        return sandbox

    def teardown(self, ident, spec, slot=0):
        shutil.rmtree(self.base / ident)


class _CpForest(Strategy):
    cp_flags: tuple[str, ...] = ()

    def setup(self, ident, spec, slot=0):
        sandbox = self.base / ident
        (sandbox / "tc").mkdir(parents=True)
        if spec.tree_dirs:
            # -s needs absolute sources; --parents keeps their path below tc/.
            subprocess.run(["cp", *self.cp_flags, "--parents", *spec.tree_dirs,
                            str(sandbox / "tc")], cwd=spec.tree_root, check=True)
        _add_extras(sandbox, spec)
        return sandbox

    def teardown(self, ident, spec, slot=0):
        subprocess.run(["rm", "-rf", str(self.base / ident)], check=True)


class SymlinkForestCp(_CpForest):
    name = "symlink_cp"

    def setup(self, ident, spec, slot=0):
        sandbox = self.base / ident
        (sandbox / "tc").mkdir(parents=True)
        if spec.tree_dirs:
            # cp -s wants absolute sources: give them, and cut the prefix with --parents
            # by running from / on paths relative to it.
            rels = [os.path.join(str(spec.tree_root), d).lstrip("/") for d in spec.tree_dirs]
            tmp = sandbox / "tc.tmp"
            tmp.mkdir()
            subprocess.run(["cp", "-rs", "--parents", *("/" + r for r in rels), str(tmp)],
                           check=True)
            (sandbox / "tc").rmdir()
            os.rename(tmp / str(spec.tree_root).lstrip("/"), sandbox / "tc")
            shutil.rmtree(tmp)
        _add_extras(sandbox, spec)
        return sandbox


class HardlinkForest(_CpForest):
    name = "hardlink"
    cp_flags = ("-rl",)


class FullCopy(_CpForest):
    name = "copy"
    cp_flags = ("-r",)


class Sandboxfs(Strategy):
    """A fresh sandbox per action through the control socket."""
    name = "sandboxfs"

    def __init__(self, workdir: Path, mount_point: Path, socket: str) -> None:
        super().__init__(workdir)
        self.mount_point = mount_point
        self.socket = socket
        self._clients: dict[int, Client] = {}
        self._listed: tuple[Spec, list] | None = None

    def mapping_list(self, spec: Spec) -> list[tuple[str, str, bool]]:
        """The spec as the (path, host, writable) list a build tool holds.

        Built afresh for every action (new tuples of new strings, equal content), as a build
        tool builds its input list per action; ``ready`` builds it before the timer starts,
        as the forests get their relative paths ready-made.
        """
        if self._listed is None or self._listed[0] is not spec:
            self.ready(spec)
        return self._listed[1]

    def ready(self, spec: Spec) -> None:
        """Build the next action's list now, outside the timed part."""
        self._listed = (spec, [("".join((path, "")), "".join((host, "")), w)
                               for path, (host, w) in spec.mappings().items()])

    def take_list(self, spec: Spec):
        """The list made ready for this action; the next action gets a new one."""
        mappings = self.mapping_list(spec)
        self._listed = None
        return mappings

    def client(self, slot: int) -> Client:
        # One connection per worker slot: a blocking Client is not thread-safe.
        if slot not in self._clients:
            self._clients[slot] = Client(self.socket)
        return self._clients[slot]

    def setup(self, ident, spec, slot=0):
        self.client(slot).create_sandbox(ident, self.take_list(spec))
        return self.mount_point / ident

    def collect(self, ident, spec, sandbox):
        pass  # the output directory is a read-write mapping of the host directory

    def teardown(self, ident, spec, slot=0):
        self.client(slot).destroy_sandbox(ident)

    def close(self):
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        super().close()


class SandboxfsOwnInodes(Sandboxfs):
    """As ``Sandboxfs``, on a mount started with ``--no-shared-inodes``."""
    name = "sandboxfs_own_inodes"


class SandboxfsPrepared(Sandboxfs):
    """As ``Sandboxfs``, with the inputs prepared once (``sandboxfs.client.prepare``): the
    request names the groups the server holds by digest."""
    name = "sandboxfs_prepared"

    def ready(self, spec: Spec) -> None:
        if self._listed is None or self._listed[0] is not spec:
            self._listed = (spec, prepare([(path, host, w)
                                           for path, (host, w) in spec.mappings().items()]))

    def take_list(self, spec: Spec):
        return self.mapping_list(spec)


class SandboxfsReuse(Sandboxfs):
    """One live sandbox per worker slot; each action changes only the difference."""
    name = "sandboxfs_reuse"

    def __init__(self, workdir, mount_point, socket):
        super().__init__(workdir, mount_point, socket)
        self._live: dict[int, dict[str, tuple[str, bool]]] = {}

    def setup(self, ident, spec, slot=0):
        name = f"reuse{slot}"
        wanted = spec.mappings()
        client = self.client(slot)
        current = self._live.get(slot)
        if current is None:
            client.create_sandbox(name, [(p, h, w) for p, (h, w) in wanted.items()])
        else:
            gone = [p for p, v in current.items() if wanted.get(p) != v]
            new = [(p, h, w) for p, (h, w) in wanted.items() if current.get(p) != (h, w)]
            if gone:
                client.unmap(name, gone)
            if new:
                client.map(name, new)
        self._live[slot] = wanted
        return self.mount_point / name

    def teardown(self, ident, spec, slot=0):
        pass  # kept for the next action

    def close(self):
        for slot in list(self._live):
            try:
                self.client(slot).destroy_sandbox(f"reuse{slot}")
            except OSError:
                pass
        self._live.clear()
        super().close()


FOREST_STRATEGIES = (SymlinkForestPython, SymlinkForestCp, HardlinkForest, FullCopy)
