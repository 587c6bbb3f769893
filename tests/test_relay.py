"""The relay's retry loop and answers in process: a Relay whose token service hands out
made-up tokens, a scripted upstream, and mitmproxy's side played by keyswap's own HTTP client.
What the client gets when the provider breaks off, echoes a token, or rate limits a bucket
while a request to it is on its way."""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from pydantic import SecretStr

from addon.buckets import Rotation
from addon.outbound import Outbound, Response, Target
from addon.relay import TICKET_HEADER, Job, Relay
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


def job(*buckets: str, pinned: bool = False) -> Job:
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
    )


class Lab:
    """A relay in front of `server`, and a client that plays mitmproxy."""

    def __init__(self, server: Scripted, outbound: Outbound | None = None) -> None:
        self.server = server
        self.tokens = Tokens(f"http://127.0.0.1:{server.port}")
        self.rotation = Rotation()
        self.relay = Relay(self.tokens, self.rotation, None)  # type: ignore[arg-type]
        self.relay.outbound = outbound or Outbound(ssl.create_default_context())
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
