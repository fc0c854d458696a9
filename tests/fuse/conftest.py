"""Fixtures for tests that mount a real sandboxfs (root and /dev/fuse needed)."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Callable, Sequence

import pytest

from .harness import Mount, is_mounted, stop_all, world_traversable_tempdir

UNPRIVILEGED_USER = "sbxtest"
# A Python the unprivileged user can run: the venv lives under /root (mode 0700).
SYSTEM_PYTHON = "/usr/bin/python3"

pytestmark = pytest.mark.fuse


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/fuse/" in str(item.fspath):
            item.add_marker(pytest.mark.fuse)


@pytest.fixture(scope="session", autouse=True)
def _need_fuse():
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        pytest.skip("real-mount tests need root and /dev/fuse")
    if shutil.which("fusermount3") is None:
        pytest.fail("fusermount3 is missing: run `make test`, which installs fuse3")


@pytest.fixture(scope="session", autouse=True)
def _children_get_default_sighup():
    """Under ``nohup`` SIGHUP is ignored, and children inherit that; sandboxfs then
    keeps ignoring it (on purpose), which tests that send SIGHUP must not see."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGHUP, previous)


@pytest.fixture
def workdir() -> Path:
    """A world-traversable temp dir, removed after the test (after its mounts)."""
    path = world_traversable_tempdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sandboxfs_mount(workdir: Path) -> Callable[..., Mount]:
    """Start mounts: ``sandboxfs_mount(["--mapping", "ro:/src:/x"])``; all stopped at teardown."""
    mounts: list[Mount] = []

    def start(args: Sequence[str] = (), mount_point: Path | None = None) -> Mount:
        point = mount_point or workdir / f"mnt{len(mounts)}"
        if not is_mounted(point):  # a dead mount there answers stat with ENOTCONN
            point.mkdir(exist_ok=True)
        mount = Mount(point, args, workdir / f"sandboxfs{len(mounts)}.log")
        mounts.append(mount)
        return mount.start()

    yield start
    stop_all(mounts)


@pytest.fixture(scope="session")
def unprivileged_user() -> pwd.struct_passwd:
    """A real second user (created once) for ownership and permission tests."""
    try:
        return pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
             UNPRIVILEGED_USER],
            check=True,
        )
        return pwd.getpwnam(UNPRIVILEGED_USER)


def run_as(user: pwd.struct_passwd, argv: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a real process as ``user`` (no supplementary groups), capturing output."""
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    return subprocess.run(
        list(argv), user=user.pw_uid, group=user.pw_gid, extra_groups=[], **kwargs
    )
