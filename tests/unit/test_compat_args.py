"""Unit tests of the sandboxfs 0.2 front end without a mount (sandboxfs.compat).

Covered: the 0.2 command line through ``cli.main`` (messages, exit codes,
``--flag=value`` and ``--flag value``, ``--help``/``--version`` precedence, and
which argv go to the 0.2 front end at all); the JSON stream decoder (values
split across reads, whitespace, aliases, fatal errors); and the translation of
requests (prefixes, 0.2 path rules, recoverable error strings, host-backed
intermediate directories).  Every command line here fails or exits before
mounting: mount points are paths that do not exist.
"""

from __future__ import annotations

import json
import os

import pytest

from sandboxfs import __version__, compat
from sandboxfs.cli.main import main
from sandboxfs.compat import (
    CreateSandbox,
    DestroySandbox,
    JsonMapping,
    StreamDecoder,
    StreamError,
    Translator,
    decode_request,
    error_text,
    parse_args,
    response_line,
)
from sandboxfs.errors import AlreadyMappedError, MappingError
from sandboxfs.tree.mapping import Mapping


@pytest.fixture
def nowhere(tmp_path) -> str:
    return str(tmp_path / "no-such-mount-point")


def run(capsys, argv) -> tuple[int, str, str]:
    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# -- the command line -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--foo"], "Unrecognized option: 'foo'"),
        (["--foo=bar", "MP"], "Unrecognized option: 'foo'"),
        (["-x", "MP"], "Unrecognized option: 'x'"),
        (["--allow=self"], "invalid number of arguments"),
        (["--allow=self", "MP", "extra"], "invalid number of arguments"),
        (["--mapping", "ro:/foo", "MP"], "bad mapping ro:/foo: expected three colon-separated fields"),
        (["--mapping=ro:/a:/b:/c", "MP"], "bad mapping ro:/a:/b:/c: expected three colon-separated fields"),
        (["--mapping=rw:/:relative/path", "MP"],
         'bad mapping rw:/:relative/path: path "relative/path" is not absolute'),
        (["--mapping", "ro:foo:/bar", "MP"], 'bad mapping ro:foo:/bar: path "foo" is not absolute'),
        (["--mapping", "ro:/a/../b:/bar", "MP"], 'bad mapping ro:/a/../b:/bar: path "/a/../b" is not normalized'),
        (["--mapping=row:/foo:/bar", "MP"], "bad mapping row:/foo:/bar: type was row but should be ro or rw"),
        (["--allow", "everyone", "MP"], "everyone must be one of other, root, or self"),
        (["--reconfig_threads=abc", "MP"], "invalid thread count abc: invalid digit found in string"),
        (["--reconfig_threads", "-1", "MP"], "invalid thread count -1: invalid digit found in string"),
        (["--reconfig_threads=0", "MP"], "invalid thread count 0: must be at least 1"),
        (["--ttl=60", "MP"], "invalid time specification 60: missing unit"),
        (["--ttl", "5ms", "MP"], "invalid time specification 5ms: unsupported unit 'ms' (only 's' is allowed)"),
        (["--ttl=-5s", "MP"], "invalid time specification -5s: invalid digit found in string"),
        (["--input"], "Argument to option 'input' missing"),
        (["--xattrs=yes", "MP"], "Option 'xattrs' does not take an argument"),
        (["--ttl=1s", "--ttl=2s", "MP"], "Option 'ttl' given more than once"),
    ],
)
def test_usage_errors_exit_2_and_mention_help(capsys, nowhere, argv, message):
    argv = [nowhere if a == "MP" else a for a in argv]
    status, out, err = run(capsys, argv)
    assert status == 2
    assert out == ""
    assert message in err
    assert "--help" in err
    assert "Traceback" not in err


def test_no_arguments_is_02s_usage_error(capsys):
    status, out, err = run(capsys, [])
    assert (status, out) == (2, "")
    assert err == ("usage: sandboxfs [options] MOUNT_POINT\n"
                   "sandboxfs: error: invalid number of arguments\n"
                   "Type sandboxfs --help for more information\n")


@pytest.mark.parametrize("argv, message", [
    (["-hx", "MP"], "Unrecognized option: 'x'"),
    (["-h", "--help"], "Option 'help' given more than once"),
])
def test_h_is_help_in_getopts_rules(capsys, nowhere, argv, message):
    status, out, err = run(capsys, [nowhere if a == "MP" else a for a in argv])
    assert (status, out) == (2, "")
    assert message in err


def test_unknown_flag_wins_over_help(capsys):
    status, out, err = run(capsys, ["--help", "--invalid_flag"])
    assert status == 2 and out == ""
    assert "Unrecognized option: 'invalid_flag'" in err


@pytest.mark.parametrize("argv", [
    ["--help"],
    ["-h"],
    ["-h", "--allow=self", "mnt"],
    ["--help", "--version"],
    ["--version", "--help"],
    ["--help", "--allow=bad", "--mapping=xx:a:b", "a", "b"],  # help wins over bad values and arguments
])
def test_help_prints_usage_on_stdout(capsys, argv):
    status, out, err = run(capsys, argv)
    assert (status, err) == (0, "")
    assert out.startswith("Usage: sandboxfs [options] MOUNT_POINT\n")
    for flag in ("--allow", "--cpu_profile", "--input", "--mapping", "--node_cache", "--output",
                 "--reconfig_threads", "--ttl", "--version", "--xattrs"):
        assert flag in out


@pytest.mark.parametrize("argv", [
    ["--version"],
    ["--version", "--allow=self", "--mapping=ro:/:/tmp", "/no/such/mount/point"],
])
def test_version_wins_over_valid_arguments(capsys, argv):
    status, out, err = run(capsys, argv)
    assert (status, err) == (0, "")
    assert out.splitlines()[0] == f"sandboxfs {__version__}"
    major, minor, patch = map(int, __version__.split("."))
    assert (major, minor, patch) >= (0, 2, 0)


@pytest.mark.parametrize("equals", [True, False])
def test_both_flag_forms_parse_the_same(tmp_path, equals):
    values = {"allow": "other", "ttl": "5s", "input": str(tmp_path / "in"), "output": "-",
              "reconfig_threads": "3", "cpu_profile": str(tmp_path / "prof"),
              "mapping": "rw:/x:/tmp"}
    argv = []
    for name, value in values.items():
        argv += [f"--{name}={value}"] if equals else [f"--{name}", value]
    options = parse_args(argv + ["--xattrs", "--node_cache", "mnt"])
    assert options == compat.Options(
        mount_point="mnt", mappings=(Mapping((b"x",), b"/tmp", True),),
        mapping_texts=("rw:/x:/tmp",), allow="other", ttl=5.0, input=str(tmp_path / "in"),
        output="-", reconfig_threads=3, cpu_profile=str(tmp_path / "prof"), node_cache=True,
        xattrs=True,
    )


def test_defaults():
    options = parse_args(["mnt"])
    assert (options.allow, options.ttl, options.input, options.output) == ("self", 60.0, "-", "-")
    assert options.reconfig_threads == (os.cpu_count() or 1)
    assert options.mappings == () and not options.xattrs and not options.node_cache


def test_mappings_repeat_and_keep_their_order():
    options = parse_args(["--mapping", "ro:/:/a", "mnt", "--mapping=rw:/b/./c//:/d/"])
    assert options.mappings == (Mapping((), b"/a", False), Mapping((b"b", b"c"), b"/d", True))


def test_double_dash_ends_options():
    assert parse_args(["--", "--weird-mount-point"]).mount_point == "--weird-mount-point"


def test_missing_mount_point_is_a_runtime_error(capsys, nowhere):
    status, out, err = run(capsys, ["--allow=self", "--input", os.devnull, nowhere])
    assert status == 1 and out == ""
    assert f"sandboxfs: Failed to mount {nowhere}: mount point {nowhere}: ENOENT" in err


def test_missing_input_file_is_a_runtime_error(capsys, tmp_path, nowhere):
    missing = tmp_path / "non-existent" / "file"
    status, _, err = run(capsys, [f"--input={missing}", nowhere])
    assert status == 1
    assert f"Failed to open reconfiguration input '{missing}': No such file or directory" in err


def test_missing_output_file_is_a_runtime_error(capsys, tmp_path, nowhere):
    missing = tmp_path / "non-existent" / "file"
    status, _, err = run(capsys, ["--input", os.devnull, f"--output={missing}", nowhere])
    assert status == 1
    assert f"Failed to open reconfiguration output '{missing}': No such file or directory" in err


def test_conflicting_mappings_are_worded_as_02(capsys, tmp_path, nowhere):
    status, out, err = run(capsys, ["--input", os.devnull, f"--mapping=ro:/a/a:{tmp_path}",
                                    f"--mapping=rw:/a/a:{tmp_path}", nowhere])
    assert (status, out) == (1, "")
    assert err == f"sandboxfs: Cannot map '/a/a -> {tmp_path} (read/write)': Already mapped\n"


def test_missing_underlying_path_is_worded_as_02(capsys, tmp_path, nowhere):
    missing = tmp_path / "missing"
    status, _, err = run(capsys, ["--input", os.devnull, f"--mapping=ro:/a:{missing}", nowhere])
    assert status == 1
    assert err == (f"sandboxfs: Cannot map '/a -> {missing} (read-only)': underlying path "
                   f"{missing} does not exist: ENOENT (No such file or directory)\n")


def test_root_mapped_to_a_file_fails_to_map_root(capsys, tmp_path, nowhere):
    plain = tmp_path / "plain"
    plain.write_text("x")
    status, _, err = run(capsys, ["--input", os.devnull, f"--mapping=ro:/:{plain}", nowhere])
    assert status == 1
    assert err == f'sandboxfs: Failed to map root: "{plain}" is not a directory\n'


def test_root_mapped_to_nothing_fails_to_map_root_with_the_cause(capsys, tmp_path, nowhere):
    missing = tmp_path / "missing"
    status, _, err = run(capsys, ["--input", os.devnull, f"--mapping=rw:/:{missing}", nowhere])
    assert status == 1
    assert err == (f'sandboxfs: Failed to map root: stat failed for "{missing}": '
                   "No such file or directory (os error 2)\n")


@pytest.mark.parametrize("value", ["soon", "-1", "nan", "inf", ""])
def test_bad_unmount_timeout_is_a_runtime_error_naming_the_variable(capsys, monkeypatch, nowhere,
                                                                    value):
    monkeypatch.setenv("SANDBOXFS_UNMOUNT_TIMEOUT", value)
    status, out, err = run(capsys, ["--input", os.devnull, nowhere])
    assert (status, out) == (1, "")
    assert err == (f"sandboxfs: SANDBOXFS_UNMOUNT_TIMEOUT={value!r}: "
                   "not a number of seconds (0 or more)\n")


def test_root_mapping_after_another_is_a_runtime_error(capsys, tmp_path, nowhere):
    status, _, err = run(capsys, ["--input", os.devnull, f"--mapping=ro:/a:{tmp_path}",
                                  f"--mapping=ro:/:{tmp_path}", nowhere])
    assert status == 1
    assert "Root can be mapped at most once" in err


@pytest.mark.parametrize("argv, is_02", [
    ([], True),                            # 0.2's usage error
    (["mount", "x"], False),
    (["create", "sb"], False),
    (["-h"], True),
    (["no-such-command"], False),          # a lone word that is no directory: an unknown command
    (["--version"], True),
    (["--help"], True),
    (["--allow=self", "mnt"], True),
    (["/some/mount/point"], True),
    (["mnt", "--allow=self"], True),
])
def test_which_command_lines_are_02(tmp_path, argv, is_02):
    commands = {"mount", "create", "destroy", "map", "unmap", "list", "stats"}
    assert compat.is_02_command_line(argv, commands) is is_02


def test_an_existing_directory_alone_is_a_02_mount_point(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mnt").mkdir()
    assert compat.is_02_command_line(["mnt"], {"mount"})


# -- the JSON stream: bytes -> values ---------------------------------------------------------


def test_decoder_splits_values_across_reads_and_whitespace():
    text = b' {"D": "a"}\n\n{"C":\n {"i": "b",\n  "m": []}}{"D":"c"}\t '
    for size in (1, 2, 3, 7, len(text)):
        decoder = StreamDecoder()
        values = []
        for start in range(0, len(text), size):
            values += decoder.feed(text[start:start + size])
        values += decoder.finish()
        assert values == [{"D": "a"}, {"C": {"i": "b", "m": []}}, {"D": "c"}], size


def test_decoder_handles_brackets_and_escapes_inside_strings():
    decoder = StreamDecoder()
    value = {"D": 'a}]["\\\n{é'}
    raw = json.dumps(value, ensure_ascii=False).encode()
    assert decoder.feed(raw[:9]) == []
    assert decoder.feed(raw[9:]) == [value]


@pytest.mark.parametrize("raw, message", [
    (b'{"D": "a"} xyz', "Expecting value"),
    (b'{"D": tru}', "Expecting value"),
    (b'{"D" "a"}', "Expecting ':' delimiter"),
    (b'5', "invalid type: integer `5`"),
    (b'{"D": "\xff"}', "invalid UTF-8"),
])
def test_decoder_errors(raw, message):
    decoder = StreamDecoder()
    with pytest.raises(StreamError, match=message):
        decoder.feed(raw)
        decoder.finish()


def test_decoder_reports_a_value_cut_by_the_end_of_input():
    decoder = StreamDecoder()
    assert decoder.feed(b'{"D": "a"}\n{"C": {"i"') == [{"D": "a"}]
    with pytest.raises(StreamError, match="EOF while parsing a value at line 2"):
        decoder.finish()


# -- the JSON stream: values -> requests ------------------------------------------------------


def test_long_names_and_aliases_decode_the_same():
    long = {"CreateSandbox": {"id": "s", "mappings": [
        {"path": "a", "path_prefix": 1, "underlying_path": "b", "underlying_path_prefix": 2,
         "writable": True}], "prefixes": {"1": "/x", "2": "/y"}}}
    short = {"C": {"i": "s", "m": [{"p": "a", "x": 1, "u": "b", "y": 2, "w": True}],
                   "q": {"1": "/x", "2": "/y"}}}
    expected = CreateSandbox("s", (JsonMapping("a", "b", 1, 2, True),), (("1", "/x"), ("2", "/y")))
    assert decode_request(long) == decode_request(short) == expected
    assert decode_request({"DestroySandbox": "s"}) == decode_request({"D": "s"}) == DestroySandbox("s")


def test_defaults_of_a_request():
    assert decode_request({"C": {"i": "s"}}) == CreateSandbox("s")
    assert decode_request({"C": {"i": "s", "m": [{"p": "/a", "u": "/b"}]}}).mappings == (
        JsonMapping("/a", "/b", 0, 0, False),)


@pytest.mark.parametrize("value, message", [
    ([], "invalid type: sequence"),
    ({}, "exactly one key"),
    ({"C": {"i": "a"}, "D": "b"}, "exactly one key"),
    ({"Create": {"i": "a"}}, "unknown variant `Create`"),
    ({"C": {"m": []}}, "missing field `id`"),
    ({"C": {"i": 5}}, "invalid type: integer `5`"),
    ({"C": {"id": "a", "i": "a"}}, "duplicate field `id`"),
    ({"C": {"i": "a", "m": {}}}, "expected a sequence"),
    ({"C": {"i": "a", "m": [{"p": "/a"}]}}, "missing field `underlying_path`"),
    ({"C": {"i": "a", "m": [{"p": "/a", "u": "/b", "w": 1}]}}, "expected a boolean"),
    ({"C": {"i": "a", "m": [{"p": "/a", "u": "/b", "x": -1}]}}, "expected u32"),
    ({"C": {"i": "a", "q": {"1": 5}}}, "expected a string"),
    ({"D": 5}, "invalid type: integer `5`"),
    ({"D": "\ud800"}, "invalid unicode code point"),
])
def test_bad_requests_are_fatal(value, message):
    with pytest.raises(StreamError, match=message):
        decode_request(value)


def test_unknown_fields_are_ignored():
    assert decode_request({"C": {"i": "a", "extra": 1}}) == CreateSandbox("a")


def test_duplicate_keys_in_the_stream_are_duplicate_fields():
    [value] = StreamDecoder().feed(b'{"C": {"i": "a", "i": "b"}}')
    with pytest.raises(StreamError, match="duplicate field `id`"):
        decode_request(value)


# -- translation ------------------------------------------------------------------------------


def create(sandbox_id: str, *mappings: JsonMapping, prefixes=()) -> CreateSandbox:
    return CreateSandbox(sandbox_id, tuple(mappings), tuple(prefixes))


def test_prefixes_build_paths_and_persist_across_requests(tmp_path):
    translator = Translator()
    first = translator.translate(create(
        "a", JsonMapping("x", "y", 1, 2, True), prefixes=[("1", "/foo/bar"), ("2", str(tmp_path))]))
    assert first.error is None
    assert first.mappings == (Mapping((b"foo", b"bar", b"x"), os.fsencode(tmp_path / "y"), True),)
    second = translator.translate(create("b", JsonMapping("", "y", 3, 2), prefixes=[("3", "/")]))
    assert second.mappings == (Mapping((), os.fsencode(tmp_path / "y"), False),)
    assert second.name == b"b" and second.op == "create_sandbox"


@pytest.mark.parametrize("request_, error", [
    (create("a", JsonMapping("foo", "/x")), 'path "foo" is not absolute'),
    (create("a", JsonMapping("foo/../.", "/x")), 'path "foo/../." is not absolute'),
    (create("a", JsonMapping("/a/../b", "/x")), 'path "/a/../b" is not normalized'),
    (create("a", JsonMapping("/a", "x")), 'path "x" is not absolute'),
    (create("", JsonMapping("/a", "/x")), "Identifier cannot be empty"),
    (create("a/b"), "Identifier a/b is not a basename"),
    (DestroySandbox(""), "Identifier cannot be empty"),
    (create("a", JsonMapping("foo", "/x", 5)), "Prefix 5 does not exist"),
    (create("a", JsonMapping("/a", "x", 0, 5)), "Prefix 5 does not exist"),
    (create("a", JsonMapping("/abs", "/x", 1), prefixes=[("1", "/p")]), "Suffix /abs must be relative"),
    (create("a", prefixes=[("one", "/p")]), "Bad prefix number: invalid digit found in string"),
    (create("a", JsonMapping("/a", "/x"), JsonMapping("/", "/x")),
     "Cannot map '/ -> /x (read-only)': Root can be mapped at most once"),
])
def test_recoverable_errors_keep_the_id(request_, error):
    job = Translator().translate(request_)
    assert (job.id, job.error) == (request_.id, error)


def test_prefix_cannot_be_redefined():
    translator = Translator()
    assert translator.translate(create("a", prefixes=[("1", "/p")])).error is None
    assert translator.translate(create("b", prefixes=[("1", "/p/")])).error is None  # same path
    job = translator.translate(create("c", prefixes=[("1", "/q")]))
    assert job.error == "Prefix 1 already had path /p but got new /q"


def test_root_first_is_allowed():
    job = Translator().translate(create("a", JsonMapping("/", "/x"), JsonMapping("/b", "/y")))
    assert job.error is None


def test_intermediate_directories_show_the_host_directory(tmp_path):
    """0.2's rule that Bazel needs: an output directory holding an input stays writable."""
    scratch = tmp_path / "scratch"
    (scratch / "out" / "pkg").mkdir(parents=True)
    job = Translator().translate(create(
        "a",
        JsonMapping("/", str(scratch), writable=True),
        JsonMapping("/out/pkg/input.txt", "/src/input.txt"),
        JsonMapping("/out/pkg/other.txt", "/src/other.txt"),
        JsonMapping("/src/x/y.c", "/src/y.c"),  # no host directory: scaffolds
    ))
    added = job.mappings[4:]
    assert added == (
        Mapping((b"out",), os.fsencode(scratch / "out"), True),
        Mapping((b"out", b"pkg"), os.fsencode(scratch / "out" / "pkg"), True),
    )
    assert job.shown[4] == f"/out -> {scratch}/out (read/write)"


def test_error_text_words_tree_errors_as_02():
    shown = ["/a -> /x (read-only)", "/b -> /y (read/write)"]
    already = AlreadyMappedError("create_sandbox 'x': mapping 1 (/b): already mapped",
                                 details={"index": 1, "path": "/b", "reason": "already mapped"})
    assert error_text(already, shown) == "Cannot map '/b -> /y (read/write)': Already mapped"
    missing = MappingError("...", details={"index": 0, "reason": "underlying path /x does not exist"})
    assert error_text(missing, shown) == "Cannot map '/a -> /x (read-only)': underlying path /x does not exist"
    assert error_text(MappingError("plain"), shown) == "plain"


def test_response_lines():
    assert response_line("a", None) == b'{"id":"a","error":null}\n'
    assert response_line(None, "bad é") == '{"id":null,"error":"bad é"}\n'.encode()


def test_decoder_reports_a_mismatched_bracket_at_once():
    decoder = StreamDecoder()
    with pytest.raises(StreamError, match="Expecting value"):
        decoder.feed(b'{"C": {"i": "x", "m": [}\n')


def test_decoder_returns_the_values_before_an_error_first():
    decoder = StreamDecoder()
    assert decoder.feed(b'{"D": "a"} {"D": ]') == [{"D": "a"}]
    with pytest.raises(StreamError):
        decoder.raise_pending()
    with pytest.raises(StreamError):
        decoder.feed(b"")
