"""The request hook's own answers: an answer read whole becomes the flow's response in the
hook, with no hop through the relay; a stream goes to the relay with the answer already in
hand; a stream whose flow dies first, or a request whose client leaves, is closed upstream.
The relay's Lab from test_relay (a scripted upstream, made-up tokens), the addon's hooks."""

from __future__ import annotations

import asyncio
import json

import pytest
from mitmproxy.connection import ConnectionState
from mitmproxy.http import HTTPFlow
from mitmproxy.test import tflow, tutils

from addon import injector as injector_module
from addon.injector import Injector
from addon.outbound import Target
from addon.relay import TICKET_HEADER
from addon.settings import Settings
from tests.test_outbound import Handler, Scripted
from tests.test_relay import OK, Lab, job, with_server

SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)
EVENT = b"data: {}\n\n"


def _hooks(lab: Lab) -> Injector:
    injector = Injector(Settings())
    injector.relay = lab.relay
    return injector


def _flow() -> HTTPFlow:
    req = tutils.treq(host="api.anthropic.com", port=443, scheme=b"https", path=b"/v1/messages")
    return tflow.tflow(req=req)


def test_a_sized_answer_is_the_flows_response_and_never_reaches_the_relay() -> None:
    async def check(lab: Lab) -> None:
        hooks, flow, j = _hooks(lab), _flow(), job("a")
        request = flow.request.data
        await hooks._serve(flow, j)
        assert flow.response is not None and flow.response.status_code == 200
        assert flow.response.raw_content == b"{}"
        assert flow.response.headers["content-length"] == "2"
        assert flow.request.data is request and flow.request.host == "api.anthropic.com"
        assert TICKET_HEADER not in flow.request.headers
        assert lab.relay.take("") is None and not lab.relay._jobs  # no ticket was made
        assert lab.server.connections == 1 and len(lab.server.heads) == 1

    def make(server: Scripted) -> Handler:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(OK)
            await reader.read()

        return serve

    with_server(make, check)


def test_an_echoed_token_is_redacted_in_the_hooks_answer_too() -> None:
    async def check(lab: Lab) -> None:
        hooks, flow = _hooks(lab), _flow()
        await hooks._serve(flow, job("a"))
        assert flow.response is not None and flow.response.status_code == 400
        body = flow.response.raw_content or b""
        assert lab.tokens.tokens["a"].encode() not in body and b"(redacted)" in body
        assert flow.response.headers["content-length"] == str(len(body))

    def make(server: Scripted) -> Handler:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)
            token = head.split(b"Authorization: Bearer ")[1].split(b"\r\n")[0]
            body = json.dumps({"error": f"bad key {token.decode()}"}).encode()
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n" % len(body))
            writer.write(body)
            await reader.read()

        return serve

    with_server(make, check)


def test_a_stream_goes_to_the_relay_with_its_answer_in_hand() -> None:
    async def check(lab: Lab) -> None:
        hooks, flow = _hooks(lab), _flow()
        await hooks._serve(flow, job("a"))
        assert flow.response is None
        req = flow.request
        assert (req.host, req.port, req.scheme) == ("127.0.0.1", lab.relay.port, "http")
        ticket = req.headers[TICKET_HEADER]
        assert len(lab.server.heads) == 1  # asked once, by the hook
        to = Target.of(f"http://127.0.0.1:{lab.relay.port}", "/")
        resp = await lab.client.send("POST", to, [(TICKET_HEADER, ticket)], b"")
        assert resp.status == 200
        body = b"".join([c async for c in resp.aiter_raw()])
        assert body == EVENT * 2
        assert len(lab.server.heads) == 1, "the relay did not ask again"
        hooks.responseheaders(flow)
        assert flow.request.host == "api.anthropic.com"

    def make(server: Scripted) -> Handler:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(SSE_HEAD)
            for _ in range(2):
                writer.write(b"%x\r\n%b\r\n" % (len(EVENT), EVENT))
            writer.write(b"0\r\n\r\n")
            await reader.read()

        return serve

    with_server(make, check)


def test_a_stream_whose_flow_dies_before_the_relay_is_closed_upstream() -> None:
    closed = asyncio.Event()

    async def check(lab: Lab) -> None:
        hooks, flow = _hooks(lab), _flow()
        await hooks._serve(flow, job("a"))
        assert TICKET_HEADER in flow.request.headers
        hooks.error(flow)  # mitmproxy could not reach the relay, say
        await asyncio.wait_for(closed.wait(), 5)
        assert not lab.relay._jobs and flow.request.host == "api.anthropic.com"

    def make(server: Scripted) -> Handler:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(SSE_HEAD + b"%x\r\n%b\r\n" % (len(EVENT), EVENT))
            await reader.read()  # until keyswap closes the connection
            closed.set()

        return serve

    with_server(make, check)


def test_a_client_that_leaves_while_waiting_closes_the_request_upstream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(injector_module, "_WATCH_SECONDS", 0.05)
    asked, closed = asyncio.Event(), asyncio.Event()

    async def check(lab: Lab) -> None:
        hooks, flow = _hooks(lab), _flow()
        serving = asyncio.create_task(hooks._serve(flow, job("a")))
        await asyncio.wait_for(asked.wait(), 5)
        await asyncio.sleep(0.1)
        assert not serving.done(), "still waiting: the client is there"
        flow.client_conn.state = ConnectionState.CLOSED
        await asyncio.wait_for(serving, 5)
        await asyncio.wait_for(closed.wait(), 5)
        assert flow.error is not None and flow.response is None  # killed, nothing sent on
        assert flow.request.host == "api.anthropic.com" and not lab.relay._jobs

    def make(server: Scripted) -> Handler:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            asked.set()
            await reader.read()  # never answers; returns when keyswap closes
            closed.set()

        return serve

    with_server(make, check)
