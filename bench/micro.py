"""What each half of keyswap's relay hop costs in CPU, in a process of its own:

    python -m bench.micro              # everything, about a minute
    python -m bench.micro --framing    # only the in-memory framing rows

Relay -> upstream, by HTTP client: keyswap's relay client (`addon.outbound`), httpx as
keyswap's logins use it (`login.net.make_client`; the relay used it until 2026-11), and a raw
asyncio HTTP/1.1 exchange (the floor); `N` requests over 8 kept-alive TLS connections to the
lean upstream.

mitmproxy -> relay, by server: keyswap's relay server (`addon.relay`, its retry loop replaced
by a fixed answer), a tornado RequestHandler answering the same way (the relay's server until
2026-11), and a bare asyncio.Protocol (the floor), all on plain loopback HTTP and driven by
the raw client in the same process (so each number includes the client's small share).
Beside each floor, the same floor with h11 doing the HTTP/1.1 framing (h11 comes with
mitmproxy).

HTTP/1.1 framing alone, in memory: keyswap's hand-written parsers against h11 on the same
bytes, per request, with no sockets and no TLS, so the difference is all parsing and
framing. Client role (the relay's client): write a 2 KB JSON POST with the headers Claude
Code sends, read a sized JSON answer or an SSE answer (head and six chunked events). Server
role (the relay's server): read that POST, or the ticket-only request mitmproxy really sends
it, and write those answers. The doctor: CONNECT and a GET through the proxy.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import h11
import httpx
import trustme

from .load import BODY, HOST, Conn, Target, request_bytes
from .procs import Upstream

N = 2000
CONCURRENCY = 8
HEADERS = [
    ("content-type", "application/json"),
    ("anthropic-version", "2023-06-01"),
    ("authorization", "Bearer ok-micro"),
]


async def _drive_pool(conns: list[Conn], request: bytes) -> float:
    """`_drive` over a pool of keep-alive connections, one request in flight on each."""

    async def one() -> None:
        conn = conns.pop()
        try:
            await conn.exchange(request)
        finally:
            conns.append(conn)

    try:
        return await _drive(one)
    finally:
        for c in conns:
            c.close()


async def _drive(one: Callable[[], Awaitable[None]]) -> float:
    """CPU ms per request of `one`, CONCURRENCY at a time, after a short warm-up."""
    for _ in range(50):
        await one()
    left = N

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await one()

    cpu = time.process_time()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return (time.process_time() - cpu) / N * 1000


async def httpx_client(port: int, ctx: ssl.SSLContext) -> float:
    from login.config import Config
    from login.net import make_client

    config = Config.model_validate({"resolve": {f"{HOST}:443": f"127.0.0.1:{port}"}})
    client = make_client(config, timeout=600.0, verify=ctx)
    timeout = client.timeout.as_dict()

    async def one() -> None:
        request = httpx.Request(
            "POST", f"https://{HOST}/v1/messages", headers=HEADERS, content=BODY,
            extensions={"timeout": timeout},
        )  # fmt: skip
        resp = await client.send(request, stream=True)
        async for _ in resp.aiter_raw():
            pass
        await resp.aclose()

    try:
        return await _drive(one)
    finally:
        await client.aclose()


async def keyswap_outbound(port: int, ctx: ssl.SSLContext) -> float:
    from addon.outbound import Outbound
    from addon.outbound import Target as To

    out = Outbound(ctx, resolve=lambda host, p: ("127.0.0.1", port))
    to = To.of(f"https://{HOST}", "/v1/messages")

    async def one() -> None:
        resp = await out.send("POST", to, HEADERS, BODY)
        async for _ in resp.aiter_raw():
            pass
        resp.aclose()

    try:
        return await _drive(one)
    finally:
        out.close()


async def raw_asyncio(port: int, ctx: ssl.SSLContext) -> float:
    target = Target("raw", ("127.0.0.1", port), "", "ok-micro")
    conns = [await Conn.open(target, ctx) for _ in range(CONCURRENCY)]
    return await _drive_pool(conns, request_bytes("ok-micro"))


class _H11Conn:
    """A kept-alive connection whose HTTP/1.1 framing h11 does (client role)."""

    def __init__(self, conn: Conn) -> None:
        self.reader, self.writer = conn.reader, conn.writer
        self.h11 = h11.Connection(h11.CLIENT)

    async def exchange(self, request: h11.Request, body: bytes) -> None:
        self.writer.write(_h11_bytes(self.h11, request, h11.Data(data=body), h11.EndOfMessage()))
        await _h11_until_end(self.h11, self.reader)
        self.h11.start_next_cycle()


def _h11_bytes(conn: h11.Connection, *events: h11.Event) -> bytes:
    return b"".join(conn.send(e) or b"" for e in events)


async def _h11_until_end(conn: h11.Connection, reader: asyncio.StreamReader) -> None:
    """Read one whole message (its body handed over chunk by chunk, as a relay would)."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("closed mid-answer")
            conn.receive_data(data)
        elif type(event) is h11.EndOfMessage:
            return


async def h11_asyncio(port: int, ctx: ssl.SSLContext) -> float:
    target = Target("raw", ("127.0.0.1", port), "", "ok-micro")
    conns = [_H11Conn(await Conn.open(target, ctx)) for _ in range(CONCURRENCY)]
    headers = [
        ("host", HOST),
        ("x-api-key", "ok-micro"),
        ("anthropic-version", "2023-06-01"),
        ("content-type", "application/json"),
        ("content-length", str(len(BODY))),
    ]

    async def one() -> None:
        conn = conns.pop()
        try:
            await conn.exchange(
                h11.Request(method="POST", target="/v1/messages", headers=headers), BODY
            )
        finally:
            conns.append(conn)

    try:
        return await _drive(one)
    finally:
        for c in conns:
            c.writer.transport.abort()


_REPLY = b"x" * 238
_TOKEN = "sk-ant-oat01-" + "Ab3_" * 24  # as long as a Claude OAuth token


async def tornado_server() -> float:
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets
    from tornado.web import Application, RequestHandler

    class Handler(RequestHandler):
        async def post(self) -> None:
            self.set_status(200)
            self.add_header("content-type", "application/json")
            self.add_header("content-length", str(len(_REPLY)))
            self.write(_REPLY)
            await self.flush()
            self.finish()

    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(Application([(r".*", Handler)]), decompress_request=False)
    server.add_sockets(sockets)
    try:
        return await _plain_client(int(sockets[0].getsockname()[1]))
    finally:
        server.stop()


class _Plain(asyncio.Protocol):
    """The least an HTTP/1.1 server can do: find the end of a request, write an answer."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport, self.buf = transport, bytearray()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            length = int(bytes(self.buf[:end]).lower().partition(b"content-length:")[2].split()[0])
            if len(self.buf) < end + 4 + length:
                return
            del self.buf[: end + 4 + length]
            head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 238"
            self.transport.write(head + b"\r\n\r\n" + _REPLY)


async def keyswap_relay_server() -> float:
    """addon/relay.py's server with the retry loop replaced by a fixed answer."""
    from addon.dispatch import Answer
    from addon.relay import Relay

    class Fixed(Relay):
        def take(self, ticket: str) -> Any:
            # What the retry loop leaves on a job: the token it sent, kept out of the answer;
            # no answer yet, so the relay asks for one.
            return SimpleNamespace(sent=[_TOKEN]), None

        async def run(self, job: Any) -> Answer:
            headers = [("content-type", "application/json")]
            return Answer(200, headers, body=_REPLY)

    relay = Fixed(None)
    relay.start()
    try:
        return await _plain_client(relay.port)
    finally:
        relay.stop()


class _H11Plain(asyncio.Protocol):
    """`_Plain` with h11 doing the framing (server role)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport, self.h11 = transport, h11.Connection(h11.SERVER)

    def data_received(self, data: bytes) -> None:
        conn = self.h11
        conn.receive_data(data)
        while (event := conn.next_event()) is not h11.NEED_DATA:
            if type(event) is h11.EndOfMessage:
                headers = [("content-type", "application/json"), ("content-length", "238")]
                answer = h11.Response(status_code=200, headers=headers, reason=b"OK")
                self.transport.write(
                    _h11_bytes(conn, answer, h11.Data(data=_REPLY), h11.EndOfMessage())
                )
                conn.start_next_cycle()


async def protocol_server() -> float:
    return await _served_by(_Plain)


async def h11_server() -> float:
    return await _served_by(_H11Plain)


async def _served_by(protocol: Callable[[], asyncio.Protocol]) -> float:
    server = await asyncio.get_running_loop().create_server(protocol, "127.0.0.1", 0)
    try:
        return await _plain_client(int(server.sockets[0].getsockname()[1]))
    finally:
        server.close()


async def _plain_client(port: int) -> float:
    conns = []
    for _ in range(CONCURRENCY):
        conns.append(Conn(*await asyncio.open_connection("127.0.0.1", port)))
    return await _drive_pool(conns, request_bytes("ticket"))


# -- HTTP/1.1 framing alone, in memory ------------------------------------------------------

FRAMING_N = 5000
# What Claude Code sends with a message (the token is made up, as long as a real one).
_CLIENT_HEADERS = [
    ("accept", "application/json"),
    ("anthropic-beta", "claude-code-20250219,oauth-2025-04-20,interleaved-thinking-2025-05-14"),
    ("anthropic-dangerous-direct-browser-access", "true"),
    ("anthropic-version", "2023-06-01"),
    ("content-type", "application/json"),
    ("user-agent", "claude-cli/2.0.14 (external, cli)"),
    ("x-app", "cli"),
    ("x-stainless-arch", "x64"),
    ("x-stainless-lang", "js"),
    ("x-stainless-os", "Linux"),
    ("x-stainless-package-version", "0.60.0"),
    ("x-stainless-retry-count", "0"),
    ("x-stainless-runtime", "node"),
    ("x-stainless-runtime-version", "v22.17.0"),
    ("x-stainless-timeout", "600"),
    ("accept-encoding", "gzip, deflate, br, zstd"),
    ("authorization", f"Bearer {_TOKEN}"),
]
_PROMPT = "Summarise the design of the relay in two sentences. " * 36
_POST_BODY = (
    b'{"model":"claude-sonnet-4-5","max_tokens":1024,"stream":true,'
    b'"messages":[{"role":"user","content":"%b"}]}' % _PROMPT.encode()
)
# An answer's headers as api.anthropic.com sends them (framing added per answer).
_ANSWER_HEADERS = [
    ("date", "Tue, 14 Oct 2025 10:00:00 GMT"),
    ("connection", "keep-alive"),
    ("cache-control", "no-cache"),
    ("anthropic-ratelimit-unified-status", "allowed"),
    ("anthropic-ratelimit-unified-reset", "1760450000"),
    ("anthropic-ratelimit-unified-5h-utilization", "0.12"),
    ("request-id", "req_011CTz8M4Yb1oFq2A7w3x9Ab"),
    ("strict-transport-security", "max-age=31536000; includeSubDomains; preload"),
    ("anthropic-organization-id", "2b0c5f0e-3b7a-4b8f-9d7e-1a2b3c4d5e6f"),
    ("via", "1.1 google"),
    ("cf-cache-status", "DYNAMIC"),
    ("x-robots-tag", "none"),
    ("server", "cloudflare"),
    ("cf-ray", "98e1c2d3e4f5a6b7-FRA"),
]
_EVENT = (
    b"event: content_block_delta\ndata: "
    b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"The relay"}}'
    b"\n\n"
)
_EVENTS = 6
_MESSAGE = b'{"id":"msg_01","type":"message","role":"assistant","content":[%b]}' % (b" " * 560)


def _wire_head(start: str, headers: list[tuple[str, str]]) -> bytes:
    return "\r\n".join([start, *(f"{k}: {v}" for k, v in headers), "", ""]).encode("latin-1")


def _wire_chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


_JSON_ANSWER_HEADERS = [
    ("content-type", "application/json"),
    *_ANSWER_HEADERS,
    ("content-length", str(len(_MESSAGE))),
]
_SSE_ANSWER_HEADERS = [
    ("content-type", "text/event-stream; charset=utf-8"),
    *_ANSWER_HEADERS,
    ("transfer-encoding", "chunked"),
]
_JSON_ANSWER = _wire_head("HTTP/1.1 200 OK", _JSON_ANSWER_HEADERS) + _MESSAGE
_SSE_ANSWER = (
    _wire_head("HTTP/1.1 200 OK", _SSE_ANSWER_HEADERS)
    + _wire_chunk(_EVENT) * _EVENTS
    + b"0\r\n\r\n"
)
_POST_HEADERS = [
    ("Host", HOST),
    *_CLIENT_HEADERS,
    ("Content-Length", str(len(_POST_BODY))),
]
_POST = _wire_head("POST /v1/messages HTTP/1.1", _POST_HEADERS) + _POST_BODY
# What mitmproxy sends the relay: the job holds the client's request. (For an HTTP/1 client
# it sends no Host, which h11 refuses: keyswap's addon would have to add one.)
_TICKET_REQUEST = _wire_head(
    "POST /v1/messages HTTP/1.1", [("Host", "127.0.0.1:40000"), ("x-keyswap-ticket", "t" * 36)]
)

Step = Callable[[], Awaitable[None]]


async def _per_request_us(one: Step) -> float:
    for _ in range(200):
        await one()
    cpu = time.process_time()
    for _ in range(FRAMING_N):
        await one()
    return (time.process_time() - cpu) / FRAMING_N * 1e6


class _NoWriter:
    """Stands in for a StreamWriter where nothing is written (the bytes are only built)."""

    def get_extra_info(self, name: str) -> None:
        return None

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


def mem_hand_client(answer: bytes) -> Step:
    """addon.outbound: the request's head built, the answer read through a StreamReader."""
    from addon.outbound import _MAX_HEAD, Outbound, _Connection
    from addon.outbound import Target as To

    out = Outbound(ssl.create_default_context())
    to = To.of(f"https://{HOST}", "/v1/messages")
    reader = asyncio.StreamReader(limit=_MAX_HEAD)
    conn = _Connection(reader, _NoWriter(), 600.0)  # type: ignore[arg-type]

    async def one() -> None:
        out._head("POST", to, _CLIENT_HEADERS, _POST_BODY)
        reader.feed_data(answer)
        resp = await out._response(conn, to, "POST")
        async for _ in resp.aiter_raw():
            pass
        out._idle.clear()  # it went back to the pool

    return one


def mem_h11_client(answer: bytes) -> Step:
    conn = h11.Connection(h11.CLIENT)
    reader = asyncio.StreamReader()
    headers = [("host", HOST), *_CLIENT_HEADERS, ("content-length", str(len(_POST_BODY)))]

    async def one() -> None:
        request = h11.Request(method="POST", target="/v1/messages", headers=headers)
        _h11_bytes(conn, request, h11.Data(data=_POST_BODY), h11.EndOfMessage())
        reader.feed_data(answer)
        await _h11_until_end(conn, reader)
        conn.start_next_cycle()

    return one


def mem_hand_server(request: bytes, sse: bool) -> Step:
    """addon.relay: the request read from the connection's buffer, the answer's bytes built
    as `_RelayConnection` builds them."""
    from addon.relay import _CHUNKED, _chunk, _head, _read_request

    buffer = bytearray()

    async def one() -> None:
        buffer.extend(request)
        found = _read_request(buffer)
        assert found is not None
        del buffer[: found[2]]
        if sse:
            _head(200, "OK", [*_SSE_ANSWER_HEADERS[:-1], _CHUNKED])
            for _ in range(_EVENTS):
                _chunk(_EVENT)
        else:
            _head(200, "OK", _JSON_ANSWER_HEADERS) + _MESSAGE

    return one


def mem_h11_server(request: bytes, sse: bool) -> Step:
    conn = h11.Connection(h11.SERVER)

    async def one() -> None:
        conn.receive_data(request)
        while type(conn.next_event()) is not h11.EndOfMessage:
            pass
        if sse:
            conn.send(h11.Response(status_code=200, headers=_SSE_ANSWER_HEADERS, reason=b"OK"))
            for _ in range(_EVENTS):
                conn.send(h11.Data(data=_EVENT))
        else:
            conn.send(h11.Response(status_code=200, headers=_JSON_ANSWER_HEADERS, reason=b"OK"))
            conn.send(h11.Data(data=_MESSAGE))
        conn.send(h11.EndOfMessage())
        conn.start_next_cycle()

    return one


_CONNECTED = b"HTTP/1.1 200 Connection established\r\n\r\n"
_NOT_FOUND_BODY = b'{"type":"error","error":{"type":"not_found_error","message":"Not Found"}}'
_NOT_FOUND = (
    _wire_head(
        "HTTP/1.1 404 Not Found",
        [
            ("content-type", "application/json"),
            *_ANSWER_HEADERS[:2],
            *_ANSWER_HEADERS[6:],
            ("content-length", str(len(_NOT_FOUND_BODY))),
        ],
    )
    + _NOT_FOUND_BODY
)


class _Feed:
    """A socket that has `data` to receive."""

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)

    def recv(self, size: int) -> bytes:
        out, self.data = bytes(self.data[:size]), self.data[size:]
        return out


def mem_hand_doctor() -> Step:
    """login.doctor: its CONNECT and GET, both answers read (as `check_tls` does)."""
    from login.doctor import _read_response

    async def one() -> None:
        connect = f"CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\nUser-Agent: keyswap-doctor"
        _ = (connect + "\r\n\r\n").encode()
        _read_response(_Feed(_CONNECTED), body=False)  # type: ignore[arg-type]
        _ = (
            f"GET / HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: keyswap-doctor\r\n"
            "Accept: */*\r\nConnection: close\r\n\r\n"
        ).encode()
        _read_response(_Feed(_NOT_FOUND))  # type: ignore[arg-type]

    return one


def mem_h11_doctor() -> Step:
    agent = ("user-agent", "keyswap-doctor")

    async def one() -> None:
        tunnel = h11.Connection(h11.CLIENT)
        authority = f"{HOST}:443"
        connect = h11.Request(
            method="CONNECT", target=authority, headers=[("host", authority), agent]
        )
        tunnel.send(connect)
        tunnel.send(h11.EndOfMessage())
        tunnel.receive_data(_CONNECTED)
        assert type(tunnel.next_event()) is h11.Response
        inner = h11.Connection(h11.CLIENT)
        headers = [("host", HOST), agent, ("accept", "*/*"), ("connection", "close")]
        inner.send(h11.Request(method="GET", target="/", headers=headers))
        inner.send(h11.EndOfMessage())
        inner.receive_data(_NOT_FOUND)
        while type(inner.next_event()) is not h11.EndOfMessage:
            pass

    return one


def _framing_rows() -> list[tuple[str, Step, Step]]:
    """Built inside the running loop: the StreamReaders belong to it."""
    return [
        (
            "client: 2 KB POST, JSON answer",
            mem_hand_client(_JSON_ANSWER),
            mem_h11_client(_JSON_ANSWER),
        ),
        (
            "client: 2 KB POST, SSE answer",
            mem_hand_client(_SSE_ANSWER),
            mem_h11_client(_SSE_ANSWER),
        ),
        (
            "server: 2 KB POST, JSON answer",
            mem_hand_server(_POST, False),
            mem_h11_server(_POST, False),
        ),
        (
            "server: 2 KB POST, SSE answer",
            mem_hand_server(_POST, True),
            mem_h11_server(_POST, True),
        ),
        (
            "server: ticket only, SSE answer",
            mem_hand_server(_TICKET_REQUEST, True),
            mem_h11_server(_TICKET_REQUEST, True),
        ),
        ("doctor: CONNECT, then GET", mem_hand_doctor(), mem_h11_doctor()),
    ]


def framing() -> None:
    print(f"HTTP/1.1 framing alone, in memory, CPU µs per request ({FRAMING_N} requests):")
    print(f"  {'':32s} {'keyswap':>8s} {'h11':>8s} {'h11 more':>9s}")

    async def measure() -> None:
        for name, hand, other in _framing_rows():
            mine, theirs = await _per_request_us(hand), await _per_request_us(other)
            print(f"  {name:32s} {mine:8.1f} {theirs:8.1f} {theirs - mine:+9.1f}", flush=True)

    asyncio.run(measure())


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ca = trustme.CA()
        cert = ca.issue_cert(HOST, "127.0.0.1")
        cert.cert_chain_pems[0].write_to_path(str(work / "cert.pem"))
        cert.private_key_pem.write_to_path(str(work / "key.pem"))
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        upstream = Upstream(work / "cert.pem", work / "key.pem")
        try:
            print(f"relay -> upstream client CPU per request ({N} requests, c={CONCURRENCY}):")
            for name, fn in (
                ("httpx (login.net.make_client)", httpx_client),
                ("keyswap's relay client", keyswap_outbound),
                ("raw asyncio streams (floor)", raw_asyncio),
                ("the floor, h11 framing", h11_asyncio),
            ):
                print(f"  {name:32s} {asyncio.run(fn(upstream.port, ctx)):.3f} ms", flush=True)
        finally:
            upstream.stop()
    print(f"mitmproxy -> relay server CPU per request, client included ({N} requests):")
    for name, server in (
        ("tornado RequestHandler", tornado_server),
        ("keyswap's relay server", keyswap_relay_server),
        ("asyncio.Protocol (floor)", protocol_server),
        ("the floor, h11 framing", h11_server),
    ):
        print(f"  {name:32s} {asyncio.run(server()):.3f} ms", flush=True)
    framing()


if __name__ == "__main__":
    if sys.argv[1:] == ["--framing"]:
        framing()
    else:
        main()
