"""Unit tests of sandboxfs.control.framing: bytes in, whole msgpack messages out.

Covers messages split at every byte boundary and many merged in one chunk,
the size limit (refused while feeding, before the whole message is buffered,
and applied per message rather than per chunk), undecodable bytes, and a
truncated message that simply waits for more bytes.

Pure: no trio, no sockets.
"""

from __future__ import annotations

import struct

import msgpack
import pytest

from sandboxfs.control.framing import MessageReader, encode
from sandboxfs.errors import ProtocolError, TooLargeError

MESSAGES = [
    {"id": 1, "op": "ping", "version": 1},
    {"id": 2, "op": "create_sandbox", "name": b"s\xff", "prefixes": {1: b"/a", 2: "/b"},
     "mappings": [[[1, b"x"], [2, b"x"], False], ["/c", "/d", True]]},
    {"id": "three", "op": "list"},
]


def stream_of(messages) -> bytes:
    return b"".join(encode(m) for m in messages)


def read_chunks(chunks, max_message_size: int = 1 << 20) -> list:
    """Feed ``chunks`` one by one, collecting every message as soon as it is whole."""
    reader = MessageReader(max_message_size)
    out = []
    for chunk in chunks:
        reader.feed(chunk)
        out.extend(reader.drain())
    return out


def bin32_header(length: int) -> bytes:
    """The start of a msgpack bin 32 value that announces ``length`` bytes."""
    return b"\xc6" + struct.pack(">I", length)


# -- splitting and merging -----------------------------------------------------------


def test_encode_round_trip_keeps_bytes_str_and_integer_keys():
    assert read_chunks([stream_of(MESSAGES)]) == MESSAGES


@pytest.mark.parametrize("split", range(1, len(stream_of(MESSAGES))))
def test_split_at_any_byte_boundary(split):
    data = stream_of(MESSAGES)
    assert read_chunks([data[:split], data[split:]]) == MESSAGES


def test_fed_one_byte_at_a_time():
    data = stream_of(MESSAGES)
    assert read_chunks([data[i:i + 1] for i in range(len(data))]) == MESSAGES


def test_many_messages_in_one_chunk():
    messages = [{"id": i, "op": "ping"} for i in range(1000)]
    assert read_chunks([stream_of(messages)]) == messages


def test_message_is_yielded_as_soon_as_it_is_whole():
    first, second = encode(MESSAGES[0]), encode(MESSAGES[1])
    reader = MessageReader()
    reader.feed(first + second[:3])
    assert reader.drain() == [MESSAGES[0]]
    reader.feed(second[3:])
    assert reader.drain() == [MESSAGES[1]]


def test_truncated_message_waits_without_error():
    data = encode(MESSAGES[1])
    reader = MessageReader()
    reader.feed(data[:-1])
    assert reader.drain() == []
    assert reader.drain() == []  # asking again changes nothing
    reader.feed(data[-1:])
    assert reader.drain() == [MESSAGES[1]]


# -- the size limit ------------------------------------------------------------------


def test_message_of_exactly_the_limit_is_accepted():
    message = {"blob": b"x" * 100}
    data = encode(message)
    assert read_chunks([data], max_message_size=len(data)) == [message]


def test_message_one_byte_over_the_limit_is_refused():
    data = encode({"blob": b"x" * 100})
    with pytest.raises(TooLargeError):
        read_chunks([data], max_message_size=len(data) - 1)


def test_too_large_is_refused_before_the_message_is_buffered():
    limit, chunk = 1000, 100
    reader = MessageReader(limit)
    reader.feed(bin32_header(100 * 1024 * 1024))  # announces 100 MiB
    fed = 0
    with pytest.raises(TooLargeError) as info:
        while fed < 10 * limit:
            reader.feed(b"x" * chunk)
            fed += chunk
            assert reader.drain() == []
    # Refused once the buffered bytes pass the limit, not after 100 MiB.
    assert limit - chunk <= fed <= limit + chunk
    assert info.value.code == "too_large"
    assert "1000" in str(info.value)


def test_message_of_many_small_values_counts_as_a_whole():
    """The limit is on the message, not on each string or array inside it."""
    limit, chunk = 1000, 100
    data = encode({"a": [[0] * 500] * 400})  # ~200 KB of small values
    reader = MessageReader(limit)
    fed = 0
    with pytest.raises(TooLargeError):
        while fed < len(data):
            reader.feed(data[fed:fed + chunk])
            fed += chunk
            assert reader.drain() == []
    assert fed <= limit + chunk


def test_array_with_more_elements_than_the_limit_is_too_large():
    with pytest.raises(TooLargeError):
        read_chunks([encode({"a": [0] * 2000})], max_message_size=1000)


def test_too_large_in_one_big_chunk():
    with pytest.raises(TooLargeError):
        read_chunks([bin32_header(5000) + b"x" * 5000], max_message_size=1000)


@pytest.mark.parametrize("layout", ["all in one chunk", "tail of one message with the next"])
def test_limit_applies_per_message_not_per_chunk(layout):
    """Each message is under the limit; how the peer's bytes are chunked must not matter."""
    messages = [{"id": i, "blob": b"x" * 60} for i in range(5)]
    size = len(encode(messages[0]))
    limit = size + 10
    data = stream_of(messages)
    if layout == "all in one chunk":
        chunks = [data]
    else:  # a read that ends one message and carries most of the next
        chunks = [data[: size - 1], data[size - 1: 2 * size - 1], data[2 * size - 1:]]
    assert read_chunks(chunks, max_message_size=limit) == messages


def test_limit_does_not_accumulate_over_messages():
    message = {"blob": b"x" * 80}
    data = encode(message)
    reader = MessageReader(len(data))
    for _ in range(100):
        reader.feed(data)
        assert reader.drain() == [message]


# -- undecodable bytes ---------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"\xc1", id="reserved byte 0xc1"),
        pytest.param(b"\xa2\xff\xfe", id="str that is not UTF-8"),
        pytest.param(b"\x81\x91\x01\x01", id="map with an array key"),
        pytest.param(b"\x81\x81\x01\x01\x01", id="map with a map key"),
    ],
)
def test_undecodable_bytes_are_a_framing_error(garbage):
    with pytest.raises(ProtocolError) as info:
        read_chunks([garbage])
    assert not isinstance(info.value, TooLargeError)
    assert info.value.code == "invalid_framing"


def test_encode_uses_bin_for_bytes_and_str_for_str():
    raw = msgpack.unpackb(encode({"b": b"\xff", "s": "x"}), raw=True)
    assert raw == {b"b": b"\xff", b"s": b"x"}
    assert encode(b"\xff")[0] == 0xC4  # bin 8
    assert encode("x")[0] == 0xA1  # fixstr
