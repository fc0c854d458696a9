"""Bytes to messages and back: a stream of self-delimiting msgpack values.

Each direction of a connection is a plain concatenation of msgpack maps; no
length prefix is needed because every msgpack value says where it ends.  A
``MessageReader`` turns arbitrary chunks (one message split over many reads,
or many messages in one read) into whole decoded values, and refuses a
message larger than ``max_message_size`` *before* buffering it all: the
unpacker's buffer is capped at that size, so a peer cannot make us hold more.

No trio, no sockets: the server and both clients use this.
"""

from __future__ import annotations

from typing import Any, Iterator

import msgpack

DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024


class FramingError(Exception):
    """The byte stream cannot be decoded any more: the connection must close."""

    code = "invalid_framing"


class MessageTooLarge(FramingError):
    code = "too_large"


class MessageReader:
    """Feed bytes, iterate complete messages."""

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.max_message_size = max_message_size
        self._unpacker = msgpack.Unpacker(
            raw=False,
            strict_map_key=False,  # prefix tables have integer keys
            max_buffer_size=max_message_size,
        )
        self.pending = 0  # bytes fed since the last whole message

    def feed(self, data: bytes) -> None:
        try:
            self._unpacker.feed(data)
        except msgpack.BufferFull:
            raise MessageTooLarge(
                f"message larger than the limit of {self.max_message_size} bytes"
            ) from None
        self.pending += len(data)

    def messages(self) -> Iterator[Any]:
        """Yield each complete message fed so far."""
        while True:
            try:
                message = self._unpacker.unpack()
            except msgpack.OutOfData:
                return
            except (msgpack.ExtraData, ValueError, msgpack.UnpackException) as exc:
                raise FramingError(f"undecodable msgpack ({type(exc).__name__}: {exc})") from None
            self.pending = 0
            yield message

    def drain(self) -> list[Any]:
        return list(self.messages())


def encode(message: Any) -> bytes:
    """One message as bytes (bin for bytes, str for str; maps keep insertion order)."""
    return msgpack.packb(message, use_bin_type=True)
