"""Bytes to messages and back for Bazel's sandbox-backend stream: varint-delimited protobuf.

Each direction of the stdin/stdout pipe is a concatenation of frames, each a
message's length as a base-128 varint (protobuf's ``writeDelimitedTo`` form)
followed by that many bytes.  ``DelimitedReader`` turns arbitrary chunks into
whole message bodies: a frame split over many reads, or many frames in one
read.  It refuses a frame larger than ``max_message_size`` as soon as its
length prefix is read, before buffering the body, so a peer cannot make us
hold more than the limit; and ``finish`` says when the stream ended inside a
frame, rather than dropping the partial message silently.

What a body means (parsing it as a ``Request``) is the next layer's job: this
module never imports the generated code.  Pure: no I/O, no trio.
Broken framing raises ``errors.ProtocolError`` (the peer's fault: the stream
must close), an oversized frame ``errors.TooLargeError``.
"""

from __future__ import annotations

from sandboxfs.errors import ProtocolError, TooLargeError

# A Push batches many actions' directory blobs and inline contents; 256 MiB
# leaves room for that and stays far below protobuf's 2 GiB message limit.
DEFAULT_MAX_MESSAGE_SIZE = 256 * 1024 * 1024
MAX_VARINT_BYTES = 10  # 64 bits at 7 per byte


def encode_varint(value: int) -> bytes:
    """``value`` (0 <= value < 2**64) as a base-128 varint, least significant group first."""
    if not 0 <= value < 1 << 64:
        raise ValueError(f"varint out of range: {value}")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode(body: bytes) -> bytes:
    """One frame: the length of ``body`` as a varint, then ``body`` (a serialized message)."""
    return encode_varint(len(body)) + body


def decode_varint(data: bytes | bytearray, offset: int = 0) -> tuple[int, int] | None:
    """The varint at ``data[offset:]`` and the offset after it; None if it is not complete yet.

    Raises ValueError if it runs over ``MAX_VARINT_BYTES`` bytes: no 64-bit
    value needs more.
    """
    value = 0
    for index in range(MAX_VARINT_BYTES):
        if offset + index >= len(data):
            return None
        byte = data[offset + index]
        value |= (byte & 0x7F) << (7 * index)
        if byte < 0x80:
            return value, offset + index + 1
    raise ValueError(f"varint longer than {MAX_VARINT_BYTES} bytes")


class DelimitedReader:
    """Feed bytes, take whole message bodies.

    ``feed`` returns the bodies completed by the new bytes, in order.  When a
    chunk holds good frames and then a broken one, the good ones are returned
    first and the error is raised by the next ``feed`` or by ``finish``, so
    requests that arrived intact are still answered before the stream closes.
    A reader that raised keeps raising the same error.
    """

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.max_message_size = max_message_size
        self._buffer = bytearray()
        self._body_size: int | None = None  # set once a frame's length prefix is read
        self._consumed = 0  # stream offset of _buffer[0]
        self._frame_start = 0  # stream offset of the frame not yet returned
        self._error: ProtocolError | None = None

    @property
    def pending(self) -> int:
        """Bytes received that are not part of a returned message yet."""
        return self._consumed + len(self._buffer) - self._frame_start

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return every message body it completes."""
        if self._error is not None:
            raise self._error
        self._buffer += data
        bodies: list[bytes] = []
        try:
            self._take_frames(bodies)
        except ProtocolError as exc:
            self._error = exc
            if not bodies:
                raise
        return bodies

    def finish(self) -> None:
        """The stream has ended: raise ProtocolError if it ended inside a frame."""
        if self._error is not None:
            raise self._error
        if self._body_size is not None:
            self._error = ProtocolError(
                f"stream ended inside a message: {len(self._buffer)} of its "
                f"{self._body_size} bytes arrived (its frame began at stream offset "
                f"{self._frame_start})"
            )
        elif self._buffer:
            self._error = ProtocolError(
                f"stream ended inside a length prefix: {len(self._buffer)} byte(s) "
                f"{bytes(self._buffer).hex()} at stream offset {self._consumed}"
            )
        if self._error is not None:
            raise self._error

    def _take_frames(self, bodies: list[bytes]) -> None:
        buffer, position = self._buffer, 0
        try:
            while True:
                if self._body_size is None:
                    try:
                        prefix = decode_varint(buffer, position)
                    except ValueError:
                        raise ProtocolError(
                            f"length prefix at stream offset {self._consumed + position} is "
                            f"longer than {MAX_VARINT_BYTES} bytes: not a varint-delimited stream"
                        ) from None
                    if prefix is None:
                        return
                    size, body_start = prefix
                    if size > self.max_message_size:
                        raise TooLargeError(
                            f"message of {size} bytes at stream offset "
                            f"{self._consumed + position} is over the limit of "
                            f"{self.max_message_size} bytes"
                        )
                    self._body_size, position = size, body_start
                end = position + self._body_size
                if end > len(buffer):
                    return
                bodies.append(bytes(buffer[position:end]))
                self._body_size, position = None, end
                self._frame_start = self._consumed + end
        finally:
            # One deletion per feed, not one per frame: many small frames in a
            # big chunk stay linear.
            del buffer[:position]
            self._consumed += position
