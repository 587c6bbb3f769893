"""A lean fake provider API for the benchmark: asyncio, TLS, HTTP/1.1 keep-alive.

    python -m bench.upstream CERT_PEM KEY_PEM     # prints "port N", then serves until killed

Much leaner than tests/fakes/api.py (no lock, no routing, no bookkeeping) so that it is never
what limits a measurement. Every request is answered from its headers alone:

- a bearer token or `x-api-key` is required; one starting `rl-` gets a 429 with
  `retry-after: 0` (the bucket may be used again at once), `dead-` gets a 401;
- a JSON body containing `"stream": true` gets Server-Sent Events as HTTP/1.1 chunks, one event
  per chunk: the first with the headers, then one every `x-bench-gap-ms` (default 50) until
  `x-bench-events` (default 10) were sent;
- anything else gets a small Anthropic-style message as JSON;
- `GET /_stats` returns how many requests were answered, by status.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
from collections import Counter

STATS: Counter[str] = Counter()

_MESSAGE = json.dumps(
    {
        "id": "msg_bench",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "hello from the bench upstream"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 8, "output_tokens": 6},
    }
).encode()
_RATE_LIMITED = b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}'
_UNAUTHORIZED = b'{"type":"error","error":{"type":"authentication_error","message":"expired"}}'
_REASONS = {
    200: "OK",
    401: "Unauthorized",
    404: "Not Found",
    411: "Length Required",
    429: "Too Many Requests",
}


def _event(i: int) -> bytes:
    data = {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": str(i)},
    }
    return b"event: content_block_delta\ndata: " + json.dumps(data).encode() + b"\n\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _head(status: int, content_type: str, length: int | None, extra: str = "") -> bytes:
    framing = f"content-length: {length}" if length is not None else "transfer-encoding: chunked"
    return (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\ncontent-type: {content_type}\r\n"
        f"{framing}\r\n{extra}\r\n"
    ).encode()


def _answer(status: int, body: bytes, extra: str = "") -> bytes:
    STATS[str(status)] += 1
    return _head(status, "application/json", len(body), extra) + body


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.streaming = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        STATS["connections"] += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._process()

    def _process(self) -> None:
        while not self.streaming and self.transport is not None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            headers: dict[str, str] = {}
            for line in lines[1:]:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            if "transfer-encoding" in headers:
                self.transport.write(_answer(411, b"{}", "connection: close\r\n"))
                self.transport.close()
                return
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4 : end + 4 + length])
            del self.buf[: end + 4 + length]
            self._handle(lines[0], headers, body)

    def _handle(self, start: str, headers: dict[str, str], body: bytes) -> None:
        assert self.transport is not None
        method, target, _ = start.split(" ", 2)
        if method == "GET" and target == "/_stats":
            self.transport.write(_answer(200, json.dumps(STATS).encode()))
            return
        auth = headers.get("authorization", "")
        token = auth[7:] if auth[:7].lower() == "bearer " else headers.get("x-api-key", "")
        if not token or token.startswith("dead-"):
            self.transport.write(_answer(401, _UNAUTHORIZED))
        elif token.startswith("rl-"):
            self.transport.write(_answer(429, _RATE_LIMITED, "retry-after: 0\r\n"))
        elif b'"stream":true' in body.replace(b" ", b""):
            events = int(headers.get("x-bench-events", "10"))
            gap = int(headers.get("x-bench-gap-ms", "50")) / 1000
            self.streaming = True
            asyncio.get_running_loop().create_task(self._stream(events, gap))
        else:
            self.transport.write(_answer(200, _MESSAGE))

    async def _stream(self, events: int, gap: float) -> None:
        STATS["200"] += 1
        STATS["streams"] += 1
        head = _head(200, "text/event-stream", None, "cache-control: no-cache\r\n")
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(events):
            if self.transport is None:
                return
            await asyncio.sleep(max(0.0, start + i * gap - loop.time()))
            if self.transport is None:
                return
            self.transport.write((head if i == 0 else b"") + _chunk(_event(i)))
        if self.transport is not None:
            self.transport.write(b"0\r\n\r\n")
        self.streaming = False
        self._process()


async def serve(cert: str, key: str) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    server = await asyncio.get_running_loop().create_server(
        _Conn, "127.0.0.1", 0, ssl=ctx, backlog=1024
    )
    port = server.sockets[0].getsockname()[1]
    print(f"port {port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], sys.argv[2]))
