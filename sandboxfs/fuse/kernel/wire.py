"""The Linux FUSE wire format (protocol 7.x): opcodes, flags and the structs we read and write.

Taken from the kernel's ``include/uapi/linux/fuse.h`` (libfuse carries the
same file as ``fuse_kernel.h``).  Every struct is little-endian-native and
padded to 8 bytes, so ``struct`` formats with ``=`` describe them exactly.
Only what sandboxfs serves is here; anything else is answered ENOSYS.

Pure: no I/O, no trio.
"""

from __future__ import annotations

import os
import struct

KERNEL_MAJOR = 7
# The newest minor version whose structs we know (7.40 added passthrough).
KERNEL_MINOR = 40
ROOT_ID = 1

# -- opcodes ---------------------------------------------------------------------------
LOOKUP, FORGET, GETATTR, SETATTR, READLINK, SYMLINK = 1, 2, 3, 4, 5, 6
MKNOD, MKDIR, UNLINK, RMDIR, RENAME, LINK, OPEN, READ, WRITE = 8, 9, 10, 11, 12, 13, 14, 15, 16
STATFS, RELEASE, FSYNC, SETXATTR, GETXATTR, LISTXATTR, REMOVEXATTR, FLUSH = (
    17, 18, 20, 21, 22, 23, 24, 25)
INIT, OPENDIR, READDIR, RELEASEDIR, FSYNCDIR = 26, 27, 28, 29, 30
ACCESS, CREATE, INTERRUPT, DESTROY = 34, 35, 36, 38
BATCH_FORGET, READDIRPLUS, RENAME2 = 42, 44, 45

OPCODE_NAMES = {
    LOOKUP: "lookup", FORGET: "forget", GETATTR: "getattr", SETATTR: "setattr",
    READLINK: "readlink", SYMLINK: "symlink", MKNOD: "mknod", MKDIR: "mkdir",
    UNLINK: "unlink", RMDIR: "rmdir", RENAME: "rename", LINK: "link", OPEN: "open",
    READ: "read", WRITE: "write", STATFS: "statfs", RELEASE: "release", FSYNC: "fsync",
    SETXATTR: "setxattr", GETXATTR: "getxattr", LISTXATTR: "listxattr",
    REMOVEXATTR: "removexattr", FLUSH: "flush", INIT: "init", OPENDIR: "opendir",
    READDIR: "readdir", RELEASEDIR: "releasedir", FSYNCDIR: "fsyncdir", ACCESS: "access",
    CREATE: "create", INTERRUPT: "interrupt", DESTROY: "destroy",
    BATCH_FORGET: "batch_forget", READDIRPLUS: "readdirplus", RENAME2: "rename2",
    # Not served (answered ENOSYS, after which the kernel mostly stops asking), named so
    # that `stats` says which ones came.
    31: "getlk", 32: "setlk", 33: "setlkw", 37: "bmap", 39: "ioctl", 40: "poll",
    43: "fallocate", 46: "lseek", 47: "copy_file_range", 50: "syncfs", 51: "tmpfile",
    52: "statx",
}

# -- INIT flags (flags | flags2 << 32) -------------------------------------------------
ASYNC_READ = 1 << 0
ATOMIC_O_TRUNC = 1 << 3
BIG_WRITES = 1 << 5
AUTO_INVAL_DATA = 1 << 12
DO_READDIRPLUS = 1 << 13
READDIRPLUS_AUTO = 1 << 14
ASYNC_DIO = 1 << 15
PARALLEL_DIROPS = 1 << 18
HANDLE_KILLPRIV = 1 << 19
MAX_PAGES = 1 << 22
INIT_EXT = 1 << 30
PASSTHROUGH = 1 << 37

# -- OPEN reply flags ------------------------------------------------------------------
FOPEN_DIRECT_IO = 1 << 0
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_CACHE_DIR = 1 << 3
FOPEN_PASSTHROUGH = 1 << 7

# -- SETATTR valid bits ----------------------------------------------------------------
FATTR_MODE, FATTR_UID, FATTR_GID, FATTR_SIZE = 1, 2, 4, 8
FATTR_ATIME, FATTR_MTIME, FATTR_FH, FATTR_ATIME_NOW, FATTR_MTIME_NOW = 16, 32, 64, 128, 256

GETATTR_FH = 1
FSYNC_FDATASYNC = 1

# -- notifications (sent with unique 0 and the code in the error field) ----------------
NOTIFY_INVAL_INODE = 2
NOTIFY_INVAL_ENTRY = 3

# -- device ioctls ---------------------------------------------------------------------
DEV_IOC_BACKING_OPEN = 0x4010E501   # _IOW(229, 1, struct fuse_backing_map)
DEV_IOC_BACKING_CLOSE = 0x4004E502  # _IOW(229, 2, uint32_t)
BACKING_MAP = struct.Struct("=iIQ")  # fd, flags, padding

# -- structs ---------------------------------------------------------------------------
IN_HEADER = struct.Struct("=IIQQIIII")   # len, opcode, unique, nodeid, uid, gid, pid, padding
OUT_HEADER = struct.Struct("=IiQ")       # len, error, unique
IN_HEADER_SIZE = IN_HEADER.size          # 40
OUT_HEADER_SIZE = OUT_HEADER.size        # 16

INIT_IN = struct.Struct("=IIIII")        # major, minor, max_readahead, flags, flags2 (+ unused)
# major, minor, max_readahead, flags, max_background, congestion_threshold, max_write,
# time_gran, max_pages, map_alignment, flags2, max_stack_depth, unused[6]
INIT_OUT = struct.Struct("=IIIIHHIIHHII24x")

# ino size blocks atime mtime ctime atimensec mtimensec ctimensec mode nlink uid gid rdev
# blksize flags
ATTR = struct.Struct("=QQQQQQIIIIIIIIII")
ENTRY_OUT = struct.Struct("=QQQQII" + ATTR.format[1:])  # nodeid generation entry_valid attr_valid
ATTR_OUT = struct.Struct("=QII" + ATTR.format[1:])      # attr_valid attr_valid_nsec dummy
OPEN_OUT = struct.Struct("=QIi")          # fh, open_flags, backing_id
WRITE_OUT = struct.Struct("=II")          # size, padding
XATTR_SIZE_OUT = struct.Struct("=II")     # size, padding
# blocks bfree bavail files ffree bsize namelen frsize padding spare[6]
STATFS_OUT = struct.Struct("=QQQQQIIII24x")
DIRENT = struct.Struct("=QQII")           # ino, off, namelen, type

FORGET_IN = struct.Struct("=Q")
FORGET_ONE = struct.Struct("=QQ")
BATCH_FORGET_IN = struct.Struct("=II")
GETATTR_IN = struct.Struct("=IIQ")        # getattr_flags, dummy, fh
# valid padding fh size lock_owner atime mtime ctime atimensec mtimensec ctimensec mode
# unused4 uid gid unused5
SETATTR_IN = struct.Struct("=IIQQQQQQIIIIIIII")
MKNOD_IN = struct.Struct("=IIII")         # mode, rdev, umask, padding
MKDIR_IN = struct.Struct("=II")           # mode, umask
RENAME_IN = struct.Struct("=Q")           # newdir
RENAME2_IN = struct.Struct("=QII")        # newdir, flags, padding
LINK_IN = struct.Struct("=Q")             # oldnodeid
OPEN_IN = struct.Struct("=II")            # flags, open_flags
CREATE_IN = struct.Struct("=IIII")        # flags, mode, umask, open_flags
READ_IN = struct.Struct("=QQII")          # fh, offset, size, read_flags (+ lock_owner, flags)
WRITE_IN = struct.Struct("=QQII")         # fh, offset, size, write_flags (+ lock_owner, flags)
WRITE_IN_SIZE = 40
RELEASE_IN = struct.Struct("=Q")          # fh (+ flags, release_flags, lock_owner)
FSYNC_IN = struct.Struct("=QI")           # fh, fsync_flags
SETXATTR_IN = struct.Struct("=II")        # size, flags (without FUSE_SETXATTR_EXT)
GETXATTR_IN = struct.Struct("=II")        # size, padding
INTERRUPT_IN = struct.Struct("=Q")        # unique

MIN_READ_BUFFER = 8192
_EMPTY_ATTR = b"\0" * ATTR.size


def pack_attr_fields(ino: int, st: os.stat_result) -> tuple:
    """The ``fuse_attr`` fields of a stat result, with our inode number."""
    atime, mtime, ctime = st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns
    return (ino, st.st_size, st.st_blocks, atime // 1_000_000_000, mtime // 1_000_000_000,
            ctime // 1_000_000_000, atime % 1_000_000_000, mtime % 1_000_000_000,
            ctime % 1_000_000_000, st.st_mode, st.st_nlink, st.st_uid, st.st_gid,
            st.st_rdev & 0xFFFFFFFF, st.st_blksize, 0)


def split_timeout(seconds: float) -> tuple[int, int]:
    """A timeout as the kernel's (seconds, nanoseconds) pair."""
    if seconds <= 0:
        return 0, 0
    whole = int(seconds)
    return whole, int((seconds - whole) * 1e9)


def entry_out(ino: int, st: os.stat_result | None, entry_timeout: float,
              attr_timeout: float) -> bytes:
    """A ``fuse_entry_out``; ``ino`` 0 is a negative entry cached for ``entry_timeout``."""
    es, ens = split_timeout(entry_timeout)
    if st is None:
        return ENTRY_OUT.pack(0, 0, es, 0, ens, 0, *ATTR.unpack(_EMPTY_ATTR))
    as_, ans = split_timeout(attr_timeout)
    return ENTRY_OUT.pack(ino, 0, es, as_, ens, ans, *pack_attr_fields(ino, st))


def attr_out(ino: int, st: os.stat_result, attr_timeout: float) -> bytes:
    as_, ans = split_timeout(attr_timeout)
    return ATTR_OUT.pack(as_, ans, 0, *pack_attr_fields(ino, st))


def dirent_size(name_length: int, plus: bool) -> int:
    """Bytes one (plus) directory entry takes, padded to 8."""
    size = (ENTRY_OUT.size if plus else 0) + DIRENT.size + name_length
    return (size + 7) & ~7


def c_string(data: bytes, start: int) -> tuple[bytes, int]:
    """The NUL-terminated string at ``start`` and the offset after its NUL.

    Raises ValueError when no NUL follows: a malformed request.
    """
    end = data.index(b"\0", start)
    return data[start:end], end + 1
