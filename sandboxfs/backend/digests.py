"""Content digests as the sandbox-backend protocol spells them: SHA-256, lowercase hex.

The one place that says what a well-formed digest hash is and which hash
functions a manifest may name, so that the Merkle index and the content store
agree.  Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import re

from sandboxfs.errors import InvalidRequestError

HASH_LENGTH = 64  # hex digits of a SHA-256
_HASH = re.compile(r"[0-9a-f]{64}")
# What Manifest.hash_function may say for SHA-256; empty means the default, SHA-256.
_SHA256_NAMES = frozenset(("", "SHA-256", "SHA256", "sha256", "sha-256"))


def is_hash(text: object) -> bool:
    """True if ``text`` is a SHA-256 digest hash: 64 lowercase hex digits, nothing else."""
    return isinstance(text, str) and _HASH.fullmatch(text) is not None


_HASH_LIST = re.compile(r"[0-9a-f]{64}(?:,[0-9a-f]{64})*")


def all_hashes(texts: list[str]) -> bool:
    """True if every one of ``texts`` is a digest hash: one regex over them all (a Directory
    of 16,000 files is checked without a Python step per digest)."""
    return not texts or _HASH_LIST.fullmatch(",".join(texts)) is not None


def sha256_hex(data: bytes | bytearray | memoryview) -> str:
    """The digest hash of ``data``."""
    return hashlib.sha256(data).hexdigest()


def describe_hash(text: str) -> str:
    """Why ``text`` is not a digest hash (for messages), or '' if it is one."""
    if is_hash(text):
        return ""
    if len(text) != HASH_LENGTH:
        return f"{len(text)} characters, not {HASH_LENGTH} lowercase hex digits"
    return f"not {HASH_LENGTH} lowercase hex digits"


def require_sha256(hash_function: str) -> None:
    """Refuse a manifest whose digests are not SHA-256: nothing here can check them."""
    if hash_function not in _SHA256_NAMES:
        raise InvalidRequestError(
            f"hash function {hash_function!r} is not supported; only SHA-256 is"
        )
