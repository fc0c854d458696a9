"""Build a small C program inside a sandboxfs mount, the way a build tool would.

The mount maps the C sources next to this script read-only at /src and a fresh
output directory read-write at /out.  The demo compiles and links through the
mount, runs the result, shows that the object files landed in the real output
directory, shows that the sources cannot be written, and unmounts.  Then it
does the same compile with `sandboxfs run --confine` (a private mount, the
sandbox as the compiler's root filesystem) and prints its access report.

Standard library only; run it with a Python that has sandboxfs installed
(`make demo` does).  Exits 0 on success.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parent / "src"
MOUNT_TIMEOUT = 10.0
EXIT_TIMEOUT = 10.0


class DemoFailed(Exception):
    """A step did not do what the demo expects."""


def step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def run(*argv: str | Path, cwd: Path) -> None:
    """Runs a command, echoing it first; raises DemoFailed if it fails."""
    print("$ " + " ".join(str(a) for a in argv), flush=True)
    result = subprocess.run([str(a) for a in argv], cwd=cwd)
    if result.returncode != 0:
        raise DemoFailed(f"{argv[0]} exited with status {result.returncode}")


def list_dir(path: Path, label: str) -> None:
    """Prints the entries of `path` like `ls -l` does."""
    print(f"{label}:")
    for name in sorted(os.listdir(path)):
        st = os.lstat(path / name)
        print(f"  {stat.filemode(st.st_mode)} {st.st_nlink:3} {st.st_size:8}  {name}")


def start_sandboxfs(mnt: Path, out: Path, log_path: Path) -> subprocess.Popen:
    argv = [
        sys.executable, "-m", "sandboxfs", "mount",
        "--mapping", f"ro:/src:{SRC}",
        "--mapping", f"rw:/out:{out}",
        str(mnt),
    ]
    print("$ " + " ".join(argv), flush=True)
    with open(log_path, "wb") as log:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)


def wait_until_mounted(child: subprocess.Popen, mnt: Path) -> None:
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise DemoFailed(f"sandboxfs exited with status {child.returncode} before mounting")
        if os.path.ismount(mnt):
            return
        time.sleep(0.05)
    raise DemoFailed(f"{mnt} was not mounted after {MOUNT_TIMEOUT:.0f} s")


def expect_refused(description: str, path: Path, flags: int) -> None:
    """Tries to open `path` for writing; the mount must refuse."""
    print(f"{description}: ", end="", flush=True)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        name = errno.errorcode.get(e.errno, str(e.errno))
        print(name if name == "EPERM" else f"{name} (expected EPERM)")
        return
    os.close(fd)
    print("succeeded!")
    if flags & os.O_CREAT:
        try:
            os.unlink(path)
        except OSError:
            pass
    raise DemoFailed(f"writing {path} should have been refused: /src is mapped read-only")


def build_and_check(tmp: Path) -> None:
    """The build, run from `tmp` with paths relative to it, as a build tool would."""
    src, out = Path("mnt/src"), Path("mnt/out")

    step("listing the mount")
    list_dir(tmp / "mnt", "mnt")
    list_dir(tmp / src, str(src))

    step("compiling greet.c and main.c inside the mount")
    for name in ("greet", "main"):
        run("gcc", "-c", src / f"{name}.c", "-I", src / "include", "-o", out / f"{name}.o", cwd=tmp)

    step("linking mnt/out/hello inside the mount")
    run("gcc", out / "main.o", out / "greet.o", "-o", out / "hello", cwd=tmp)

    step("running it")
    run(out / "hello", "sandbox", cwd=tmp)

    step("checking that the real output directory out/ has the object file")
    real = tmp / "out" / "greet.o"
    if not real.is_file():
        raise DemoFailed(f"{real} does not exist")
    print(f"out/greet.o: {real.stat().st_size} bytes")

    step("trying to write into the read-only mnt/src")
    expect_refused("create mnt/src/evil.c", tmp / src / "evil.c", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    # No O_TRUNC: should the mount wrongly allow it, the source stays intact.
    expect_refused("open mnt/src/main.c for writing", tmp / src / "main.c", os.O_WRONLY)


def confined_compile(tmp: Path) -> None:
    """One action with `sandboxfs run`: a private mount, a confined gcc, an access report."""
    step("compiling greet.c with `sandboxfs run --confine` and an access report")
    report_path = tmp / "report.json"
    mappings = [f"ro:/src/{name}:{SRC / name}" for name in ("greet.c", "main.c", "include")]
    argv = [sys.executable, "-m", "sandboxfs", "run", "--confine", "--map-system",
            *(arg for m in mappings for arg in ("--mapping", m)),
            "--mapping", f"rw:/out:{tmp / 'out'}", "--cwd", "/src", "--report", str(report_path),
            "--", "gcc", "-c", "greet.c", "-I", "include", "-o", "/out/greet-confined.o"]
    run(*argv, cwd=tmp)
    report = json.loads(report_path.read_text())
    read = sorted(p for p, kinds in report["accessed"].items() if p.startswith("src/") and "read" in kinds)
    print(f"read by gcc: {', '.join(read)}")
    print(f"declared but never used: {', '.join(report['unused']) or 'nothing'}")
    if "src/main.c" not in report["unused"] or "src/greet.c" not in read:
        raise DemoFailed("the access report does not match what gcc read")
    if not (tmp / "out" / "greet-confined.o").is_file():
        raise DemoFailed("out/greet-confined.o was not written")


def stop_sandboxfs(child: subprocess.Popen, mnt: Path) -> None:
    """SIGTERM and wait; then, if needed, lazy-unmount and kill.  By PID only."""
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(f"sandboxfs (pid {child.pid}) did not exit after SIGTERM")
    # A dead FUSE mount fails stat(), so os.path.ismount would miss it.
    if mounts_under(mnt):
        print(f"$ fusermount3 -u -z {mnt}")
        try:
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)])
        except OSError as e:
            print(f"fusermount3: {e}", file=sys.stderr)
    if child.poll() is None:
        print(f"killing sandboxfs (pid {child.pid})")
        child.kill()
        child.wait()


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below `root`, from /proc/self/mounts."""
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    prefix = str(root).rstrip("/") + "/"
    return [p for p in points if p == str(root) or p.startswith(prefix)]


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)  # keep stdout and stderr in order in logs
    tmp = Path(tempfile.mkdtemp(prefix="sandboxfs-demo-"))
    mnt, out, log_path = tmp / "mnt", tmp / "out", tmp / "sandboxfs.log"
    mnt.mkdir()
    out.mkdir()
    child = None
    ok = False
    try:
        step(f"working in {tmp}: mounting sandboxfs on mnt/")
        print(f"  /src -> {SRC} (read-only)\n  /out -> {out} (read-write)")
        child = start_sandboxfs(mnt, out, log_path)
        wait_until_mounted(child, mnt)
        build_and_check(tmp)
        confined_compile(tmp)
        ok = True
    except (DemoFailed, OSError) as e:
        print(f"\ndemo failed: {e}", file=sys.stderr)
    finally:
        if child is not None:
            if child.poll() is None:
                step(f"unmounting (SIGTERM to sandboxfs, pid {child.pid})")
            stop_sandboxfs(child, mnt)
            print(f"sandboxfs exited with status {child.returncode}")
            if not ok:
                print(f"--- {log_path} ---", file=sys.stderr)
                print(log_path.read_text(errors="replace"), end="", file=sys.stderr)
                print("---", file=sys.stderr)
        left = mounts_under(tmp)
        if left:
            # Never rmtree through a live mount: it would reach the mapped directories.
            print(f"still mounted: {', '.join(left)}; leaving {tmp} in place", file=sys.stderr)
            ok = False
        else:
            print("nothing is mounted any more")
            shutil.rmtree(tmp)
    if ok:
        print("\ndemo finished: OK")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
