"""Unit tests of sandboxfs.backend.wire: varint-delimited frames in, whole message bodies out.

Covers the varint encoding (checked against protobuf's own), frames split at
every byte and merged in one chunk, empty messages, the size limit (refused
from the length prefix alone, before the body), an over-long varint, a stream
that ends inside a prefix or a body, and good frames before a bad one.

Pure: no I/O.
"""

from __future__ import annotations

import pytest

from sandboxfs.backend.proto import sandbox_pb2
from sandboxfs.backend.wire import (
    MAX_VARINT_BYTES, DelimitedReader, decode_varint, encode, encode_varint,
)
from sandboxfs.errors import ProtocolError, TooLargeError

BODIES = [
    sandbox_pb2.Request(rid=1, negotiate=sandbox_pb2.Negotiate(options=["a"])).SerializeToString(),
    b"",  # a Request with every field at its default serializes to nothing
    sandbox_pb2.Request(rid=300, push=sandbox_pb2.Push(blobs={"d": b"x" * 200})).SerializeToString(),
]


def read_chunks(chunks, max_message_size: int = 1 << 20) -> list[bytes]:
    reader = DelimitedReader(max_message_size)
    out = []
    for chunk in chunks:
        out.extend(reader.feed(chunk))
    reader.finish()
    return out


# -- varints -------------------------------------------------------------------------


@pytest.mark.parametrize("value, encoded", [
    (0, b"\x00"), (1, b"\x01"), (127, b"\x7f"), (128, b"\x80\x01"), (300, b"\xac\x02"),
    (2**64 - 1, b"\xff" * 9 + b"\x01"),
])
def test_varints_encode_as_protobuf_writes_them(value, encoded):
    assert encode_varint(value) == encoded
    # protobuf's own encoder agrees: a uint64 field is its tag then the varint
    assert sandbox_pb2.Request(rid=value).SerializeToString() == (b"\x08" + encoded if value else b"")
    assert decode_varint(b"\xee" + encoded, 1) == (value, 1 + len(encoded))


@pytest.mark.parametrize("value", [-1, 2**64])
def test_out_of_range_varints_are_refused(value):
    with pytest.raises(ValueError, match="out of range"):
        encode_varint(value)


def test_an_incomplete_varint_asks_for_more():
    assert decode_varint(b"\x80\x80") is None
    assert decode_varint(b"") is None


def test_a_varint_longer_than_ten_bytes_is_refused():
    with pytest.raises(ValueError, match="longer than 10 bytes"):
        decode_varint(b"\x80" * MAX_VARINT_BYTES + b"\x01")


# -- frames --------------------------------------------------------------------------


def test_frames_round_trip_whole_and_merged():
    stream = b"".join(map(encode, BODIES))
    assert read_chunks([stream]) == BODIES
    parsed = sandbox_pb2.Request.FromString(read_chunks([stream])[2])
    assert parsed.rid == 300 and parsed.push.blobs["d"] == b"x" * 200


def test_frames_split_at_every_byte_come_out_whole():
    stream = b"".join(map(encode, BODIES))
    for cut in range(len(stream) + 1):
        assert read_chunks([stream[:cut], stream[cut:]]) == BODIES, cut
    assert read_chunks([stream[i:i + 1] for i in range(len(stream))]) == BODIES


def test_a_message_is_returned_as_soon_as_it_is_whole():
    reader = DelimitedReader()
    frame = encode(b"abc")
    assert reader.feed(frame[:-1]) == []
    assert reader.pending == len(frame) - 1
    assert reader.feed(frame[-1:] + frame[:1]) == [b"abc"]
    assert reader.pending == 1


def test_many_small_frames_in_one_chunk():
    bodies = [bytes([n % 256]) * (n % 7) for n in range(20_000)]
    assert read_chunks([b"".join(map(encode, bodies))]) == bodies


# -- limits and broken streams ---------------------------------------------------------


def test_an_oversized_message_is_refused_from_its_prefix_alone():
    reader = DelimitedReader(max_message_size=1000)
    with pytest.raises(TooLargeError, match="message of 1001 bytes .* over the limit of 1000 bytes"):
        reader.feed(encode_varint(1001))  # no body bytes sent, none buffered


def test_a_message_at_the_limit_is_accepted():
    assert read_chunks([encode(b"x" * 1000)], max_message_size=1000) == [b"x" * 1000]


def test_an_over_long_length_prefix_breaks_the_stream():
    reader = DelimitedReader()
    with pytest.raises(ProtocolError, match="longer than 10 bytes: not a varint-delimited"):
        reader.feed(b"\xff" * 11)


def test_a_stream_ending_inside_a_length_prefix_is_an_error():
    reader = DelimitedReader()
    assert reader.feed(encode(b"ok") + b"\x80") == [b"ok"]
    with pytest.raises(ProtocolError, match=r"inside a length prefix: 1 byte\(s\) 80 at stream offset 3"):
        reader.finish()


def test_a_stream_ending_inside_a_message_is_an_error():
    reader = DelimitedReader()
    assert reader.feed(encode_varint(10) + b"12345") == []
    with pytest.raises(ProtocolError, match="inside a message: 5 of its 10 bytes arrived"):
        reader.finish()


def test_a_stream_ending_between_frames_is_clean():
    reader = DelimitedReader()
    reader.feed(encode(b"a") + encode(b""))
    reader.finish()


def test_good_frames_before_a_bad_one_are_returned_then_the_error_stays():
    reader = DelimitedReader(max_message_size=10)
    assert reader.feed(encode(b"one") + encode(b"two") + encode_varint(11)) == [b"one", b"two"]
    with pytest.raises(TooLargeError, match="at stream offset 8"):
        reader.feed(b"")
    with pytest.raises(TooLargeError):  # a broken stream stays broken
        reader.feed(encode(b"three"))
    with pytest.raises(TooLargeError):
        reader.finish()
