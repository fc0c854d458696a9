"""The roots of 0.2 mounts and sandboxes on a real mount: what may be mapped there.

0.2 accepted a CreateSandbox that maps the sandbox's root "/" to a file:
``MOUNT_POINT/ID`` is then that file.  The mount's own root must stay a
directory (``Failed to map root: ...``), as in 0.2.  Children come from the
``sandboxfs02`` fixture (test_compat), which ends them by PID and checks that
nothing stays mounted.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys

from . import test_compat
from .harness import fusermount_lazy, is_mounted
from .test_compat import create, mapping, ok

sandboxfs02 = test_compat.sandboxfs02  # fixtures: 0.2 children, the host tree
tree = test_compat.tree


def test_a_sandbox_root_mapped_to_a_file_is_that_file(sandboxfs02, tree):
    child = sandboxfs02()
    mnt = child.mount_point
    assert child.request(create("sb", mapping("/", tree / "file"))) == ok("sb")
    assert os.listdir(mnt) == ["sb"]
    assert stat.S_ISREG(os.stat(mnt / "sb").st_mode)
    assert (mnt / "sb").read_text() == "plain\n"
    assert child.request({"DestroySandbox": "sb"}) == ok("sb")
    assert not (mnt / "sb").exists()


def test_a_writable_file_root_writes_the_host_file(sandboxfs02, tree):
    child = sandboxfs02()
    assert child.request(create("sb", mapping("/", tree / "file", True))) == ok("sb")
    with open(child.mount_point / "sb", "a") as f:
        f.write("more\n")
    assert (tree / "file").read_text() == "plain\nmore\n"


def test_nothing_can_be_mapped_below_a_file_root(sandboxfs02, tree):
    child = sandboxfs02()
    response = child.request(create("sb", mapping("/", tree / "file"),
                                    mapping("/d", tree / "dir")))
    assert response == {"id": "sb", "error": (
        f"Cannot map '/d -> {tree / 'dir'} (read-only)': cannot nest below {tree / 'file'}: "
        "ENOTDIR (Not a directory)")}
    assert os.listdir(child.mount_point) == []
    assert child.request(create("next", mapping("/d", tree / "dir"))) == ok("next")


def test_the_mount_root_mapped_to_a_file_fails_before_mounting(workdir, tree):
    mount_point = workdir / "mnt"
    mount_point.mkdir()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "sandboxfs", f"--mapping=ro:/:{tree / 'file'}",
             str(mount_point)],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False,
        )
    finally:  # should a regression have mounted (and been killed at the timeout)
        mounted = is_mounted(mount_point)
        if mounted:
            fusermount_lazy(mount_point)
    assert not mounted
    assert result.returncode == 1
    assert result.stderr.endswith(
        f'sandboxfs: Failed to map root: "{tree / "file"}" is not a directory\n')
