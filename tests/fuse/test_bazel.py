"""A real Bazel (2.1.0, the last line that ships the sandboxfs 0.2 integration) builds through us.

The workspace (written by the test) holds genrules that read and transform
their inputs, one that consumes another's output in the same package (its
output directory then also holds an input), and genrules that compile, link
and run a small C program with gcc.  It is built twice from clean: once in
Bazel's own sandbox, once with ``--experimental_use_sandboxfs
--experimental_sandboxfs_path=<wrapper running our sandboxfs>``; the outputs
must be identical byte for byte, and the requests Bazel sent must show that
the actions really ran in sandboxfs sandboxes.

Two facts of Bazel 2.1 shape the setup (docs/compat.md):

* only ``linux-sandbox`` uses sandboxfs (``processwrapper-sandbox`` mounts it
  but never creates a sandbox in it);
* ``linux-sandbox`` bind-mounts the output base without MS_REC inside a new
  user namespace, which the kernel refuses (EINVAL) when a mount -- the
  sandboxfs mount point ``<output_base>/sandbox/sandboxfs`` -- lies below
  it.  So ``<output_base>/sandbox`` is made a symlink to a directory outside
  the output base and the workspace before the sandboxfs build.

Bazel comes from the npm registry (``@bazel/bazel@2.1.0``, installed once into
``~/.cache/sandboxfs-tests``; ``SANDBOXFS_TEST_BAZEL`` may name a binary
instead).  The test is skipped only when npm is missing.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .harness import fusermount_lazy, is_mounted

BAZEL_VERSION = "2.1.0"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sandboxfs-tests"
REPO = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT = 600

BUILD_FILES = {
    "WORKSPACE": "",
    "text/BUILD": """\
genrule(name = "upper", srcs = ["words.txt"], outs = ["upper.txt"],
        cmd = "tr a-z A-Z < $< > $@")
genrule(name = "sorted", srcs = [":upper", "more/extra.txt"], outs = ["sorted.txt"],
        visibility = ["//visibility:public"],
        cmd = "cat $(SRCS) | sort > $@")
genrule(name = "count", srcs = [":sorted"], outs = ["count.txt"],
        cmd = "wc -l < $< > $@ && md5sum < $(location :sorted) >> $@")
""",
    "text/words.txt": "delta\nalpha\ncharlie\nbravo\n",
    "text/more/extra.txt": "echo\nfoxtrot\n",
    "cc/BUILD": """\
genrule(name = "lib_o", srcs = ["lib.c", "lib.h"], outs = ["lib.o"],
        cmd = "gcc -c -I$$(dirname $(location lib.h)) -o $@ $(location lib.c)")
genrule(name = "main_o", srcs = ["main.c", "lib.h"], outs = ["main.o"],
        cmd = "gcc -c -I$$(dirname $(location lib.h)) -o $@ $(location main.c)")
genrule(name = "prog", srcs = [":lib_o", ":main_o"], outs = ["prog"],
        cmd = "gcc -o $@ $(SRCS)")
genrule(name = "run", srcs = [":prog", "//text:sorted"], outs = ["run.txt"],
        cmd = "./$(location :prog) $(location //text:sorted) > $@")
""",
    "cc/lib.h": "int count_lines(const char *path);\n",
    "cc/lib.c": """\
#include <stdio.h>
#include "lib.h"
int count_lines(const char *path) {
    FILE *f = fopen(path, "r");
    int c, n = 0;
    if (!f) return -1;
    while ((c = fgetc(f)) != EOF) n += c == '\\n';
    fclose(f);
    return n;
}
""",
    "cc/main.c": """\
#include <stdio.h>
#include "lib.h"
int main(int argc, char **argv) {
    printf("%s has %d lines\\n", argv[1], count_lines(argv[1]));
    return 0;
}
""",
}
OUTPUTS = ["text/upper.txt", "text/sorted.txt", "text/count.txt",
           "cc/lib.o", "cc/main.o", "cc/prog", "cc/run.txt"]
ACTIONS = 7


def bazel_binary() -> Path:
    """The Bazel 2.1.0 binary: given, cached, or installed from the npm registry now."""
    given = os.environ.get("SANDBOXFS_TEST_BAZEL")
    if given:
        return Path(given)
    binary = CACHE / f"bazel-{BAZEL_VERSION}"
    if binary.exists():
        return binary
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed: it is needed to fetch @bazel/bazel from the npm registry")
    prefix = CACHE / f"npm-bazel-{BAZEL_VERSION}"
    result = subprocess.run(
        [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund",
         f"@bazel/bazel@{BAZEL_VERSION}"],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT, stdin=subprocess.DEVNULL,
    )
    found = list((prefix / "node_modules" / "@bazel").glob(f"bazel-linux_x64/bazel-{BAZEL_VERSION}-linux-*"))
    assert result.returncode == 0 and found, f"npm install failed:\n{result.stdout}\n{result.stderr}"
    partial = binary.with_suffix(".partial")
    shutil.copyfile(found[0], partial)
    partial.chmod(0o755)
    partial.rename(binary)
    return binary


class Bazel:
    def __init__(self, binary: Path, workspace: Path, output_user_root: Path) -> None:
        self.binary = binary
        self.workspace = workspace
        self.startup = [f"--output_user_root={output_user_root}", "--bazelrc=/dev/null",
                        "--max_idle_secs=120"]

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(self.binary), *self.startup, *args], cwd=self.workspace, capture_output=True,
            text=True, timeout=BUILD_TIMEOUT, stdin=subprocess.DEVNULL,
        )
        if check:
            assert result.returncode == 0, f"bazel {' '.join(args)} failed:\n{result.stderr[-5000:]}"
        return result

    def build(self, *flags: str) -> float:
        self("clean")
        started = time.monotonic()
        self("build", "--verbose_failures", *flags, "//...")
        return time.monotonic() - started

    def collect(self, into: Path) -> Path:
        bin_dir = Path(self("info", "bazel-bin").stdout.strip())
        for output in OUTPUTS:
            (into / output).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(bin_dir / output, into / output)
        return into


def write_wrapper(path: Path, requests_log: Path) -> Path:
    """Bazel runs this as sandboxfs: our CLI in the venv, with a copy of its JSON input."""
    path.write_text(f"""#!/bin/bash
export PYTHONPATH={REPO}
case "$1" in --version) exec {sys.executable} -m sandboxfs "$@";; esac
exec {sys.executable} -m sandboxfs "$@" < <(tee -a {requests_log})
""")
    path.chmod(0o755)
    return path


def mounts_below(directory: Path) -> list[str]:
    prefix = os.path.realpath(directory)
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


def stop_leftovers(directory: Path) -> None:
    """Unmount and end any sandboxfs left below ``directory`` (by PID; there should be none)."""
    for point in mounts_below(directory):
        fusermount_lazy(point)
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"sandboxfs" in b" ".join(cmdline) and any(
                    arg.startswith(os.fsencode(directory)) for arg in cmdline):
                os.kill(int(pid), 15)


def test_bazel_builds_the_same_through_sandboxfs(workdir):
    binary = bazel_binary()
    workspace = workdir / "ws"
    for name, text in BUILD_FILES.items():
        (workspace / name).parent.mkdir(parents=True, exist_ok=True)
        (workspace / name).write_text(text)
    bazel = Bazel(binary, workspace, workdir / "bazel-root")
    requests_log = workdir / "requests.json"
    wrapper = write_wrapper(workdir / "sandboxfs-wrapper", requests_log)
    try:
        own = bazel.build("--spawn_strategy=linux-sandbox")
        expected = bazel.collect(workdir / "expected")
        wrapper_version = subprocess.run([str(wrapper), "--version"], capture_output=True, text=True)
        assert wrapper_version.stdout.startswith("sandboxfs 0.3.")

        output_base = Path(bazel("info", "output_base").stdout.strip())
        sandbox_base = workdir / "sandbox-base"  # outside the output base and the workspace
        sandbox_base.mkdir()
        shutil.rmtree(output_base / "sandbox", ignore_errors=True)
        (output_base / "sandbox").symlink_to(sandbox_base)

        through_us = bazel.build("--spawn_strategy=linux-sandbox", "--experimental_use_sandboxfs",
                                 f"--experimental_sandboxfs_path={wrapper}")
        actual = bazel.collect(workdir / "actual")
        match, mismatch, errors = filecmp.cmpfiles(expected, actual, OUTPUTS, shallow=False)
        assert (mismatch, errors) == ([], []), f"outputs differ: {mismatch} {errors}"
        assert (actual / "cc" / "run.txt").read_text().endswith("has 6 lines\n")

        sent = requests_log.read_text()
        assert sent.count('"CreateSandbox"') >= ACTIONS + 1, sent[:2000]  # "empty" + each action
        assert '"DestroySandbox"' in sent
        print(f"\nbazel {BAZEL_VERSION}: own sandbox {own:.1f}s, through sandboxfs {through_us:.1f}s")
    finally:
        bazel("shutdown", check=False)
        stop_leftovers(workdir)
    assert mounts_below(workdir) == []
    assert not is_mounted(output_base / "sandbox" / "sandboxfs")
