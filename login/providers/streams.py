"""Reshaping response bodies on the fly: SSE events split and rewritten one by one while
they stream, or a whole body collected and rewritten at the end."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

Json = dict[str, Any]


class BrokenStream(Exception):
    """Raised by a reshaper whose upstream body turned out broken (a frame that fails its
    checksum): what it returned before already told the client; the relay now ends the
    client's answer abruptly, so it is visibly incomplete rather than cleanly cut short."""


class Reshaper(Protocol):
    """Fed the decoded upstream body chunk by chunk; returns what goes to the client."""

    content_type: str | None

    def feed(self, chunk: bytes) -> bytes: ...

    def end(self) -> bytes: ...


class SSESplitter:
    """Splits a byte stream into SSE events, robust to events split across chunks and to
    CRLF framing (a "\\r" at a chunk's end may pair with the next chunk's "\\n")."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buf = (self._buf + chunk).replace(b"\r\n", b"\n")
        held_cr = self._buf.endswith(b"\r")
        if held_cr:
            self._buf = self._buf[:-1]
        *events, self._buf = self._buf.replace(b"\r", b"\n").split(b"\n\n")
        if held_cr:
            self._buf += b"\r"
        return [e for e in events if e.strip()]

    def end(self) -> list[bytes]:
        rest, self._buf = self._buf.replace(b"\r", b"\n").strip(b"\n"), b""
        return [rest] if rest.strip() else []


def event_data(event: bytes) -> bytes | None:
    """The event's `data:` lines joined (None for comments, pings without data)."""
    lines = [
        line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
    ]
    return b"\n".join(lines) if lines else None


def _json_or_none(data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # too deep for json is not JSON to us either
        return None


class MapSSE:
    """Rewrites each SSE event's JSON data with `fn`, as soon as the event is complete.
    Events that are not JSON pass through unchanged."""

    content_type: str | None = None

    def __init__(self, fn: Callable[[Json], Json]) -> None:
        self._fn = fn
        self._split = SSESplitter()

    def feed(self, chunk: bytes) -> bytes:
        return b"".join(self._event(e) for e in self._split.feed(chunk))

    def end(self) -> bytes:
        return b"".join(self._event(e) for e in self._split.end())

    def _event(self, event: bytes) -> bytes:
        obj = _json_or_none(event_data(event))
        if not isinstance(obj, dict):
            return event + b"\n\n"
        return b"data: " + json.dumps(self._fn(obj), separators=(",", ":")).encode() + b"\n\n"


class SSEToJSONArray:
    """An SSE stream of JSON objects as a streamed JSON array (Google's non-SSE stream form)."""

    content_type: str | None = "application/json"

    def __init__(self, fn: Callable[[Json], Json]) -> None:
        self._fn = fn
        self._split = SSESplitter()
        self._started = False

    def feed(self, chunk: bytes) -> bytes:
        return b"".join(self._item(e) for e in self._split.feed(chunk))

    def end(self) -> bytes:
        tail = b"".join(self._item(e) for e in self._split.end())
        return tail + (b"]" if self._started else b"[]")

    def _item(self, event: bytes) -> bytes:
        obj = _json_or_none(event_data(event))
        if not isinstance(obj, dict):
            return b""
        sep = b"," if self._started else b"["
        self._started = True
        return sep + json.dumps(self._fn(obj), separators=(",", ":")).encode()


class WholeJSON:
    """Collects a JSON body and rewrites it at the end."""

    content_type: str | None = "application/json"

    def __init__(self, fn: Callable[[Json], Json]) -> None:
        self._fn = fn
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> bytes:
        self._buf += chunk
        return b""

    def end(self) -> bytes:
        obj = _json_or_none(bytes(self._buf))
        if not isinstance(obj, dict):
            return bytes(self._buf)
        return json.dumps(self._fn(obj), separators=(",", ":")).encode()


class LastSSEEvent:
    """Collects an SSE stream and answers with one JSON object picked from its events
    (a streamed-only backend serving a caller that asked for no stream)."""

    content_type: str | None = "application/json"

    def __init__(self, pick: Callable[[Json], Json | None]) -> None:
        self._pick = pick
        self._split = SSESplitter()
        self._found: Json | None = None
        self._events: list[bytes] = []

    def feed(self, chunk: bytes) -> bytes:
        self._take(self._split.feed(chunk))
        return b""

    def end(self) -> bytes:
        self._take(self._split.end())
        if self._found is None:
            return json.dumps(
                {"error": {"message": "the stream ended without a result", "type": "server_error"}}
            ).encode()
        return json.dumps(self._found, separators=(",", ":")).encode()

    def _take(self, events: list[bytes]) -> None:
        for event in events:
            obj = _json_or_none(event_data(event))
            if isinstance(obj, dict) and (picked := self._pick(obj)) is not None:
                self._found = picked
