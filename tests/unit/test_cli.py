"""Unit tests of sandboxfs.cli.main without a mount: exit codes and messages.

Exit status 2 is a usage error (argparse: a bad flag or value), 1 a runtime
error (a missing path, a mapping that cannot be applied), 0 success.  Every
case here fails before anything is mounted.  As a guard, mount points are
paths that do not exist, so even a regression cannot make these tests mount
and serve; the one case that needs an existing path runs in a subprocess
with a timeout.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sandboxfs import __version__
from sandboxfs.cli.main import main
from sandboxfs.errors import EXIT_RUNTIME, EXIT_USAGE


@pytest.fixture
def nowhere(tmp_path) -> Path:
    """A mount point path that does not exist."""
    return tmp_path / "no-such-mount-point"


def run_main(capsys, argv: list[str]) -> tuple[int, str, str]:
    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_exit_code_constants():
    assert (EXIT_RUNTIME, EXIT_USAGE) == (1, 2)


def test_version(capsys):
    assert run_main(capsys, ["--version"]) == (0, "sandboxfs 0.3.0\n", "")
    assert __version__ == "0.3.0"


def test_mount_help(capsys):
    status, out, _ = run_main(capsys, ["mount", "--help"])
    assert status == 0
    for flag in ("--mapping", "--allow", "--ttl", "--xattrs", "MOUNT_POINT"):
        assert flag in out


@pytest.mark.parametrize(
    "mapping, reason",
    [
        ("bad", "bad mapping bad: expected three colon-separated fields"),
        ("ro:/foo", "bad mapping ro:/foo: expected three colon-separated fields"),
        ("row:/foo:/bar", "bad mapping row:/foo:/bar: type was row but should be ro or rw"),
        ("ro:/foo:bar", "bad mapping ro:/foo:bar: underlying path 'bar' is not absolute"),
        ("ro:foo:/bar", "bad mapping ro:foo:/bar: path 'foo' is not absolute"),
    ],
)
def test_bad_mapping_is_a_usage_error(capsys, nowhere, mapping, reason):
    status, out, err = run_main(capsys, ["mount", "--mapping", mapping, str(nowhere)])
    assert status == 2
    assert f"argument --mapping: {reason}" in err
    assert out == ""


@pytest.mark.parametrize(
    "ttl, reason",
    [("-1", "'-1' is negative"), ("-0.5", "'-0.5' is negative"), ("abc", "'abc' is not a number of seconds")],
)
def test_bad_ttl_is_a_usage_error(capsys, nowhere, ttl, reason):
    status, _, err = run_main(capsys, ["mount", "--ttl", ttl, str(nowhere)])
    assert status == 2
    assert f"argument --ttl: {reason}" in err


@pytest.mark.parametrize("ttl", ["0", "2.5", "5s"])
def test_good_ttl_gets_past_parsing(capsys, nowhere, ttl):
    # Parsing succeeds, so the command fails later, on the missing mount point.
    status, _, err = run_main(capsys, ["mount", "--ttl", ttl, str(nowhere)])
    assert status == 1
    assert "ENOENT" in err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["mount", "--bogus", "MP"], "unrecognized arguments: --bogus"),
        (["--bogus"], "sandboxfs: error:"),
        ([], "invalid number of arguments"),  # the 0.2 command line's usage error
        (["no-such-command"], "invalid choice: 'no-such-command'"),
        (["mount"], "the following arguments are required: MOUNT_POINT"),
        (["mount", "--allow", "everyone", "MP"], "argument --allow: invalid choice: 'everyone'"),
        (["mount", "--log-level", "loud", "MP"], "argument --log-level: invalid choice: 'loud'"),
        (["mount", "--max-message-size", "10", "MP"], "'10' is below the minimum of 1024 bytes"),
        (["mount", "MP", "extra"], "unrecognized arguments: extra"),
    ],
    ids=["unknown-flag", "unknown-top-flag", "no-command", "unknown-command", "no-mount-point",
         "bad-allow", "bad-log-level", "small-message-size", "extra-argument"],
)
def test_usage_errors_exit_2(capsys, nowhere, argv, needle):
    argv = [str(nowhere) if a == "MP" else a for a in argv]
    status, _, err = run_main(capsys, argv)
    assert status == 2
    assert needle in err
    assert err.startswith("usage: sandboxfs")


def test_missing_mount_point(capsys, nowhere):
    status, out, err = run_main(capsys, ["mount", str(nowhere)])
    assert status == 1
    assert err == f"sandboxfs: mount point {nowhere}: ENOENT (No such file or directory)\n"
    assert out == ""
    assert not Path(f"{nowhere}.sock").exists()  # the control socket comes after the checks


def test_missing_mapping_target_names_the_underlying_path(capsys, tmp_path, nowhere):
    target = tmp_path / "no-such-target"
    status, _, err = run_main(
        capsys, ["mount", "--mapping", f"ro:/ok:{tmp_path}", "--mapping", f"rw:/x:{target}", str(nowhere)]
    )
    assert status == 1
    assert err == (
        f"sandboxfs: mount: mapping 1 (/x): underlying path {target} does not exist: "
        "ENOENT (No such file or directory)\n"
    )


def test_conflicting_mappings_are_a_runtime_error(capsys, tmp_path, nowhere):
    status, _, err = run_main(
        capsys, ["mount", "--mapping", f"ro:/a:{tmp_path}", "--mapping", f"rw:/a/:{tmp_path}", str(nowhere)]
    )
    assert status == 1
    assert err == "sandboxfs: mount: mapping 1 (/a): already mapped\n"


def test_nesting_below_file_mapping_is_a_runtime_error(capsys, tmp_path, nowhere):
    plain = tmp_path / "plain"
    plain.write_text("x")
    status, _, err = run_main(
        capsys, ["mount", "--mapping", f"ro:/f:{plain}", "--mapping", f"ro:/f/x:{tmp_path}", str(nowhere)]
    )
    assert status == 1
    assert err == f"sandboxfs: mount: mapping 1 (/f/x): cannot nest below {plain}: ENOTDIR (Not a directory)\n"


def run_module(*args: str) -> subprocess.CompletedProcess:
    """``python -m sandboxfs ARGS``; a hang (a mount that should not be) fails the test."""
    return subprocess.run(
        [sys.executable, "-m", "sandboxfs", *args], capture_output=True, text=True, timeout=60
    )


def test_module_entry_point_version():
    result = run_module("--version")
    assert (result.returncode, result.stdout) == (0, "sandboxfs 0.3.0\n")


def test_mount_point_that_is_a_file(tmp_path):
    plain = tmp_path / "plain"
    plain.write_text("x")
    try:
        result = run_module("mount", "--no-control", str(plain))
    finally:  # should a regression have mounted over the file, do not leave it behind
        if os.path.ismount(plain):
            subprocess.run(["fusermount3", "-u", "-z", str(plain)], check=False)
    assert result.returncode == 1
    assert f"sandboxfs: mount point {plain}: ENOTDIR (Not a directory)" in result.stderr
