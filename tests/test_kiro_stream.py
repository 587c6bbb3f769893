"""The AWS event stream decoder (login/providers/kiro_stream.py) against frames built byte by
byte here, independently of the fake's encoder."""

from __future__ import annotations

import struct
import uuid
import zlib

import pytest

from login.providers.kiro_stream import EventStreamDecoder, EventStreamError, parse_headers


def _frame(headers: bytes, payload: bytes) -> bytes:
    total = 12 + len(headers) + len(payload) + 4
    prelude = struct.pack(">II", total, len(headers))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + headers + payload
    return body + struct.pack(">I", zlib.crc32(body))


def _string(name: bytes, value: bytes) -> bytes:
    return bytes([len(name)]) + name + b"\x07" + struct.pack(">H", len(value)) + value


TEXT = _frame(
    _string(b":event-type", b"assistantResponseEvent")
    + _string(b":content-type", b"application/json")
    + _string(b":message-type", b"event"),
    b'{"content":"Hel"}',
)


def test_a_frame_written_out_by_hand_decodes() -> None:
    headers = _string(b":event-type", b"assistantResponseEvent")
    assert len(headers) == 1 + 11 + 1 + 2 + 22 == 37
    frame = _frame(headers, b'{"content":"x"}')
    assert frame[:8] == struct.pack(">II", 12 + 37 + 15 + 4, 37)
    [msg] = EventStreamDecoder().feed(frame)
    assert msg.header(":event-type") == "assistantResponseEvent"
    assert msg.payload == b'{"content":"x"}'


def test_frames_split_at_every_byte_come_out_whole_and_in_order() -> None:
    second = _frame(_string(b":event-type", b"toolUseEvent"), b'{"input":"{\\"a\\""}')
    data = TEXT + second + TEXT
    for size in (1, 2, 3, 5, 7, 11, 12, 13, 64, len(data)):
        dec = EventStreamDecoder()
        out = []
        for i in range(0, len(data), size):
            out += dec.feed(data[i : i + size])
        dec.end()
        assert [m.header(":event-type") for m in out] == [
            "assistantResponseEvent",
            "toolUseEvent",
            "assistantResponseEvent",
        ], size
        assert out[1].payload == b'{"input":"{\\"a\\""}'


def test_a_message_is_returned_as_soon_as_its_last_byte_arrives() -> None:
    dec = EventStreamDecoder()
    assert dec.feed(TEXT[:-1]) == []
    assert dec.pending == len(TEXT) - 1
    assert len(dec.feed(TEXT[-1:])) == 1
    assert dec.pending == 0


def test_every_header_type_of_the_spec() -> None:
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    block = (
        b"\x01t\x00"
        + b"\x01f\x01"
        + b"\x01b\x02\xff"
        + b"\x01s\x03"
        + struct.pack(">h", -2)
        + b"\x01i\x04"
        + struct.pack(">i", 70000)
        + b"\x01l\x05"
        + struct.pack(">q", 2**40)
        + b"\x01y\x06"
        + struct.pack(">H", 3)
        + b"\x00\x01\x02"
        + b"\x01z\x07"
        + struct.pack(">H", 2)
        + "é".encode()
        + b"\x02ts\x08"
        + struct.pack(">q", 1_700_000_000_000)
        + b"\x01u\x09"
        + u.bytes
    )
    assert parse_headers(block) == {
        "t": True,
        "f": False,
        "b": -1,
        "s": -2,
        "i": 70000,
        "l": 2**40,
        "y": b"\x00\x01\x02",
        "z": "é",
        "ts": 1_700_000_000_000,
        "u": u,
    }
    [msg] = EventStreamDecoder().feed(_frame(block, b""))
    assert msg.headers["u"] == u and msg.payload == b""


def test_a_bad_message_crc_raises_and_stays_broken() -> None:
    bad = bytearray(TEXT)
    bad[-6] ^= 0x01  # a payload byte
    dec = EventStreamDecoder()
    with pytest.raises(EventStreamError, match="message CRC"):
        dec.feed(bytes(bad))
    with pytest.raises(EventStreamError):
        dec.feed(TEXT)  # nothing past a broken frame is read


def test_a_bad_prelude_crc_raises_before_the_frame_is_complete() -> None:
    bad = bytearray(TEXT)
    bad[3] ^= 0x10  # the total length
    with pytest.raises(EventStreamError, match="prelude CRC"):
        EventStreamDecoder().feed(bytes(bad[:12]))


def test_a_bad_trailer_crc_raises() -> None:
    bad = TEXT[:-4] + struct.pack(">I", (zlib.crc32(TEXT[:-4]) + 1) & 0xFFFFFFFF)
    with pytest.raises(EventStreamError, match="message CRC"):
        EventStreamDecoder().feed(bad)


def test_impossible_lengths_and_unknown_header_types_raise() -> None:
    def prelude(total: int, headers: int) -> bytes:
        head = struct.pack(">II", total, headers)
        return head + struct.pack(">I", zlib.crc32(head))

    with pytest.raises(EventStreamError, match="length"):
        EventStreamDecoder().feed(prelude(8, 0))
    with pytest.raises(EventStreamError, match="headers length"):
        EventStreamDecoder().feed(prelude(20, 10))
    with pytest.raises(EventStreamError, match="unknown header value type"):
        EventStreamDecoder().feed(_frame(b"\x01x\x0a", b""))
    with pytest.raises(EventStreamError):
        EventStreamDecoder().feed(_frame(b"\x01x\x07\x00\x09ab", b""))  # string past the block


def test_a_stream_that_ends_inside_a_message_raises_at_the_end() -> None:
    dec = EventStreamDecoder()
    dec.feed(TEXT[:20])
    with pytest.raises(EventStreamError, match="ended inside a message"):
        dec.end()
    clean = EventStreamDecoder()
    clean.feed(TEXT)
    clean.end()
