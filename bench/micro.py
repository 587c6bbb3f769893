"""What each half of keyswap's relay hop costs in CPU, in a process of its own:

    python -m bench.micro

Relay -> upstream, by HTTP client: keyswap's relay client (`addon.outbound`), httpx as
keyswap's logins use it (`login.net.make_client`; the relay used it until 2026-11), and a raw
asyncio HTTP/1.1 exchange (the floor); `N` requests over 8 kept-alive TLS connections to the
lean upstream.

mitmproxy -> relay, by server: keyswap's relay server (`addon.relay`, its retry loop replaced
by a fixed answer), a tornado RequestHandler answering the same way (the relay's server until
2026-11), and a bare asyncio.Protocol (the floor), all on plain loopback HTTP and driven by
the raw client in the same process (so each number includes the client's small share).
"""

from __future__ import annotations

import asyncio
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

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
            # What the retry loop leaves on a job: the token it sent, kept out of the answer.
            return SimpleNamespace(sent=[_TOKEN])

        async def run(self, job: Any) -> Answer:
            headers = [("content-type", "application/json")]
            return Answer(200, headers, body=_REPLY)

    relay = Fixed(None)
    relay.start()
    try:
        return await _plain_client(relay.port)
    finally:
        relay.stop()


async def protocol_server() -> float:
    server = await asyncio.get_running_loop().create_server(_Plain, "127.0.0.1", 0)
    try:
        return await _plain_client(int(server.sockets[0].getsockname()[1]))
    finally:
        server.close()


async def _plain_client(port: int) -> float:
    conns = []
    for _ in range(CONCURRENCY):
        conns.append(Conn(*await asyncio.open_connection("127.0.0.1", port)))
    return await _drive_pool(conns, request_bytes("ticket"))


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
            ):
                print(f"  {name:32s} {asyncio.run(fn(upstream.port, ctx)):.3f} ms", flush=True)
        finally:
            upstream.stop()
    print(f"mitmproxy -> relay server CPU per request, client included ({N} requests):")
    for name, server in (
        ("tornado RequestHandler", tornado_server),
        ("keyswap's relay server", keyswap_relay_server),
        ("asyncio.Protocol (floor)", protocol_server),
    ):
        print(f"  {name:32s} {asyncio.run(server()):.3f} ms", flush=True)


if __name__ == "__main__":
    main()
