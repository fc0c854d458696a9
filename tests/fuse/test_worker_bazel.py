"""Bazel 2.1 builds through BuildGrid with ``sandboxfs worker`` as the only bots.

A module engine (PostgreSQL + BuildGrid) and two workers (concurrency 2 each).
The workspace, written here, holds text genrules (tr/sort/cat, one consuming
another's output, several sleeping 0.5 s so they overlap) and genrules that
compile, link and run a small C program with gcc.  It is built from clean
twice with separate output bases: locally, then with ``--remote_executor``;
the outputs must be equal byte for byte, the workers' logs must show the
leases (about one per action, both workers taking some).  A genrule reading
a workspace file it did not declare fails remotely and succeeds locally.
"""

from __future__ import annotations

import filecmp
import re
import shutil
import time

import pytest

from bench.bazel_tool import Bazel, BazelUnavailable, bazel_binary, mounts_below, stop_leftovers
from tests.engine import BuildGrid, EngineUnavailable, PostgreSQL

from .test_bazel import BUILD_FILES as LOCAL_FILES
from .worker_harness import WorkerProcess, mounted

pytestmark = pytest.mark.fuse

SLEEP = "sleep 0.5 && "
FILES = {
    "WORKSPACE": "",
    "text/BUILD": "\n".join(
        [f'genrule(name = "up{i}", srcs = ["words{i}.txt"], outs = ["up{i}.txt"],\n'
         f'        cmd = "{SLEEP}tr a-z A-Z < $< > $@")' for i in range(4)]
        + ['genrule(name = "sorted", srcs = [":up0", ":up1", ":up2", ":up3"], '
           'outs = ["sorted.txt"], visibility = ["//visibility:public"],\n'
           '        cmd = "cat $(SRCS) | sort > $@")',
           'genrule(name = "rev", srcs = [":sorted"], outs = ["rev.txt"],\n'
           '        cmd = "sort -r $< > $@")', ""]),
    **{f"text/words{i}.txt": "".join(f"w{i}{c}\n" for c in "dacb") for i in range(4)},
    "text/secret.txt": "not an input\n",
    "cc/BUILD": """\
genrule(name = "lib_o", srcs = ["lib.c", "lib.h"], outs = ["lib.o"],
        cmd = "sleep 0.5 && gcc -c -I$$(dirname $(location lib.h)) -o $@ $(location lib.c)")
genrule(name = "main_o", srcs = ["main.c", "lib.h"], outs = ["main.o"],
        cmd = "sleep 0.5 && gcc -c -I$$(dirname $(location lib.h)) -o $@ $(location main.c)")
genrule(name = "prog", srcs = [":lib_o", ":main_o"], outs = ["prog"],
        cmd = "gcc -o $@ $(SRCS)")
genrule(name = "run", srcs = [":prog", "//text:sorted"], outs = ["run.txt"],
        cmd = "./$(location :prog) $(location //text:sorted) > $@")
""",
    # The C sources are the local Bazel test's.
    **{name: LOCAL_FILES[name] for name in ("cc/lib.h", "cc/lib.c", "cc/main.c")},
    "bad/BUILD": """\
genrule(name = "undeclared", outs = ["leaked.txt"], tags = ["manual"],
        cmd = "cat text/secret.txt > $@")
""",
}
OUTPUTS = [f"text/up{i}.txt" for i in range(4)] + [
    "text/sorted.txt", "text/rev.txt", "cc/lib.o", "cc/main.o", "cc/prog", "cc/run.txt"]
ACTIONS = len(OUTPUTS)
LOCAL = ["--spawn_strategy=local", "--genrule_strategy=local", "--symlink_prefix=/"]
TARGETS = ["//text/...", "//cc/..."]  # never //...: a convenience symlink would be a package


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    try:
        binary = bazel_binary()
    except BazelUnavailable as exc:
        pytest.skip(str(exc))
    base = tmp_path_factory.mktemp("wb")
    try:
        with PostgreSQL() as pg, BuildGrid(pg, base / "engine", keepalive_timeout=30,
                                           expiry_interval=1) as engine:
            workers = [WorkerProcess(engine.endpoint, base / f"state{i}", name=f"bot{i}",
                                     concurrency=2) for i in range(2)]
            try:
                for worker in workers:
                    worker.start()
                yield binary, engine, workers, base
            finally:
                for worker in workers:
                    worker.close()
                for worker in workers:
                    assert not mounted(worker.mount_point), worker.log_text()
    except EngineUnavailable as exc:
        pytest.fail(f"BuildGrid could not be started: {exc}")


def _remote(engine: BuildGrid) -> list[str]:
    return [f"--remote_executor={engine.endpoint}", "--spawn_strategy=remote",
            "--genrule_strategy=remote", "--remote_local_fallback=false",
            "--noremote_accept_cached", "--incompatible_strict_action_env",
            "--action_env=PATH=/usr/bin:/bin", "--symlink_prefix=/"]


def _leases(workers: list[WorkerProcess]) -> list[int]:
    return [len(re.findall(r": lease \S+ done", w.log_text())) for w in workers]


def test_bazel_builds_the_same_through_the_workers(grid):
    binary, engine, workers, base = grid
    workspace = base / "ws"
    for name, text in FILES.items():
        (workspace / name).parent.mkdir(parents=True, exist_ok=True)
        (workspace / name).write_text(text)
    local = Bazel(binary, workspace, base / "root-local")
    remote = Bazel(binary, workspace, base / "root-remote")
    try:
        started = time.monotonic()
        local.build(*LOCAL, targets=TARGETS)
        local_s = time.monotonic() - started
        before = _leases(workers)
        started = time.monotonic()
        result = remote.build(*_remote(engine), targets=TARGETS)
        remote_s = time.monotonic() - started
        after = _leases(workers)
        taken = [a - b for a, b in zip(after, before)]
        for side, bazel in (("local", local), ("remote", remote)):
            bin_dir = bazel.info("bazel-bin")
            for output in OUTPUTS:
                (base / side / output).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(bin_dir / output, base / side / output)
        _, mismatch, errors = filecmp.cmpfiles(base / "local", base / "remote", OUTPUTS,
                                               shallow=False)
        assert (mismatch, errors) == ([], []), f"outputs differ: {mismatch} {errors}"
        assert (base / "remote" / "cc" / "run.txt").read_text().endswith("has 16 lines\n")
        assert ACTIONS <= sum(taken) <= ACTIONS + 2, (taken, result.stderr[-3000:])
        assert all(n >= 1 for n in taken), taken
        assert re.search(rf"{ACTIONS} remote", result.stderr), result.stderr[-3000:]

        leaked = remote.build(*_remote(engine), targets=["//bad:undeclared", "//text:sorted"],
                              check=False)
        assert leaked.returncode != 0, leaked.stderr[-3000:]
        assert "text/secret.txt: No such file or directory" in leaked.stderr, \
            leaked.stderr[-3000:]
        # With //text loaded too, the execroot links text/ (it links only loaded packages' roots).
        local.build(*LOCAL, targets=["//bad:undeclared", "//text:sorted"])
        assert (local.info("bazel-bin") / "bad" / "leaked.txt").read_text() == "not an input\n"
        print(f"\nlocal {local_s:.1f}s, remote {remote_s:.1f}s, leases per worker {taken}")
    finally:
        local.shutdown()
        remote.shutdown()
        left = stop_leftovers(base / "root-local") + stop_leftovers(base / "root-remote")
    assert local.server_pid() is None and remote.server_pid() is None
    assert left == []
    assert mounts_below(base / "root-remote") == [] and mounts_below(base / "root-local") == []
