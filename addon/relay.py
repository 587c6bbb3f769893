"""The loopback relay that carries every injected stream back to mitmproxy.

`dispatch` adds the token, calls the provider (`outbound`), rotates to the next bucket on
429 and refreshes once on 401; `Relay.reply` turns its answer into a `Whole` (small and
sized, or an error: read whole, redacted) or a `Stream`. The addon's request hook answers a
`Whole` itself. mitmproxy cannot stream a body an addon produces, so for a `Stream` the flow
is pointed at this relay (a small HTTP/1.1 server on 127.0.0.1 that only mitmproxy talks to,
with one-shot tickets), which passes it on chunk by chunk — also after a retry. The token
never enters mitmproxy's flow, so no view, dump or log can show it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from http import HTTPStatus

from login import http1
from login.errors import KeyswapError
from login.providers.streams import BrokenStream, Reshaper

from .dispatch import Answer, Dispatch, Job, decoded, describe, error_answer
from .outbound import Response, UpstreamError
from .redactor import Redactor

log = logging.getLogger(__name__)

TICKET_HEADER = "x-keyswap-ticket"
# Sized answers and error bodies up to this size are read whole before their head goes, so
# one cut short becomes an error in the API's shape and an echoed token can be taken out
# (mitmproxy buffers sized answers anyway). Larger ones stream, chunked.
_BUFFERED = 1 << 20


@dataclass(frozen=True, slots=True)
class Whole:
    """An answer sent in one piece: its headers redacted and its length as it is now (for
    an answer to HEAD, or a 204/304, the provider's), its body redacted."""

    status: int
    reason: str  # "" for the standard phrase
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(frozen=True, slots=True)
class Stream:
    """An answer passed on as it arrives, chunked; only the relay's server can send it.
    `body` is not yet redacted: `redactor` does that chunk by chunk."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: AsyncIterator[bytes]
    redactor: Redactor
    upstream: Response

    def close(self) -> None:
        self.upstream.aclose()


class Relay:
    """The loopback server mitmproxy hands ticketed requests to; `dispatch` answers them."""

    def __init__(self, dispatch: Dispatch | None) -> None:
        self.dispatch = dispatch
        # A ticket's job, and its answer when the addon already has it (a stream).
        self._jobs: dict[str, tuple[Job, Stream | None]] = {}
        self._secret = secrets.token_urlsafe(24)
        self._serial = itertools.count()
        self._server: asyncio.Task[asyncio.Server] | None = None
        self.port = 0

    def start(self) -> int:
        """Listen at once (the kernel queues early connections); serve once the loop runs."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        sock.setblocking(False)
        self.port = int(sock.getsockname()[1])
        loop = asyncio.get_running_loop()
        self._server = loop.create_task(
            loop.create_server(lambda: _RelayConnection(self), sock=sock)
        )
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            if server.done() and server.exception() is None:
                server.result().close()
            else:
                server.cancel()

    def submit(self, job: Job, stream: Stream | None = None) -> str:
        """A ticket for `job`, to be answered with `stream` (else the relay asks dispatch)."""
        self._expire()
        # Unguessable without the secret prefix, and no system call per request.
        ticket = f"{self._secret}{next(self._serial)}"
        self._jobs[ticket] = (job, stream)
        return ticket

    def take(self, ticket: str) -> tuple[Job, Stream | None] | None:
        return self._jobs.pop(ticket, None)

    def drop(self, ticket: str) -> None:
        """The flow ended without reaching the relay: a stream waiting there is closed."""
        if (entry := self._jobs.pop(ticket, None)) is not None and entry[1] is not None:
            entry[1].close()

    def _expire(self) -> None:
        """Tickets whose flow died before reaching the relay must not pile up."""
        if len(self._jobs) < 256:
            return
        old = time.monotonic() - 300
        for ticket in [t for t, (j, _) in self._jobs.items() if j.created < old]:
            self.drop(ticket)

    async def run(self, job: Job) -> Answer:
        assert self.dispatch is not None
        return await self.dispatch.run(job)

    async def reply(self, job: Job, head_only: bool) -> Whole | Stream:
        """The answer to `job`: `Whole` when it is small and sized, an error, or bodiless;
        else a `Stream`. A failure on the way is an error in the API's shape. Cancelling
        this closes the upstream connection."""
        try:
            answer = await self.run(job)
        except (UpstreamError, KeyswapError) as exc:
            answer = error_answer(job.route.dialect, 502, describe(exc, job))
        except Exception:
            log.exception("keyswap: internal error while relaying to %s", job.provider.name)
            answer = error_answer(job.route.dialect, 500, "internal error; see the proxy's log")
        reply: Whole | Stream
        try:
            reply = await settle(answer, Redactor(job.sent), head_only)
        except UpstreamError as exc:
            # The provider broke off before a byte went to the client: an error it can read.
            log.warning("keyswap: %s stream broke off (%s)", job.provider.name, type(exc).__name__)
            reply = _error(job, 502, describe(exc, job))
        except Exception:
            log.exception("keyswap: internal error while answering for %s", job.provider.name)
            reply = _error(job, 500, "internal error; see the proxy's log")
        except BaseException:
            if answer.upstream is not None:
                answer.upstream.aclose()
            raise
        # A stream stays open for the relay's server; anything else is done with.
        if answer.upstream is not None and not isinstance(reply, Stream):
            answer.upstream.aclose()
        return reply


class _RelayConnection(asyncio.Protocol):
    """One connection from mitmproxy: requests that carry a ticket and nothing else (the
    addon moved the client's request into the Job), answered one at a time."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.busy = False
        self.closed = False
        self.wrote = False  # anything of the current answer
        self.task: asyncio.Task[None] | None = None
        self._writable: asyncio.Future[None] | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        # Events are small writes that must leave at once (asyncio sets this only for
        # sockets created with IPPROTO_TCP).
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._next()
        elif len(self.buffer) > _MAX_HEAD:
            self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        # mitmproxy went away (its client did): stop reading upstream, closing that stream.
        self.closed = True
        if self.task is not None:
            self.task.cancel()
        self.resume_writing()

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None:
            if not self._writable.done():
                self._writable.set_result(None)
            self._writable = None

    # -- requests -----------------------------------------------------------------------

    def _next(self) -> None:
        try:
            request = _read_request(self.buffer)
        except _NotOurs:
            # The addon sends nothing but the ticket: this is not keyswap's own request.
            self._close()
            return
        except http1.Malformed as exc:
            self._refuse(str(exc))
            return
        if request is None:
            return
        method, ticket, size = request
        del self.buffer[:size]
        self.busy = True
        task = asyncio.get_running_loop().create_task(self._serve(method, ticket))
        if not task.done():  # mitmproxy's loop runs tasks eagerly: it may be over already
            self.task = task

    def _refuse(self, why: str) -> None:
        """A 400 for a request whose head is malformed, then the connection closes: where
        its body ends, and so where a next request would begin, is unknown. In the API's
        shape if it carries a live ticket (the ticket is spent), else as bare as the 403
        for a request without one."""
        found = _TICKET_LINE.search(self.buffer, 0, self.buffer.find(b"\r\n\r\n") + 2)
        ticket = found[1].decode("ascii") if found else ""  # before the buffer it views goes
        self.buffer.clear()
        self.busy = True  # nothing more is read from this connection
        taken = self.relay.take(ticket) if ticket else None
        headers, body = [("connection", "close")], b""
        if taken is not None:
            job, stream = taken
            if stream is not None:
                stream.close()
            answer = error_answer(job.route.dialect, 400, f"a malformed request: {why}")
            headers, body = [*answer.headers, *headers], answer.body
        self._send(_head(400, "Bad Request", [*headers, ("content-length", str(len(body)))]) + body)
        self._close()

    async def _serve(self, method: str, ticket: str) -> None:
        try:
            taken = self.relay.take(ticket)
            if taken is None:
                self._send(_head(403, "Forbidden", [("content-length", "0")]))
                return
            await self._relay(*taken, method == "HEAD")
        finally:
            self.busy = False
            self.task = None
            if self.buffer and not self.closed:
                self._next()

    async def _relay(self, job: Job, reply: Whole | Stream | None, head_only: bool) -> None:
        """Send the answer to `job`: `reply` when the addon already has it, else asked for."""
        self.wrote = False
        try:
            if reply is None:
                reply = await self.relay.reply(job, head_only)
            if isinstance(reply, Whole):
                self._send(wire(reply, head_only))
            else:
                await self._stream(reply)
        except asyncio.CancelledError:
            pass
        except UpstreamError as exc:
            # The provider broke off mid-body: end the client's stream abruptly too, so the
            # client sees an incomplete answer rather than a clean, truncated one.
            log.warning("keyswap: %s stream broke off (%s)", job.provider.name, type(exc).__name__)
            self._broken(job, 502, describe(exc, job), head_only)
        except BrokenStream as exc:
            # The provider's body could not be read (a reshaper found it corrupt): the same.
            log.warning("keyswap: %s answer was broken (%s)", job.provider.name, exc)
            self._broken(job, 502, f"{job.provider.name}: {exc}", head_only)
        except Exception:
            log.exception("keyswap: internal error while answering for %s", job.provider.name)
            self._broken(job, 500, "internal error; see the proxy's log", head_only)
        finally:
            if isinstance(reply, Stream):
                reply.close()

    def _broken(self, job: Job, status: int, message: str, head_only: bool) -> None:
        if self.wrote:
            self._close()  # no final chunk: visibly incomplete
        else:
            self._send(wire(_error(job, status, message), head_only))

    async def _stream(self, stream: Stream) -> None:
        """A stream's head goes at once, whenever the first event comes; then each chunk,
        with every token sent for it taken out."""
        redactor = stream.redactor
        self._send(_head(stream.status, stream.reason, stream.headers))
        async for chunk in stream.body:
            if out := redactor.feed(chunk):
                await self._pass(_chunk(out))
        out = redactor.end()
        self._send((_chunk(out) if out else b"") + b"0\r\n\r\n")

    def _send(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)
            self.wrote = True

    async def _pass(self, data: bytes) -> None:
        if self.closed:
            raise asyncio.CancelledError
        self._send(data)
        if self._writable is not None:
            await self._writable

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def settle(answer: Answer, redactor: Redactor, head_only: bool) -> Whole | Stream:
    """`answer` as the client gets it, with every token `redactor` knows taken out: read
    whole if it is an error or sized (up to _BUFFERED; the client cannot tell, mitmproxy
    buffers sized answers anyway), else a stream. UpstreamError if it breaks off first."""
    status, headers = answer.status, redactor.headers(answer.headers)
    upstream = answer.upstream
    if upstream is None:
        return _whole(status, "", headers, redactor.whole(answer.body))
    reason = upstream.reason
    if head_only or status in (204, 304):
        return Whole(status, reason, headers, b"")
    reshaper = answer.reshaper
    body = upstream.aiter_raw()
    if reshaper is None and (status >= 400 or _sized(headers)):
        chunks, complete = await _gather(body, _BUFFERED)
        if complete:
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            if status >= 400:
                data, headers = decoded(data, headers)
            return _whole(status, reason, headers, redactor.whole(data))
        # Too large to hold: it streams, and a redacted body no longer has its length.
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        body = _chain(chunks, body)
    elif reshaper is not None:
        body = _reshaped(reshaper, upstream.aiter_decoded(), answer.watch)
    elif answer.watch is not None:
        body = _watched(body, answer.watch)
    return Stream(status, reason, [*headers, _CHUNKED], body, redactor, upstream)


def wire(whole: Whole, head_only: bool) -> bytes:
    """`whole` as HTTP/1.1, in one piece."""
    return _head(whole.status, whole.reason, whole.headers) + (b"" if head_only else whole.body)


def _whole(status: int, reason: str, headers: list[tuple[str, str]], body: bytes) -> Whole:
    """A complete answer, its length as it is now (redaction changes it)."""
    headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
    headers.append(("content-length", str(len(body))))
    return Whole(status, reason, headers, body)


def _error(job: Job, status: int, message: str) -> Whole:
    """keyswap's own error for `job`, redacted like anything else sent for it."""
    answer = error_answer(job.route.dialect, status, message)
    redactor = Redactor(job.sent)
    return _whole(status, "", redactor.headers(answer.headers), redactor.whole(answer.body))


class _NotOurs(Exception):
    """A request the addon never sends (a body, or a head past the limit)."""


def _read_request(buffer: bytearray) -> tuple[str, str, int] | None:
    """The method, ticket and size (head and body) of the request at the start of `buffer`;
    None while it is incomplete. http1.Malformed for a head no HTTP/1.1 client may send:
    conflicting Content-Length, Transfer-Encoding beside Content-Length (the two framings
    are how requests are smuggled past a proxy that reads the other one), a field name that
    is not a token, a folded line."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > _MAX_HEAD:
            raise _NotOurs
        return None
    start = buffer.find(b"\r\n")
    method = http1.request_method(bytes(buffer[:start]))
    head = http1.fields(bytes(buffer[start + 2 : end + 2]))
    if head.ambiguous:
        raise http1.Malformed("Transfer-Encoding together with Content-Length")
    length = head.length or 0
    if head.chunked or length > _MAX_HEAD:
        raise _NotOurs
    if len(buffer) < end + 4 + length:
        return None
    ticket = next((v for k, v in head.headers if k.lower() == TICKET_HEADER), "")
    return method, ticket, end + 4 + length


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def _head(status: int, reason: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason or _REASONS.get(status, 'Status')}"]
    lines.extend(f"{k}: {v}" for k, v in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


_CHUNKED = ("transfer-encoding", "chunked")
# A ticket is token_urlsafe and a serial number.
_TICKET_LINE = re.compile(
    rb"\r\n" + TICKET_HEADER.encode() + rb":[ \t]*([A-Za-z0-9_-]+)[ \t]*\r\n", re.I
)
_MAX_HEAD = 64 * 1024
_REASONS = {s.value: s.phrase for s in HTTPStatus}


def _sized(headers: list[tuple[str, str]]) -> bool:
    return any(k.lower() == "content-length" for k, _ in headers)


async def _gather(body: AsyncIterator[bytes], limit: int) -> tuple[list[bytes], bool]:
    """The body's chunks, and whether that is all of it: reading stops past `limit`."""
    chunks, size = [], 0
    async for chunk in body:
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return chunks, False
    return chunks, True


async def _chain(first: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in first:
        yield chunk
    async for chunk in rest:
        yield chunk


async def _watched(
    body: AsyncIterator[bytes], watch: Callable[[bytes], None]
) -> AsyncIterator[bytes]:
    async for chunk in body:
        watch(chunk)
        yield chunk


async def _reshaped(
    reshaper: Reshaper, body: AsyncIterator[bytes], watch: Callable[[bytes], None] | None
) -> AsyncIterator[bytes]:
    async for chunk in body:
        if watch is not None:
            watch(chunk)
        if out := reshaper.feed(chunk):
            yield out
    if out := reshaper.end():
        yield out
