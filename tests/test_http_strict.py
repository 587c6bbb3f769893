"""Strict HTTP/1.1 framing on both sides of the relay (issue 14.5): an answer or a request
whose end two readers could see differently (conflicting Content-Length, Transfer-Encoding
beside Content-Length, a field name that is not a token, a folded line) is refused, not
guessed at. Upstream: an UpstreamError that reaches the client as a 502 in the API's
shape. The relay's own side: a 400, and the connection closes.

Only keyswap's public behaviour is used here (no login.http1), so these run against the
parsers before they were made strict too, and fail there."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from addon.outbound import Target, UpstreamError
from addon.relay import TICKET_HEADER
from tests.conftest import User
from tests.e2e import Stack, stack
from tests.test_addon import _broken_upstream, http_client, post_messages
from tests.test_outbound import Scripted, body_of, plain, run
from tests.test_relay import OK, Handler, Lab, anthropic_error, job, with_server
from tests.test_relay_server import _serve

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
ANSWER_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def first_then_ok(first: bytes) -> Any:
    """A server that answers its first request with `first`, every later one with 200 "ok";
    it keeps every connection open, so only the client decides to drop one."""

    def make(server: Scripted) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                await server.read_request(reader)
                writer.write(first if len(server.heads) == 1 else ANSWER_OK)

        return handler

    return make


async def scripted(first: bytes, check: Any) -> None:
    server: Scripted

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await first_then_ok(first)(server)(reader, writer)

    async with Scripted(handler) as server:
        await check(server)


# -- the relay's client: what the provider answers -------------------------------------------

# Each would be read by the old parser as a clean 200 (the last Content-Length, say).
MALFORMED_ANSWERS = {
    "two-content-lengths": HEAD + b"Content-Length: 3\r\nContent-Length: 2\r\n\r\nok",
    "content-length-list": HEAD + b"Content-Length: 3, 2\r\n\r\nok",
    "content-length-plus": HEAD + b"Content-Length: +2\r\n\r\nok",
    "space-before-colon": HEAD + b"Content-Length : 2\r\nContent-Length: 2\r\n\r\nok",
    "name-with-space": HEAD + b"X Y: z\r\nContent-Length: 2\r\n\r\nok",
    "obs-fold": HEAD + b"X-A: b\r\n c\r\nContent-Length: 2\r\n\r\nok",
    "bare-lf": HEAD + b"X-A: b\nX-Injected: c\r\nContent-Length: 2\r\n\r\nok",
    "gzip-chunked": HEAD + b"Transfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "chunk-size-0x": HEAD + b"Transfer-Encoding: chunked\r\n\r\n0x2\r\nok\r\n0\r\n\r\n",
    "status-digits": b"HTTP/1.1 \xb200 OK\r\nContent-Length: 2\r\n\r\nok",
}


@pytest.mark.parametrize("answer", MALFORMED_ANSWERS.values(), ids=MALFORMED_ANSWERS.keys())
def test_a_malformed_answer_is_an_upstream_error_and_its_connection_is_dropped(
    answer: bytes,
) -> None:
    async def check(server: Scripted) -> None:
        out = plain()
        with pytest.raises(UpstreamError, match="malformed answer"):
            await body_of(out, server.target())
        assert await body_of(out, server.target()) == (200, b"ok")
        assert server.connections == 2, "the connection of the malformed answer was used again"

    run(scripted(answer, check))


def test_identical_content_lengths_are_merged_and_the_connection_kept() -> None:
    answer = HEAD + b"Content-Length: 2\r\ncontent-length: 2\r\n\r\nok"

    async def check(server: Scripted) -> None:
        out = plain()
        resp = await out.send("GET", server.target(), [], b"")
        assert (resp.status, await resp.read(10)) == (200, b"ok")
        assert [k for k, _ in resp.headers if k.lower() == "content-length"] == ["Content-Length"]
        assert await body_of(out, server.target()) == (200, b"ok")
        assert server.connections == 1

    run(scripted(answer, check))


def test_chunked_beside_a_content_length_is_read_chunked_and_the_connection_dropped() -> None:
    """RFC 9112 §6.3: chunked governs. Whoever sent it may have meant the length, so what
    follows on the connection cannot be trusted to be the next answer (§6.1)."""
    answer = HEAD + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"

    async def check(server: Scripted) -> None:
        out = plain()
        resp = await out.send("GET", server.target(), [], b"")
        assert (resp.status, await resp.read(10)) == (200, b"ok")
        assert "content-length" not in resp.lookup  # not passed on beside chunked
        assert await body_of(out, server.target()) == (200, b"ok")
        assert server.connections == 2

    run(scripted(answer, check))


@pytest.mark.parametrize(
    "header",
    [("X A", "b"), ("X-A:", "b"), ("X-A", "b\r\nX-Injected: 1"), ("X-A", "b\nc"), ("X-A", "\0")],
    ids=["space", "colon", "crlf", "lf", "nul"],
)
def test_a_header_that_would_not_go_out_as_itself_is_refused_before_sending(
    header: tuple[str, str],
) -> None:
    async def main() -> None:
        target = Target.of("http://127.0.0.1:9", "/")  # nothing listens: refused before
        with pytest.raises(UpstreamError, match="refusing a header"):
            await plain().send("GET", target, [header], b"")

    run(main())


# -- through the relay: the client gets a 502 in the API's shape ----------------------------


@pytest.mark.parametrize("name", ["two-content-lengths", "obs-fold"])
def test_a_malformed_answer_reaches_the_client_as_a_502_in_the_apis_shape(name: str) -> None:
    async def check(lab: Lab) -> None:
        resp, body = await asyncio.wait_for(lab.fetch(job("a")), 5)  # not a hang
        assert resp.status == 502
        assert "malformed answer" in anthropic_error(body)["message"]

    with_server(first_then_ok(MALFORMED_ANSWERS[name]), check)


def test_an_answer_framed_twice_is_relayed_chunked_and_not_reused() -> None:
    answer = HEAD + b"Content-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"

    async def check(lab: Lab) -> None:
        answers = [await lab.fetch(job("a")) for _ in range(2)]
        assert [(resp.status, body) for resp, body in answers] == [(200, b"{}"), (200, b"ok")]
        assert lab.server.connections == 2

    with_server(first_then_ok(answer), check)


# -- the relay's server: what reaches it -----------------------------------------------------

MALFORMED_REQUESTS = {
    "two-content-lengths": b"Content-Length: 2\r\nContent-Length: 3\r\n",
    "content-length-list": b"Content-Length: 2, 3\r\n",
    "te-and-cl": b"Transfer-Encoding: chunked\r\nContent-Length: 2\r\n",
    "cl-and-te": b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n",
    "not-a-number": b"Content-Length: two\r\n",
    "space-before-colon": b"Content-Length : 2\r\n",
    "name-with-space": b"X Y: z\r\n",
    "obs-fold": b"X-A: b\r\n c\r\n",
}


async def _until_closed(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.read(), 5)  # all of it, up to the close
    finally:
        writer.close()


@pytest.mark.parametrize("fields", MALFORMED_REQUESTS.values(), ids=MALFORMED_REQUESTS.keys())
def test_a_malformed_request_gets_a_400_and_the_connection_closes(fields: bytes) -> None:
    request = b"POST /v1/messages HTTP/1.1\r\n%s: made-up\r\n%b\r\n{}" % (
        TICKET_HEADER.encode(),
        fields,
    )

    async def check(port: int) -> None:
        answer = await _until_closed(port, request)
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        assert b"\r\nconnection: close\r\n" in answer
        assert answer.endswith(b"\r\ncontent-length: 0\r\n\r\n")  # nothing given away

    _serve(check)


def test_a_malformed_request_with_a_live_ticket_gets_a_400_in_the_apis_shape() -> None:
    async def check(lab: Lab) -> None:
        ticket = lab.relay.submit(job("a"))
        head = b"POST /v1/messages HTTP/1.1\r\n%s: %s\r\n" % (
            TICKET_HEADER.encode(),
            ticket.encode(),
        )
        request = head + MALFORMED_REQUESTS["te-and-cl"] + b"\r\n{}"
        answer = await _until_closed(lab.relay.port, request)
        head_part, _, body = answer.partition(b"\r\n\r\n")
        assert head_part.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        error = json.loads(body)
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
        assert "Transfer-Encoding together with Content-Length" in error["error"]["message"]
        assert lab.relay.take(ticket) is None, "the ticket is spent"
        assert lab.server.heads == [], "nothing went upstream"

    with_server(first_then_ok(OK), check)


def test_identical_content_lengths_in_a_request_are_merged() -> None:
    async def check(lab: Lab) -> None:
        ticket = lab.relay.submit(job("a"))
        request = (
            b"POST /v1/messages HTTP/1.1\r\n%s: %s\r\nContent-Length: 2\r\ncontent-length: 2"
            b"\r\n\r\n{}" % (TICKET_HEADER.encode(), ticket.encode())
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", lab.relay.port)
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.close()
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")

    with_server(first_then_ok(OK), check)


# -- end to end, through mitmdump ------------------------------------------------------------


@pytest.fixture
def s(user: User, tmp_path: Path) -> Iterator[Stack]:
    with stack(user, tmp_path) as st:
        yield st


def test_a_provider_sending_two_content_lengths_gives_a_502_in_the_apis_shape(
    s: Stack, tmp_path: Path
) -> None:
    s.login_anthropic()
    answer = HEAD + b"content-length: 20\r\ncontent-length: 2\r\n\r\n{}"
    _broken_upstream(s, tmp_path, answer)
    with s.proxy() as proxy, http_client(proxy) as client:
        resp = post_messages(client)
    assert resp.status_code == 502
    assert resp.headers["content-type"] == "application/json"  # not mitmproxy's HTML page
    error = resp.json()
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    assert "conflicting Content-Length" in error["error"]["message"]


# -- the doctor ------------------------------------------------------------------------------


def _doctor_reads(answer: bytes) -> tuple[int, str, dict[str, str], bytes]:
    from login.doctor import _read_response

    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(answer)
        theirs.shutdown(socket.SHUT_WR)
        ours.settimeout(5)
        return _read_response(ours)


@pytest.mark.parametrize(
    "name", ["two-content-lengths", "content-length-list", "obs-fold", "space-before-colon"]
)
def test_the_doctor_refuses_a_malformed_answer(name: str) -> None:
    with pytest.raises(ValueError, match=r"Content-Length|header line"):
        _doctor_reads(MALFORMED_ANSWERS[name])


def test_the_doctor_merges_identical_content_lengths() -> None:
    answer = HEAD + b"Content-Length: 2\r\ncontent-length: 2\r\n\r\nok"
    assert _doctor_reads(answer) == (
        200,
        "OK",
        {"content-type": "application/json", "content-length": "2"},
        b"ok",
    )
