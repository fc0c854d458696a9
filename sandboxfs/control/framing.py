"""Bytes to messages and back: a stream of self-delimiting msgpack values.

Each direction of a connection is a plain concatenation of msgpack maps; no
length prefix is needed because every msgpack value says where it ends.  A
``MessageReader`` turns arbitrary chunks (one message split over many reads,
or many messages in one read) into whole decoded values, and refuses a
message larger than ``max_message_size`` *before* buffering it all: the
unpacker's buffer is capped at that size, so a peer cannot make us hold more.

No trio, no sockets: the server and both clients use this.  Undecodable
bytes raise ``errors.ProtocolError``, an oversized message ``errors.TooLargeError``.
"""

from __future__ import annotations

from typing import Any

import msgpack

from sandboxfs.errors import ProtocolError, TooLargeError

DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024
NOTHING = object()  # ``next_message`` when no whole message has arrived yet


class MessageReader:
    """Feed bytes, drain complete messages.

    The size limit applies to one message, not to one read: received bytes
    wait in ``_raw`` and go to the unpacker in slices that never make its
    unconsumed buffer exceed the limit, so many small pipelined messages in
    one chunk are fine and one oversized message is refused as soon as the
    limit is reached.
    """

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.max_message_size = max_message_size
        self._unpacker = msgpack.Unpacker(
            raw=False,
            strict_map_key=False,  # prefix tables have integer keys
            max_buffer_size=max_message_size,
        )
        self._raw = bytearray()
        self._fed = 0  # bytes given to the unpacker so far
        # Where the message being decoded began.  Not ``tell()``: the unpacker
        # parses a partial message incrementally and tell() counts those bytes.
        self._start = 0
        self._error: ProtocolError | None = None
        self._ready: list[Any] = []  # drained, not yet taken by next_message

    @property
    def pending(self) -> int:
        """Bytes received that are not part of a decoded message yet."""
        return len(self._raw) + self._fed - self._start

    @property
    def failed(self) -> bool:
        """True once undecodable bytes were seen: the next drain() raises."""
        return self._error is not None

    def feed(self, data: bytes) -> None:
        self._raw += data

    def next_message(self) -> Any:
        """The next whole message received, or ``NOTHING`` (feed more bytes first)."""
        if not self._ready:
            self._ready.extend(self.drain())
        return self._ready.pop(0) if self._ready else NOTHING

    def drain(self) -> list[Any]:
        """Decode every complete message received so far, in order."""
        if self._error is not None:
            raise self._error
        messages: list[Any] = []
        try:
            self._drain_into(messages)
        except ProtocolError as exc:
            if not messages:
                raise
            self._error = exc  # answer the messages before it first
        return messages

    def _drain_into(self, messages: list[Any]) -> None:
        while True:
            self._decode_into(messages)
            if not self._raw:
                return
            room = self.max_message_size - (self._fed - self._start)
            if room <= 0:
                raise TooLargeError(
                    f"message larger than the limit of {self.max_message_size} bytes"
                )
            piece = bytes(self._raw[:room])
            del self._raw[:room]
            self._unpacker.feed(piece)
            self._fed += len(piece)

    def _decode_into(self, messages: list[Any]) -> None:
        while True:
            try:
                messages.append(self._unpacker.unpack())
                self._start = self._unpacker.tell()
            except msgpack.OutOfData:
                return
            except ValueError as exc:
                if "exceeds max" in str(exc):  # e.g. an array header claiming more than fits
                    raise TooLargeError(
                        f"message larger than the limit of {self.max_message_size} bytes ({exc})"
                    ) from None
                raise ProtocolError(f"undecodable msgpack ({type(exc).__name__}: {exc})") from None
            except (msgpack.ExtraData, TypeError, msgpack.UnpackException) as exc:
                raise ProtocolError(f"undecodable msgpack ({type(exc).__name__}: {exc})") from None


def encode(message: Any) -> bytes:
    """One message as bytes (bin for bytes, str for str; maps keep insertion order)."""
    return msgpack.packb(message, use_bin_type=True)
