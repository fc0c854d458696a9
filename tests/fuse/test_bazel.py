"""A real Bazel (2.1.0, the last line that ships the sandboxfs 0.2 integration) builds through us.

The workspace (written by the test) holds genrules that read and transform
their inputs, one that consumes another's output in the same package (its
output directory then also holds an input), genrules that compile, link and
run a small C program with gcc, and one that writes down where it ran: the
filesystem type of its working directory (``stat -f``), the directory, and
its mount table.  It is built twice from clean in Bazel's ``linux-sandbox``:
once in Bazel's own sandbox, once with ``--experimental_use_sandboxfs
--experimental_sandboxfs_path=<wrapper running our sandboxfs>`` on a newly
started server.  The outputs must be identical byte for byte, and the
sandboxfs build must show that sandboxfs served the actions: the action ran
in a FUSE filesystem, in the directory of a sandbox the server was asked to
create, and the server created (and destroyed) one sandbox per action.  A
genrule that reads an input it did not declare must fail through sandboxfs
(and succeed unsandboxed, so the failure is the sandbox's doing).

Two facts of Bazel 2.1 shape the setup (docs/compat.md): only
``linux-sandbox`` sends sandboxfs work (``processwrapper-sandbox`` mounts it
and leaves it empty), and ``linux-sandbox`` fails with EINVAL when the
sandboxfs mount lies below the output base, so both builds pass
``--sandbox_base`` with a directory outside it.

Bazel comes from ``bench/bazel_tool.py``, shared with the Bazel benchmark:
installed once from the npm registry (``@bazel/bazel@2.1.0``) into
``~/.cache/sandboxfs-tests``; ``SANDBOXFS_TEST_BAZEL`` may name a binary
instead.  The test is skipped only when npm is missing.
"""

from __future__ import annotations

import filecmp
import shutil
import time
from pathlib import Path

import pytest

from bench.bazel_tool import (
    BAZEL_VERSION,
    Bazel,
    BazelUnavailable,
    ServerStreams,
    bazel_binary,
    clear_streams,
    mounts_below,
    stop_leftovers,
    write_sandboxfs_wrapper,
)

from .harness import TRANSPORT

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
    "where/BUILD": """\
genrule(name = "where", srcs = ["input.txt"], outs = ["where.txt"],
        cmd = "stat -f -c %T . > $@ && pwd >> $@ && cat /proc/self/mountinfo >> $@")
""",
    "where/input.txt": "an input, so the action has a sandbox with something in it\n",
    # Reads a file of the workspace that it does not declare; built only by name.
    "bad/BUILD": """\
genrule(name = "undeclared", outs = ["leaked.txt"], tags = ["manual"],
        cmd = "cat bad/secret.txt > $@")
""",
    "bad/secret.txt": "not an input\n",
}
OUTPUTS = ["text/upper.txt", "text/sorted.txt", "text/count.txt",
           "cc/lib.o", "cc/main.o", "cc/prog", "cc/run.txt"]
ACTIONS = 8  # the genrules of //... (all but //bad:undeclared)


def bazel_or_skip() -> Path:
    try:
        return bazel_binary()
    except BazelUnavailable as exc:
        pytest.skip(str(exc))


def collect(bazel: Bazel, into: Path) -> Path:
    bin_dir = bazel.info("bazel-bin")
    for output in OUTPUTS + ["where/where.txt"]:
        (into / output).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(bin_dir / output, into / output)
    return into


def where_it_ran(record: Path) -> tuple[str, Path, str, Path]:
    """From //where's output: ``stat -f`` type, working directory, and the type and
    mount point of the mount that holds the working directory."""
    fs_name, cwd, *mountinfo = record.read_text().splitlines()
    mounts = []
    for line in mountinfo:
        fields = line.split()
        mounts.append((Path(fields[4].encode().decode("unicode_escape")),
                       fields[fields.index("-") + 1]))
    holding = [(point, kind) for point, kind in mounts if Path(cwd).is_relative_to(point)]
    point, kind = max(holding, key=lambda m: len(m[0].parts))
    return fs_name, Path(cwd), kind, point


def test_bazel_builds_the_same_through_sandboxfs(workdir):
    binary = bazel_or_skip()
    workspace = workdir / "ws"
    for name, text in BUILD_FILES.items():
        (workspace / name).parent.mkdir(parents=True, exist_ok=True)
        (workspace / name).write_text(text)
    sandbox_base = workdir / "sandbox-base"  # outside the output base (and the workspace)
    sandbox_base.mkdir()
    streams = workdir / "streams"
    wrapper = write_sandboxfs_wrapper(workdir / "sandboxfs-wrapper", streams, TRANSPORT)
    bazel = Bazel(binary, workspace, workdir / "bazel-root")
    own_sandbox = ["--spawn_strategy=linux-sandbox", f"--sandbox_base={sandbox_base}"]
    through_us = [*own_sandbox, "--experimental_use_sandboxfs",
                  f"--experimental_sandboxfs_path={wrapper}"]
    try:
        started = time.monotonic()
        bazel.clean()
        bazel.build(*own_sandbox)
        own_seconds = time.monotonic() - started
        expected = collect(bazel, workdir / "expected")
        fs_name, cwd, kind, _ = where_it_ran(expected / "where" / "where.txt")
        assert not fs_name.startswith("fuse") and not kind.startswith("fuse"), (fs_name, kind)
        assert cwd.is_relative_to(sandbox_base) and "linux-sandbox" in cwd.parts, cwd
        assert ServerStreams.all(streams) == []
        assert not sandbox_base.is_relative_to(bazel.output_base)

        # A new server: its first build must find the sandbox base as well (the
        # symlink this replaces did not survive that).
        bazel.shutdown()
        started = time.monotonic()
        bazel.clean()
        bazel.build(*through_us)
        sandboxfs_seconds = time.monotonic() - started
        assert mounts_below(sandbox_base) == [], "sandboxfs still mounted after the build"
        actual = collect(bazel, workdir / "actual")
        _, mismatch, errors = filecmp.cmpfiles(expected, actual, OUTPUTS, shallow=False)
        assert (mismatch, errors) == ([], []), f"outputs differ: {mismatch} {errors}"
        assert (actual / "cc" / "run.txt").read_text().endswith("has 6 lines\n")

        [server] = ServerStreams.all(streams)
        assert server.errors == [], server.errors
        assert len(server.created) == ACTIONS + 1, server.created  # "empty", then one per action
        assert set(server.destroyed) == set(server.created) - {"empty"}
        assert len(server.answers) == len(server.requests), "a request went unanswered"
        fs_name, cwd, kind, point = where_it_ran(actual / "where" / "where.txt")
        assert fs_name.startswith("fuse") and kind.startswith("fuse"), (fs_name, kind)
        assert point.is_relative_to(sandbox_base) and cwd.parent.name == "sandboxfs", (cwd, point)
        assert cwd.name in server.created, (cwd, server.created)

        clear_streams(streams)
        leaked = bazel.build(*through_us, targets=["//bad:undeclared"], check=False)
        assert leaked.returncode != 0 and "bad/secret.txt: No such file or directory" in leaked.stderr, \
            leaked.stderr[-3000:]
        [server] = ServerStreams.all(streams)
        assert len(server.created) == 2 and server.errors == []  # "empty" and the action
        bazel.build("--spawn_strategy=local", targets=["//bad:undeclared"])
        assert (bazel.info("bazel-bin") / "bad" / "leaked.txt").read_text() == "not an input\n"
        print(f"\nbazel {BAZEL_VERSION}, {TRANSPORT} transport: own sandbox {own_seconds:.1f}s, "
              f"through sandboxfs {sandboxfs_seconds:.1f}s (clean + build)")
    finally:
        bazel.shutdown()
        stop_leftovers(workdir)
    assert bazel.server_pid() is None
    assert mounts_below(workdir) == []
    assert stop_leftovers(workdir) == []
