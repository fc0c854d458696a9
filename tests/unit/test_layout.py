"""The architecture's rules, checked: what each package may import, and the op table.

* The pure layers -- the tree, the control protocol and framing, the
  filesystem operations, the sandbox backend's foundation -- import neither
  pyfuse3 nor trio (in a fresh interpreter, so nothing imported earlier hides it).
* Every op of ``control.requests.OPS`` has its handler in the Reconfigurer
  and its method in both Python clients; nothing has a handler without an op.
"""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from sandboxfs.control.client import AsyncClient, Client
from sandboxfs.control.reconfig import Reconfigurer
from sandboxfs.control.requests import OPS

PURE = [
    "sandboxfs.tree.mapping", "sandboxfs.tree.nodes", "sandboxfs.tree.lookup",
    "sandboxfs.tree.groups", "sandboxfs.tree.existence", "sandboxfs.tree.build",
    "sandboxfs.tree.sandboxes", "sandboxfs.tree.host_entries",
    "sandboxfs.control.protocol", "sandboxfs.control.requests", "sandboxfs.control.framing",
    "sandboxfs.control.group_encoding",
    "sandboxfs.fs.interface", "sandboxfs.fs.operations", "sandboxfs.fs.inodes",
    "sandboxfs.fs.access", "sandboxfs.fs.host_io", "sandboxfs.fs.host_calls",
    "sandboxfs.fuse.kernel.wire", "sandboxfs.fuse.kernel.handlers",
    "sandboxfs.backend.digests", "sandboxfs.backend.wire", "sandboxfs.backend.merkle",
    "sandboxfs.backend.store", "sandboxfs.backend.proto.sandbox_pb2",
    "sandboxfs.backend.slots", "sandboxfs.backend.writable", "sandboxfs.tree.content",
]


@pytest.mark.parametrize("module", PURE)
def test_pure_layers_import_neither_pyfuse3_nor_trio(module):
    code = (f"import sys, {module}; "
            "print(sorted(m for m in ('trio', 'pyfuse3') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"{module} pulls in {out.stdout.strip()}"


def test_every_package_says_what_it_owns():
    import sandboxfs.backend
    import sandboxfs.backend.proto
    import sandboxfs.cli
    import sandboxfs.compat
    import sandboxfs.control
    import sandboxfs.fs
    import sandboxfs.fuse
    import sandboxfs.run
    import sandboxfs.tree

    for package in (sandboxfs.tree, sandboxfs.fs, sandboxfs.fuse, sandboxfs.control,
                    sandboxfs.compat, sandboxfs.run, sandboxfs.cli,
                    sandboxfs.backend, sandboxfs.backend.proto):
        assert package.__doc__ and len(package.__doc__.split()) > 10, package.__name__


@pytest.mark.parametrize("op", sorted(OPS))
def test_every_op_has_a_handler_and_client_methods(op):
    handler = getattr(Reconfigurer, op, None)
    assert inspect.iscoroutinefunction(handler), f"Reconfigurer.{op}"
    for client in (Client, AsyncClient):
        assert callable(getattr(client, op, None)), f"{client.__name__}.{op}"


def test_no_handler_without_an_op():
    handlers = {name for name, value in vars(Reconfigurer).items()
                if inspect.iscoroutinefunction(value) and not name.startswith("_")
                and name not in ("apply", "decode")}
    assert handlers == set(OPS)
