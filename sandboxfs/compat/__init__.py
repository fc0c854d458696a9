"""The sandboxfs 0.2 front end: its command line and JSON reconfiguration stream, on our engine.

Build tools written for sandboxfs 0.2 (Bazel's ``--experimental_use_sandboxfs``
among them) start ``sandboxfs [flags] MOUNT_POINT`` and write JSON requests on
its stdin.  This package only translates: the 0.2 flags become a
``mount.MountConfig`` (no control socket), and each JSON request becomes a
request object of ``control.requests`` applied through ``Reconfigurer.apply`` -- the engine of
the msgpack socket, not a second filesystem.  docs/compat.md is the reference.

Modules, each testable on its own:

* ``args``: the 0.2 argv rules (getopts) and their messages -> ``Options``;
* ``paths``: the 0.2 path rules -> ``mapping.Mapping``;
* ``jsondecode``: bytes -> JSON values, incrementally, and a JSON value ->
  ``CreateSandbox``/``DestroySandbox`` (all pure);
* ``translate``: the prefix table of one input stream, 0.2 mapping rules, and
  the host directories behind intermediate directories (``lstat`` only);
* ``service``: the trio service -- read, translate, apply with N workers, answer;
* ``main``: start-up, 0.2's shutdown (``MountConfig.unmount_timeout``) and exit
  codes; ``common``: what they all share.

Must not touch: the tree (only ``Reconfigurer.apply``, after ``main`` set the
one 0.2 rule the engine cannot infer, ``Tree.file_tops``), pyfuse3
(``mount.run`` does), and stdout/stderr except through ``main`` and logging.
"""

from sandboxfs.compat.args import Options, is_02_command_line, parse_args
from sandboxfs.compat.jsondecode import CreateSandbox, DestroySandbox, JsonMapping, StreamDecoder, StreamError, decode_request
from sandboxfs.compat.main import main
from sandboxfs.compat.translate import Translator, error_text, response_line

__all__ = [
    "CreateSandbox", "DestroySandbox", "JsonMapping", "Options", "StreamDecoder", "StreamError",
    "Translator", "decode_request", "error_text", "is_02_command_line", "main", "parse_args",
    "response_line",
]
