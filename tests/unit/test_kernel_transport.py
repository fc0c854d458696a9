"""Our kernel transport without a mount: the wire layouts, the handlers, and the loop.

The loop is served a fake kernel: a SOCK_SEQPACKET socket pair keeps message
boundaries as /dev/fuse does, so each ``send`` is one request and each
``recv`` one reply.  That lets these tests send what the real kernel never
would (short and malformed requests, unknown opcodes) and check that the loop
answers each and keeps serving.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct

import pytest
import trio

from sandboxfs.fs.operations import Operations
from sandboxfs.fuse.kernel import wire
from sandboxfs.fuse.kernel.handlers import Handlers
from sandboxfs.fuse.kernel.transport import KernelTransport
from sandboxfs.fs.interface import Context
from sandboxfs.tree.mapping import Mapping
from sandboxfs.tree.sandboxes import Tree

CTX = Context(0, 0, 1)


def test_struct_sizes_match_the_kernel_header():
    assert wire.IN_HEADER.size == 40 and wire.OUT_HEADER.size == 16
    assert wire.ATTR.size == 88
    assert wire.ENTRY_OUT.size == 128 and wire.ATTR_OUT.size == 104
    assert wire.INIT_OUT.size == 64 and wire.OPEN_OUT.size == 16
    assert wire.STATFS_OUT.size == 80 and wire.SETATTR_IN.size == 88
    assert wire.DIRENT.size == 24 and wire.BACKING_MAP.size == 16


def test_negative_entry_has_node_zero_and_the_entry_timeout():
    nodeid, _gen, entry_valid, attr_valid, entry_nsec, _ = struct.unpack_from(
        "=QQQQII", wire.entry_out(0, None, 2.5, 0.0))
    assert (nodeid, entry_valid, entry_nsec, attr_valid) == (0, 2, 500_000_000, 0)


def test_c_string_refuses_a_name_without_nul():
    assert wire.c_string(b"ab\0cd\0", 3) == (b"cd", 6)
    with pytest.raises(ValueError):
        wire.c_string(b"no terminator", 0)


@pytest.fixture
def host(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_bytes(b"hello")
    (tmp_path / "src" / "sub").mkdir()
    return tmp_path


@pytest.fixture
def handlers(host):
    tree = Tree([Mapping.of("/src", os.fsencode(host / "src"))])
    return Handlers(Operations(tree, ttl=5.0), None, None)


def _lookup(handlers: Handlers, parent: int, name: bytes) -> tuple[int, int]:
    out = handlers.lookup(parent, CTX, name + b"\0")
    nodeid = struct.unpack_from("=Q", out)[0]
    mode = wire.ATTR.unpack_from(out, 40)[9]
    return nodeid, mode


def test_lookup_reaches_a_mapped_file_with_our_inode_number(handlers):
    src, mode = _lookup(handlers, wire.ROOT_ID, b"src")
    assert src > 1 and stat.S_ISDIR(mode)
    ino, mode = _lookup(handlers, src, b"a.txt")
    assert stat.S_ISREG(mode)
    assert wire.ATTR.unpack_from(handlers.lookup(src, CTX, b"a.txt\0"), 40)[0] == ino
    assert _lookup(handlers, src, b"missing")[0] == 0  # a cached miss, not an error


def test_readdir_packs_entries_that_parse_back_and_stops_when_full(handlers):
    src, _ = _lookup(handlers, wire.ROOT_ID, b"src")
    fh = struct.unpack_from("=Q", handlers.opendir(src, CTX, b"\0" * 8))[0]
    out = handlers.readdir(src, CTX, wire.READ_IN.pack(fh, 0, 4096, 0) + bytes(16))
    names, at = [], 0
    while at < len(out):
        _ino, _off, namelen, kind = wire.DIRENT.unpack_from(out, at)
        names.append((out[at + 24:at + 24 + namelen], kind))
        at += wire.dirent_size(namelen, False)
    assert sorted(names) == [(b"a.txt", stat.S_IFREG >> 12), (b"sub", stat.S_IFDIR >> 12)]
    one = handlers.readdir(src, CTX, wire.READ_IN.pack(fh, 0, 40, 0) + bytes(16))
    assert len(one) == 32  # room for one entry only


def test_xattr_size_probe_and_erange(handlers, host):
    os.setxattr(host / "src" / "a.txt", "user.k", b"value")
    handlers.ops.xattrs = True
    src, _ = _lookup(handlers, wire.ROOT_ID, b"src")
    ino, _ = _lookup(handlers, src, b"a.txt")
    assert struct.unpack("=II", handlers.getxattr(ino, CTX, wire.GETXATTR_IN.pack(0, 0)
                                                  + b"user.k\0"))[0] == 5
    assert handlers.getxattr(ino, CTX, wire.GETXATTR_IN.pack(64, 0) + b"user.k\0") == b"value"
    with pytest.raises(OSError) as info:
        handlers.getxattr(ino, CTX, wire.GETXATTR_IN.pack(2, 0) + b"user.k\0")
    assert info.value.errno == errno.ERANGE


def test_writes_to_a_read_only_mapping_are_refused(handlers):
    src, _ = _lookup(handlers, wire.ROOT_ID, b"src")
    with pytest.raises(OSError) as info:
        handlers.mkdir(src, CTX, wire.MKDIR_IN.pack(0o755, 0o022) + b"new\0")
    assert info.value.errno == errno.EPERM


# -- the loop against a fake kernel ------------------------------------------------------


def _request(opcode: int, unique: int, nodeid: int = 1, args: bytes = b"") -> bytes:
    return wire.IN_HEADER.pack(40 + len(args), opcode, unique, nodeid, 0, 0, 1, 0) + args


def _reply(sock: socket.socket) -> tuple[int, int, bytes]:
    data = sock.recv(1 << 20)
    length, error, unique = wire.OUT_HEADER.unpack_from(data)
    assert length == len(data)
    return unique, error, data[16:]


async def test_the_loop_answers_bad_requests_and_keeps_serving(host):
    kernel, daemon = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    tree = Tree([Mapping.of("/src", os.fsencode(host / "src"))])
    transport = KernelTransport(Operations(tree), passthrough=False)
    transport.fd = daemon.fileno()
    os.set_blocking(transport.fd, False)
    init = wire.INIT_IN.pack(7, 45, 1 << 17, wire.ASYNC_READ | wire.INIT_EXT | wire.MAX_PAGES,
                             0) + bytes(44)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(transport.serve)
        kernel.setblocking(True)
        for request in (
            _request(wire.INIT, 1, args=init),
            _request(99, 2),                                     # unknown opcode
            _request(wire.LOOKUP, 3, args=b"src"),               # name without NUL
            _request(wire.SETATTR, 4, args=b"\0" * 8),           # too short for its struct
            b"\0" * 12,                                          # shorter than a header
            _request(wire.LOOKUP, 5, args=b"src\0"),
            _request(wire.FORGET, 6, nodeid=2, args=wire.FORGET_IN.pack(1)),  # no reply
            _request(wire.GETATTR, 7, nodeid=424242, args=bytes(16)),
        ):
            kernel.send(request)
        replies = {}
        with trio.fail_after(5):
            while len(replies) < 6:
                await trio.lowlevel.wait_readable(kernel)
                unique, error, body = _reply(kernel)
                replies[unique] = (error, body)
        nursery.cancel_scope.cancel()
    kernel.close()
    daemon.close()

    error, body = replies[1]
    major, minor, _, flags = struct.unpack_from("=IIII", body)
    assert (error, major, minor) == (0, 7, wire.KERNEL_MINOR)
    assert flags & wire.ASYNC_READ and not flags & wire.DO_READDIRPLUS  # only what was offered
    assert replies[2][0] == -errno.ENOSYS
    assert replies[3][0] == -errno.EINVAL
    assert replies[4][0] == -errno.EINVAL
    assert replies[5][0] == 0 and struct.unpack_from("=Q", replies[5][1])[0] > 1
    assert replies[7][0] == -errno.ESTALE
    assert 6 not in replies
    assert transport.counts()["unknown"] == 1
