"""The relay's retry loop and answers in process: a Relay whose token service hands out
made-up tokens, a scripted upstream, and mitmproxy's side played by keyswap's own HTTP client.
What the client gets when the provider breaks off, echoes a token, or rate limits a bucket
while a request to it is on its way."""

from __future__ import annotations

import asyncio
import gzip
import json
import secrets
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from pydantic import SecretStr

from addon.dispatch import Dispatch, Job
from addon.outbound import Outbound, Response, Target, UpstreamError
from addon.relay import _BUFFERED, TICKET_HEADER, Relay
from addon.rotation import Rotation
from login.credential import Credential
from login.providers import PROVIDERS
from login.tokens import Access
from tests.test_outbound import Handler, Scripted

ANTHROPIC = PROVIDERS["anthropic"]


class Tokens:
    """Stands in for login.tokens.TokenService: a made-up token per bucket; `hold[bucket]`
    keeps `access` waiting as a refresh would; `refresh` mints the bucket a new token."""

    def __init__(self, api: str) -> None:
        self.api = api
        self.tokens = {b: _mint(b) for b in ("a", "b")}
        self.hold: dict[str, asyncio.Event] = {}
        self.waiting = asyncio.Event()

    async def access(self, provider: str, bucket: str) -> Access:
        if (gate := self.hold.get(bucket)) is not None:
            self.waiting.set()
            await gate.wait()
        token = SecretStr(self.tokens[bucket])
        cred = Credential(provider=provider, bucket=bucket, access_token=token)
        return Access(cred, ANTHROPIC, {"api": self.api})

    async def refresh(self, provider: str, bucket: str, **kw: Any) -> None:
        self.tokens[bucket] = _mint(bucket)


def _mint(bucket: str) -> str:
    return f"tok-{bucket}-{secrets.token_hex(12)}"


def job(*buckets: str, pinned: bool = False, login_wait: float | None = None) -> Job:
    """An Anthropic Messages request planned for `buckets`."""
    return Job(
        provider=ANTHROPIC,
        route=ANTHROPIC.routes[0],
        buckets=list(buckets),
        pinned=pinned,
        method="POST",
        path="/v1/messages",
        query=[],
        headers=[("content-type", "application/json")],
        body=b"{}",
        login_wait=login_wait,
    )


class Lab:
    """A relay in front of `server`, and a client that plays mitmproxy."""

    def __init__(self, server: Scripted, outbound: Outbound | None = None) -> None:
        self.server = server
        self.tokens = Tokens(f"http://127.0.0.1:{server.port}")
        self.rotation = Rotation()
        self.sender = outbound or Outbound(ssl.create_default_context())
        self.relay = Relay(Dispatch(self.tokens, self.rotation, None, self.sender))
        self.relay.start()
        self.client = Outbound(ssl.create_default_context())

    async def ask(self, j: Job) -> Response:
        ticket = self.relay.submit(j)
        to = Target.of(f"http://127.0.0.1:{self.relay.port}", "/")
        return await self.client.send("GET", to, [(TICKET_HEADER, ticket)], b"")

    async def fetch(self, j: Job) -> tuple[Response, bytes]:
        resp = await self.ask(j)
        return resp, b"".join([c async for c in resp.aiter_raw()])

    def used(self) -> list[str]:
        """The bucket of each request the server saw, by the token it carried."""
        return [h.split(b"Authorization: Bearer tok-")[1][:1].decode() for h in self.server.heads]


def with_server(
    make: Callable[[Scripted], Handler],
    check: Callable[[Lab], Awaitable[None]],
    outbound: Outbound | None = None,
) -> None:
    """Run `check` against a relay whose upstream serves each connection with
    `make(server)`."""

    async def main() -> None:
        server: Scripted

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await make(server)(reader, writer)

        async with Scripted(handler) as server:
            lab = Lab(server, outbound)
            try:
                await check(lab)
            finally:
                lab.relay.stop()
                lab.sender.close()
                lab.client.close()

    asyncio.run(asyncio.wait_for(main(), 20))


OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


def anthropic_error(body: bytes) -> dict[str, Any]:
    error = json.loads(body)
    assert error["type"] == "error" and error["error"]["type"] == "api_error", error
    return dict(error["error"])


# -- 7: a request the provider may have processed is never sent twice -----------------------


@pytest.mark.parametrize("how", ["reset", "close"])
def test_a_post_the_provider_read_before_dropping_the_connection_is_not_sent_again(
    how: str,
) -> None:
    def make(server: Scripted) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(OK)
            await writer.drain()
            await server.read_request(reader)  # the whole second POST, then gone
            if how == "reset":
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()

        return handler

    async def check(lab: Lab) -> None:
        resp, body = await lab.fetch(job("a", "b"))
        assert (resp.status, body) == (200, b"{}")
        resp, body = await lab.fetch(job("a", "b"))
        assert resp.status == 502
        assert "not sent again" in anthropic_error(body)["message"]
        assert len(lab.server.heads) == 2, "the provider saw the second POST twice"

    with_server(make, check)


# -- 8: an answer cut short reaches the client as an error in the API's shape ---------------


def test_a_sized_answer_cut_short_is_a_502_in_the_providers_shape() -> None:
    def make(server: Scripted) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n"
                b'\r\n{"id": "msg_1", "content": '
            )
            await writer.drain()

        return handler

    async def check(lab: Lab) -> None:
        resp, body = await lab.fetch(job("a"))
        assert resp.status == 502
        assert "broke off" in anthropic_error(body)["message"]

    with_server(make, check)


def test_a_sized_answer_beyond_the_buffer_streams_and_a_cut_stays_visible() -> None:
    size = _BUFFERED + 4096
    release = asyncio.Event()

    def make(server: Scripted) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for last in (b"x", b""):  # the first answer is whole, the second is cut short
                await server.read_request(reader)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (size + 1))
                writer.write(b"x" * size)
                await writer.drain()
                await release.wait()
                writer.write(last)
                await writer.drain()

        return handler

    async def check(lab: Lab) -> None:
        for complete in (True, False):
            release.clear()
            resp = await lab.ask(job("a"))
            assert resp.status == 200 and "content-length" not in resp.lookup
            chunks, got = resp.aiter_raw(), 0
            while got < size:  # more than the buffer holds, before upstream finished
                got += len(await anext(chunks))
            release.set()
            if complete:
                assert got + sum([len(c) async for c in chunks]) == size + 1
            else:
                with pytest.raises(UpstreamError, match="broke off"):
                    async for _ in chunks:
                        pass

    with_server(make, check)


# -- 9: a token the provider echoes never reaches the client --------------------------------


def _auth(head: bytes) -> bytes:
    return head.split(b"Authorization: ")[1].split(b"\r\n")[0]


def echoing(server: Scripted, status: int, framing: str) -> Handler:
    """Answers every request with `status`, quoting its Authorization header in a header and
    in an Anthropic error body, framed as "sized", "chunked" or "gzip" (sized)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await server.read_request(reader)
            auth = _auth(server.heads[-1])
            body = b'{"type": "error", "error": {"type": "x", "message": "bad %b"}}' % auth
            head = b"HTTP/1.1 %d Oops\r\nX-Echo: %b\r\n" % (status, auth)
            if framing == "chunked":
                half = body.index(b"tok-") + 8
                writer.write(head + b"Transfer-Encoding: chunked\r\n\r\n")
                for part in (body[:half], body[half:]):
                    writer.write(b"%x\r\n%b\r\n" % (len(part), part))
                writer.write(b"0\r\n\r\n")
                continue
            if framing == "gzip":
                body, head = gzip.compress(body), head + b"Content-Encoding: gzip\r\n"
            writer.write(head + b"Content-Length: %d\r\n\r\n%b" % (len(body), body))

    return handler


@pytest.mark.parametrize(
    ("status", "framing"),
    [(401, "sized"), (400, "gzip"), (500, "chunked"), (200, "sized")],
)
def test_tokens_the_provider_echoes_are_redacted(status: int, framing: str) -> None:
    async def check(lab: Lab) -> None:
        before = lab.tokens.tokens["a"]
        resp, body = await lab.fetch(job("a"))
        sent = {_auth(h).removeprefix(b"Bearer ") for h in lab.server.heads}
        assert len(sent) == (2 if status == 401 else 1)  # a 401 is retried on a fresh token
        assert before.encode() in sent
        assert resp.status == status
        assert resp.lookup["x-echo"] == "Bearer (redacted)"
        assert b"bad Bearer (redacted)" in body
        assert "content-encoding" not in resp.lookup
        assert int(resp.lookup["content-length"]) == len(body)
        for token in sent:
            assert token not in body

    with_server(lambda server: echoing(server, status, framing), check)


def test_a_token_split_across_stream_chunks_is_redacted_without_delaying_events() -> None:
    release = asyncio.Event()

    def make(server: Scripted) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            token = _auth(server.heads[-1]).removeprefix(b"Bearer ")
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for part in (b'data: 1\n\ndata: {"seen": "' + token[:12], None, token[12:] + b'"}\n\n'):
                if part is None:
                    await writer.drain()
                    await release.wait()
                else:
                    writer.write(b"%x\r\n%b\r\n" % (len(part), part))
            writer.write(b"0\r\n\r\n")

        return handler

    async def check(lab: Lab) -> None:
        resp = await lab.ask(job("a"))
        chunks = resp.aiter_raw()
        # The first event goes at once; only the tail that begins the token waits.
        assert await anext(chunks) == b'data: 1\n\ndata: {"seen": "'
        release.set()
        rest = b"".join([c async for c in chunks])
        assert rest == b'(redacted)"}\n\n'

    with_server(make, check)


# -- 12: a bucket that starts resting gets no request sent after that -----------------------


def ok_forever(server: Scripted) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await server.read_request(reader)
            writer.write(OK)

    return handler


class GatedDial(Outbound):
    """Dials only once `gate` opens, so a test can act while a connection is being made."""

    def __init__(self) -> None:
        super().__init__(ssl.create_default_context())
        self.gate, self.dialling = asyncio.Event(), asyncio.Event()

    async def _dial(self, target: Target) -> Any:
        self.dialling.set()
        await self.gate.wait()
        return await super()._dial(target)


def test_a_bucket_that_starts_resting_while_its_token_refreshes_gets_no_request() -> None:
    async def check(lab: Lab) -> None:
        gate = lab.tokens.hold["a"] = asyncio.Event()
        answer = asyncio.create_task(lab.fetch(job("a", "b")))
        await lab.tokens.waiting.wait()
        lab.rotation.cool("anthropic", "a", 60)  # another request's 429, meanwhile
        gate.set()
        resp, _ = await answer
        assert resp.status == 200
        assert lab.used() == ["b"]

    with_server(ok_forever, check)


def test_a_bucket_that_starts_resting_while_dialling_gets_no_request() -> None:
    outbound = GatedDial()

    async def check(lab: Lab) -> None:
        answer = asyncio.create_task(lab.fetch(job("a", "b")))
        await outbound.dialling.wait()
        lab.rotation.cool("anthropic", "a", 60)
        outbound.gate.set()
        resp, _ = await answer
        assert resp.status == 200
        assert lab.used() == ["b"]
        assert lab.server.connections == 1, "the connection made for a served b"
        # A request pinned to its bucket (oauth:anthropic:a) is still sent there.
        resp, _ = await lab.fetch(job("a", pinned=True))
        assert resp.status == 200
        assert lab.used() == ["b", "a"]

    with_server(ok_forever, check, outbound)


def test_a_compressed_429_still_gives_its_reset_hint() -> None:
    """Clients ask for gzip, so a 429's body (Codex's resets_in_seconds, Google's RetryInfo)
    may come compressed: the bucket must rest as long as it says, not the default cooldown."""
    hint = gzip.compress(b'{"error": {"type": "usage_limit_reached", "resets_in_seconds": 7}}')

    def make(server: Scripted) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                await server.read_request(reader)
                if len(server.heads) == 1:
                    head = b"HTTP/1.1 429 Too Many\r\nContent-Encoding: gzip\r\n"
                    writer.write(head + b"Content-Length: %d\r\n\r\n%b" % (len(hint), hint))
                else:
                    writer.write(OK)

        return handler

    async def check(lab: Lab) -> None:
        codex = job("a", "b")
        codex.provider = PROVIDERS["codex"]  # its hint is in the body
        resp, _ = await lab.fetch(codex)
        assert resp.status == 200 and lab.used() == ["a", "b"]
        until = lab.rotation.cooling_until("codex", "a")
        assert until is not None and 5 < until - time.time() <= 7

    with_server(make, check)
