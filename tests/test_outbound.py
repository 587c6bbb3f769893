"""The relay's HTTP/1.1 client against scripted servers: framing, keep-alive, stale
connections, streaming, decoding, TLS with `[resolve]`, and an upstream CONNECT proxy."""

from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trustme

from addon import outbound
from addon.outbound import Outbound, Target, UpstreamError, UpstreamTimeout
from tests.connect_proxy import ConnectProxy

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Scripted:
    """A server whose every connection runs `handler`; counts connections and requests."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler, self.tls = handler, tls
        self.connections = 0
        self.heads: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Scripted:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def target(self, path: str = "/") -> Target:
        return Target.of(f"http://127.0.0.1:{self.port}", path)

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                return await reader.readexactly(int(line.split(b":")[1]))
        return b""


def plain() -> Outbound:
    return Outbound(ssl.create_default_context())


async def body_of(out: Outbound, target: Target, **kw: Any) -> tuple[int, bytes]:
    resp = await out.send(kw.get("method", "GET"), target, kw.get("headers", []), b"")
    data = b"".join([c async for c in resp.aiter_raw()])
    return resp.status, data


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))  # type: ignore[arg-type]


def test_keep_alive_reuses_one_connection_and_sends_the_body() -> None:
    async def main() -> None:
        server: Scripted

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                body = await server.read_request(reader)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))

        async with Scripted(handler) as server:
            out = plain()
            target = server.target("/v1/echo")
            for n in range(3):
                resp = await out.send("POST", target, [("X-N", str(n))], b"hello %d" % n)
                assert resp.status == 200
                assert b"".join([c async for c in resp.aiter_raw()]) == b"hello %d" % n
            assert server.connections == 1
            assert server.heads[0].startswith(b"POST /v1/echo HTTP/1.1\r\n")
            assert b"\r\nHost: 127.0.0.1:%d\r\n" % server.port in server.heads[0]
            assert b"\r\nX-N: 2\r\n" in server.heads[2]
            out.close()

    run(main())


def test_a_kept_alive_connection_the_server_closed_is_redialled_once() -> None:
    async def main() -> None:
        server: Scripted

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            if server.connections == 3:
                return  # closes without an answer
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            if server.connections == 1:
                # The idle timeout strikes just as the next request arrives: no answer.
                await server.read_request(reader)

        async with Scripted(handler) as server:
            out = plain()
            target = server.target()
            assert await body_of(out, target) == (200, b"ok")
            assert await body_of(out, target) == (200, b"ok")
            assert server.connections == 2
            assert len(server.heads) == 3

            # A fresh connection that closes without an answer is an error, not a retry.
            with pytest.raises(UpstreamError, match="closed before a complete answer"):
                await body_of(plain(), target)
            await asyncio.sleep(0.1)  # a pooled connection whose close arrived is not reused
            assert await body_of(out, target) == (200, b"ok")
            assert server.connections == 4

    run(main())


def test_chunked_stream_arrives_chunk_by_chunk() -> None:
    async def main() -> None:
        release = asyncio.Event()
        server: Scripted

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            writer.write(b"7\r\ndata: 1\r\n")
            await writer.drain()
            await release.wait()
            writer.write(b"7;ext=1\r\ndata: 2\r\n0\r\nX-Trailer: t\r\n\r\n")
            await writer.drain()
            await server.read_request(reader)
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")

        async with Scripted(handler) as server:
            out = plain()
            target = server.target("/stream")
            resp = await out.send("GET", target, [], b"")
            chunks = resp.aiter_raw()
            assert await anext(chunks) == b"data: 1"  # before the server sent the rest
            release.set()
            assert [c async for c in chunks] == [b"data: 2"]
            assert await body_of(out, target) == (204, b"")
            assert server.connections == 1  # trailers read, connection back in the pool

    run(main())


def test_gzip_is_decoded_only_where_asked() -> None:
    async def main() -> None:
        packed = gzip.compress(b'{"ok": true}')
        server: Scripted

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                await server.read_request(reader)
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%b"
                    % (len(packed), packed)
                )

        async with Scripted(handler) as server:
            out = plain()
            target = server.target()
            resp = await out.send("GET", target, [], b"")
            assert b"".join([c async for c in resp.aiter_decoded()]) == b'{"ok": true}'
            assert await body_of(out, target) == (200, packed)

    run(main())


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    ],
    ids=["content-length", "chunked"],
)
def test_a_body_cut_short_is_an_error_not_a_clean_end(answer: bytes) -> None:
    async def main() -> None:
        server: Scripted

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(answer)
            await writer.drain()

        async with Scripted(handler) as server:
            out = plain()
            with pytest.raises(UpstreamError, match="broke off"):
                await body_of(out, server.target())

    run(main())


@pytest.mark.parametrize(
    ("answer", "server_closes"),
    [
        (b"HTTP/1.0 200 OK\r\n\r\nok", True),  # the body ends where the connection does
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", False),  # no keep-alive
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", False),
    ],
    ids=["until-close", "http-1.0", "connection-close"],
)
def test_a_connection_the_answer_ends_is_not_pooled(answer: bytes, server_closes: bool) -> None:
    async def main() -> None:
        server: Scripted

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:  # unless it closes, a server that would answer more on this connection
                await server.read_request(reader)
                writer.write(answer)
                if server_closes:
                    return

        async with Scripted(handler) as server:
            out = plain()
            target = server.target()
            assert await body_of(out, target) == (200, b"ok")
            assert await body_of(out, target) == (200, b"ok")
            assert server.connections == 2

    run(main())


def test_a_header_with_a_line_break_is_refused_before_sending() -> None:
    async def main() -> None:
        out = plain()
        target = Target.of("http://127.0.0.1:9", "/")
        with pytest.raises(UpstreamError, match="line break"):
            await out.send("GET", target, [("X-A", "b\r\nX-Injected: 1")], b"")

    run(main())


def test_query_is_encoded_and_kept_in_order() -> None:
    query = [("alt", "sse"), ("q", "x&y")]
    target = Target.of("https://API.example.com/v1", "/models/a b:go", query)
    assert (target.scheme, target.host, target.port) == ("https", "api.example.com", 443)
    assert target.path == "/v1/models/a%20b:go?alt=sse&q=x%26y"
    assert Target.of("https://h:8443/p?x=1", "", [("y", "2")]).path == "/p?x=1&y=2"
    assert Target.of("https://h:8443", "/").authority == "h:8443"


def _tls_server(ca: trustme.CA, name: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(ctx)
    return ctx


def _trusting(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


def test_tls_keeps_the_name_while_resolve_picks_the_address() -> None:
    ca = trustme.CA()

    async def main() -> None:
        server: Scripted

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

        async with Scripted(handler, _tls_server(ca, "api.example.test")) as server:
            here = ("127.0.0.1", server.port)
            out = Outbound(_trusting(ca), resolve=lambda h, p: here)
            target = Target.of("https://api.example.test", "/v1/x")
            assert await body_of(out, target) == (200, b"ok")
            assert b"\r\nHost: api.example.test\r\n" in server.heads[0]

            other = Target.of("https://other.example.test", "/v1/x")
            with pytest.raises(UpstreamError, match=r"TLS with other\.example\.test failed"):
                await body_of(out, other)
            untrusting = Outbound(ssl.create_default_context(), resolve=lambda h, p: here)
            with pytest.raises(UpstreamError, match="CERTIFICATE_VERIFY_FAILED"):
                await body_of(untrusting, target)

    run(main())


def test_an_upstream_proxy_carries_the_tls_tunnel() -> None:
    ca = trustme.CA()

    async def main() -> None:
        server: Scripted

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                await server.read_request(reader)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

        async with Scripted(handler, _tls_server(ca, "api.example.test")) as server:
            routes = {"api.example.test:443": ("127.0.0.1", server.port)}
            with ConnectProxy(routes) as proxy:
                out = Outbound(_trusting(ca), proxy=proxy.url)
                target = Target.of("https://api.example.test", "/v1/x")
                assert await body_of(out, target) == (200, b"ok")
                assert await body_of(out, target) == (200, b"ok")
                assert proxy.connects == ["api.example.test:443"]  # one tunnel, kept alive
                assert server.connections == 1

    run(main())


def test_a_post_on_a_connection_the_server_already_closed_goes_on_a_new_one() -> None:
    """The server closes an idle kept-alive connection and the relay has not yet read the
    FIN when the next request comes: it must see it before writing and dial afresh (it may
    not send a POST twice, so finding out after writing would be too late)."""
    listener = socket.create_server(("127.0.0.1", 0))
    closed, requests = threading.Event(), []

    def serve() -> None:
        for n in range(2):
            conn, _ = listener.accept()
            with conn, conn.makefile("rb") as reader:
                head = b"".join(iter(reader.readline, b"\r\n"))
                requests.append(head)
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                reader.read(length)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            closed.set()  # closed the first connection right after its answer

    threading.Thread(target=serve, daemon=True).start()

    async def main() -> None:
        out = plain()
        target = Target.of(f"http://127.0.0.1:{listener.getsockname()[1]}", "/")
        for _ in range(2):
            resp = await out.send("POST", target, [], b"{}")
            assert (resp.status, await resp.read(100)) == (200, b"ok")
            # Wait without running the loop, so the FIN is in the kernel, unread.
            closed.wait(5)
            time.sleep(0.05)
        assert len(requests) == 2
        out.close()

    run(main())
    listener.close()


# -- issue 14.7: one read timer per exchange, a leaner TLS, a pool that shrinks after a burst --


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (b"", "did not answer in time"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf", "stopped sending"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nhalf\r\n", "stopped sending"),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhalf", "stopped sending"),
    ],
)
def test_a_provider_that_stops_answering_or_sending_times_out(answer: bytes, why: str) -> None:
    """Each read must end within read_timeout: a head that never comes, and a body that
    stops (sized, chunked or until close), is an UpstreamTimeout, never a clean end."""

    async def main() -> None:
        server: Scripted

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(answer)
            await reader.read()  # and nothing more, until the client gives up

        async with Scripted(handler) as server:
            out = Outbound(ssl.create_default_context(), read_timeout=0.2)
            with pytest.raises(UpstreamTimeout, match=why):
                await body_of(out, server.target())
            assert not out._idle, "a connection that timed out is not pooled"

    run(main())


def test_time_spent_not_reading_is_not_the_providers() -> None:
    """Only reads are timed: a consumer slower than read_timeout between chunks (a client
    reading slowly) does not end a stream the provider sent in time."""

    async def main() -> None:
        server: Scripted
        chunks = b"".join(b"1\r\n%d\r\n" % i for i in range(3)) + b"0\r\n\r\n"

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
            await reader.read()

        async with Scripted(handler) as server:
            out = Outbound(ssl.create_default_context(), read_timeout=0.1)
            resp = await out.send("GET", server.target(), [], b"")
            got = []
            async for chunk in resp.aiter_raw():
                got.append(chunk)
                await asyncio.sleep(0.25)
            assert got == [b"0", b"1", b"2"]

    run(main())


def test_tls_carries_a_body_larger_than_its_read_buffer() -> None:
    ca = trustme.CA()
    big = bytes(range(256)) * 2048  # 512 KiB, many times the TLS read buffer

    async def main() -> None:
        server: Scripted

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for _ in range(2):
                await server.read_request(reader)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(big), big))
            await reader.read()

        async with Scripted(handler, _tls_server(ca, "api.example.test")) as server:
            here = ("127.0.0.1", server.port)
            out = Outbound(_trusting(ca), resolve=lambda h, p: here)
            target = Target.of("https://api.example.test", "/v1/x")
            for _ in range(2):  # and the connection is kept alive
                assert await body_of(out, target) == (200, big)
            assert server.connections == 1
            out.close()

    run(main())


def test_idle_connections_a_burst_left_close_soon_and_a_few_stay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a burst, the pool keeps the _WARM most recently used connections and closes
    the rest after _SURPLUS_SECONDS, by itself (no request needs to come)."""
    monkeypatch.setattr(outbound, "_WARM", 2)
    monkeypatch.setattr(outbound, "_SURPLUS_SECONDS", 0.2)
    monkeypatch.setattr(outbound, "_SWEEP_SECONDS", 0.05)

    async def main() -> None:
        server: Scripted

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:  # until the client closes (read_request fails then)
                await server.read_request(reader)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

        async with Scripted(handler) as server:
            out = plain()
            answers = await asyncio.gather(*(body_of(out, server.target()) for _ in range(5)))
            assert answers == [(200, b"ok")] * 5 and server.connections == 5
            for _ in range(100):
                if out.swept == 3:
                    break
                await asyncio.sleep(0.05)
            assert out.swept == 3 and [len(c) for c in out._idle.values()] == [2]
            assert await body_of(out, server.target()) == (200, b"ok")
            assert server.connections == 5, "a warm one served the next request"
            out.close()

    run(main())
