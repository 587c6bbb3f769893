"""The AWS event stream (`application/vnd.amazon.eventstream`) that Kiro's runtime answers
with, decoded incrementally: frames may be split anywhere across chunks.

Wire format (AWS "Event Stream Encoding", the AWS SDKs' `eventstream` codecs; as Kiro's
peers read it: CPA-jc `executor/kiro_executor.go` `readEventStreamMessage`, docs/providers.md
§7.1):

    prelude   total_length u32 BE | headers_length u32 BE | prelude_crc u32 BE (CRC32 of 8 bytes)
    headers   repeated: name_len u8 | name (utf-8) | type u8 | value
    payload   total_length - headers_length - 16 bytes
    trailer   message_crc u32 BE (CRC32 of everything before it)

Header value types: 0 true, 1 false (no value), 2 byte, 3 short, 4 int, 5 long (signed, BE),
6 bytes and 7 string (u16 BE length + data), 8 timestamp (i64 ms since the epoch), 9 uuid
(16 bytes). Anything else, a bad CRC or an impossible length raises `EventStreamError`: a
broken stream is never read past, nor ended silently.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass

PRELUDE = 12
TRAILER = 4
# The AWS codecs refuse messages over 16 MiB and header blocks over 128 KiB.
MAX_MESSAGE = 16 * 1024 * 1024
MAX_HEADERS = 128 * 1024

HeaderValue = bool | int | bytes | str | uuid.UUID


class EventStreamError(ValueError):
    """The byte stream is not a well-formed event stream (bad CRC, length or header)."""


@dataclass(frozen=True)
class Message:
    headers: dict[str, HeaderValue]
    payload: bytes

    def header(self, name: str) -> str | None:
        value = self.headers.get(name)
        return value if isinstance(value, str) else None


class EventStreamDecoder:
    """Fed bytes in any pieces; returns each complete message as soon as its last byte came."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._broken: EventStreamError | None = None

    def feed(self, chunk: bytes) -> list[Message]:
        if self._broken is not None:
            raise self._broken
        self._buf += chunk
        out = []
        try:
            while (message := self._next()) is not None:
                out.append(message)
        except EventStreamError as exc:
            self._broken = exc
            raise
        return out

    def end(self) -> None:
        """The stream ended: EventStreamError if it stopped inside a message."""
        if self._broken is None and self._buf:
            self._broken = EventStreamError(
                f"the event stream ended inside a message ({len(self._buf)} bytes left over)"
            )
        if self._broken is not None:
            raise self._broken

    @property
    def pending(self) -> int:
        """Bytes held for a message not complete yet."""
        return len(self._buf)

    def _next(self) -> Message | None:
        buf = self._buf
        if len(buf) < PRELUDE:
            return None
        total, headers_len, prelude_crc = struct.unpack_from(">III", buf, 0)
        if zlib.crc32(bytes(buf[:8])) != prelude_crc:
            raise EventStreamError("prelude CRC mismatch")
        if total < PRELUDE + TRAILER or total > MAX_MESSAGE:
            raise EventStreamError(f"impossible message length {total}")
        if headers_len > MAX_HEADERS or PRELUDE + headers_len + TRAILER > total:
            raise EventStreamError(f"impossible headers length {headers_len}")
        if len(buf) < total:
            return None
        frame = bytes(buf[:total])
        del buf[:total]
        (message_crc,) = struct.unpack_from(">I", frame, total - TRAILER)
        if zlib.crc32(frame[: total - TRAILER]) != message_crc:
            raise EventStreamError("message CRC mismatch")
        headers = parse_headers(frame[PRELUDE : PRELUDE + headers_len])
        return Message(headers, frame[PRELUDE + headers_len : total - TRAILER])


_FIXED = {2: ">b", 3: ">h", 4: ">i", 5: ">q", 8: ">q"}


def parse_headers(data: bytes) -> dict[str, HeaderValue]:
    headers: dict[str, HeaderValue] = {}
    pos, end = 0, len(data)
    try:
        while pos < end:
            name_len = data[pos]
            name = data[pos + 1 : pos + 1 + name_len].decode("utf-8")
            pos += 1 + name_len
            kind = data[pos]
            pos += 1
            value: HeaderValue
            if kind in (0, 1):
                value = kind == 0
            elif kind in _FIXED:
                fmt = _FIXED[kind]
                (value,) = struct.unpack_from(fmt, data, pos)
                pos += struct.calcsize(fmt)
            elif kind in (6, 7):
                (size,) = struct.unpack_from(">H", data, pos)
                raw = data[pos + 2 : pos + 2 + size]
                if len(raw) != size:
                    raise EventStreamError("a header value runs past the header block")
                value = raw.decode("utf-8") if kind == 7 else bytes(raw)
                pos += 2 + size
            elif kind == 9:
                raw = data[pos : pos + 16]
                if len(raw) != 16:
                    raise EventStreamError("a uuid header runs past the header block")
                value = uuid.UUID(bytes=bytes(raw))
                pos += 16
            else:
                raise EventStreamError(f"unknown header value type {kind}")
            headers[name] = value
    except (IndexError, struct.error, UnicodeDecodeError) as exc:
        raise EventStreamError(f"malformed headers ({type(exc).__name__})") from None
    if pos != end:
        raise EventStreamError("a header runs past the header block")
    return headers
