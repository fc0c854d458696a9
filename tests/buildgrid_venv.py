"""The BuildGrid 0.9.1 virtualenv the engine tests run (``tests.engine``), made on first use.

BuildGrid needs Python 3.13 and brings its own dependency tree (SQLAlchemy, psycopg,
grpcio of its own version), so it lives in a venv of its own, outside the project's,
as the separate service it is: ``~/.cache/sandboxfs-tests/buildgrid-0.9.1/venv``
(``SANDBOXFS_TEST_BUILDGRID_VENV`` overrides).  Building it takes about 30 s, once per
machine; it is built in a temporary directory under a lock and renamed into place, so
two test processes never see half a venv.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

BUILDGRID_VERSION = "0.9.1"
VENV_ENV = "SANDBOXFS_TEST_BUILDGRID_VENV"
DEFAULT_VENV = Path.home() / ".cache" / "sandboxfs-tests" / f"buildgrid-{BUILDGRID_VERSION}" / "venv"
# Written last into a finished venv: a venv without it is a leftover and gets rebuilt.
_COMPLETE_MARKER = ".sandboxfs-complete"


class EngineUnavailable(Exception):
    """The engine cannot be set up on this machine (no Python 3.13, no PyPI, no PostgreSQL)."""


# --- the BuildGrid venv -------------------------------------------------------------


def _find_python313() -> Path:
    candidates: list[Path] = []
    roots: list[Path] = []
    pyenv = shutil.which("pyenv")
    if pyenv:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pyenv, "root"], capture_output=True, text=True, timeout=10, check=False)
            if out.returncode == 0 and out.stdout.strip():
                roots.append(Path(out.stdout.strip()))
    if os.environ.get("PYENV_ROOT"):
        roots.append(Path(os.environ["PYENV_ROOT"]))
    roots.append(Path.home() / ".pyenv")
    roots.append(Path("/root/.pyenv"))
    for root in roots:
        # Newest 3.13.x first; skip 3.13t (free-threaded) and the like.
        versions = sorted(
            (d for d in (root / "versions").glob("3.13*") if d.name.replace(".", "").isdigit()),
            key=lambda d: tuple(int(p) for p in d.name.split(".")),
            reverse=True,
        )
        candidates += [d / "bin" / "python" for d in versions]
    which = shutil.which("python3.13")
    if which:
        candidates.append(Path(which))
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    raise EngineUnavailable(
        f"BuildGrid {BUILDGRID_VERSION} needs Python 3.13: none under $(pyenv root)/versions/3.13* "
        "nor python3.13 on PATH"
    )


def _venv_dir() -> Path:
    return Path(os.environ.get(VENV_ENV) or DEFAULT_VENV).expanduser()


def _relocate_scripts(bindir: Path, old: str, new: str) -> None:
    """After the rename, point the console scripts' shebangs (and activate) at the new path."""
    for f in bindir.iterdir():
        if f.is_symlink() or not f.is_file():
            continue
        data = f.read_bytes()
        if old.encode() in data and b"\0" not in data[:1024]:
            f.write_bytes(data.replace(old.encode(), new.encode()))


def buildgrid_python() -> Path:
    """Make sure the BuildGrid venv exists (install on first use) and return its python."""
    venv = _venv_dir()
    python = venv / "bin" / "python"
    if (venv / _COMPLETE_MARKER).exists() and python.exists():
        return python
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another pytest may be building it right now
        if (venv / _COMPLETE_MARKER).exists() and python.exists():
            return python
        base = _find_python313()
        tmp = Path(tempfile.mkdtemp(prefix=f".{venv.name}.tmp-", dir=venv.parent))
        try:
            log = tmp.parent / f".{venv.name}.install.log"
            with open(log, "w") as out:
                steps = [
                    [str(base), "-m", "venv", "--prompt", f"buildgrid-{BUILDGRID_VERSION}", str(tmp)],
                    [str(tmp / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
                     "--no-input", f"buildgrid=={BUILDGRID_VERSION}"],
                ]
                for cmd in steps:
                    try:
                        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=900, check=False).returncode
                    except subprocess.TimeoutExpired:
                        rc = "timeout"
                    if rc != 0:
                        out.flush()
                        tail = log.read_text(errors="replace")[-3000:]
                        raise EngineUnavailable(
                            f"installing BuildGrid {BUILDGRID_VERSION} failed ({' '.join(cmd[-3:])}: {rc}); "
                            f"is PyPI reachable? Log {log}:\n{tail}"
                        )
            # Check it imports before declaring it done.
            check = subprocess.run(
                [str(tmp / "bin" / "python"), "-c", "import buildgrid.server.app, psycopg"],
                capture_output=True, text=True, timeout=120, check=False,
            )
            if check.returncode != 0:
                raise EngineUnavailable(f"the fresh BuildGrid venv does not import: {check.stderr[-2000:]}")
            if venv.exists():  # a half-built leftover from an older run (no marker)
                shutil.rmtree(venv)
            tmp.chmod(0o755)  # mkdtemp made it 0700
            os.rename(tmp, venv)
            _relocate_scripts(venv / "bin", str(tmp), str(venv))
            _relocate_scripts(venv, str(tmp), str(venv))  # pyvenv.cfg
            (venv / _COMPLETE_MARKER).write_text(f"buildgrid=={BUILDGRID_VERSION}\n")
            log.unlink(missing_ok=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return python
