"""The loopback relay that carries every injected request upstream.

mitmproxy cannot re-send a flow or stream a body an addon produces, so a request
that needs a token is pointed at this relay (a small HTTP/1.1 server on 127.0.0.1
that only mitmproxy talks to, with one-shot tickets). `dispatch` adds the token,
calls the provider (`outbound`), rotates to the next bucket on 429 and refreshes
once on 401; the relay streams the winning response back chunk by chunk — also after
a retry. The token never enters mitmproxy's flow, so no view, dump or log can show it.
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
from http import HTTPStatus

from login import http1
from login.errors import KeyswapError
from login.providers.streams import Reshaper

from .dispatch import Answer, Dispatch, Job, decoded, describe, error_answer
from .outbound import UpstreamError
from .redactor import Redactor

log = logging.getLogger(__name__)

TICKET_HEADER = "x-keyswap-ticket"
# Sized answers and error bodies up to this size are read whole before their head goes, so
# one cut short becomes an error in the API's shape and an echoed token can be taken out
# (mitmproxy buffers sized answers anyway). Larger ones stream, chunked.
_BUFFERED = 1 << 20


class Relay:
    """The loopback server mitmproxy hands ticketed requests to; `dispatch` answers them."""

    def __init__(self, dispatch: Dispatch | None) -> None:
        self.dispatch = dispatch
        self._jobs: dict[str, Job] = {}
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

    def submit(self, job: Job) -> str:
        self._expire()
        # Unguessable without the secret prefix, and no system call per request.
        ticket = f"{self._secret}{next(self._serial)}"
        self._jobs[ticket] = job
        return ticket

    def take(self, ticket: str) -> Job | None:
        return self._jobs.pop(ticket, None)

    def drop(self, ticket: str) -> None:
        self._jobs.pop(ticket, None)

    def _expire(self) -> None:
        """Tickets whose flow died before reaching the relay must not pile up."""
        if len(self._jobs) < 256:
            return
        old = time.monotonic() - 300
        for ticket in [t for t, j in self._jobs.items() if j.created < old]:
            del self._jobs[ticket]

    async def run(self, job: Job) -> Answer:
        assert self.dispatch is not None
        return await self.dispatch.run(job)


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
        job = self.relay.take(ticket) if ticket else None
        headers, body = [("connection", "close")], b""
        if job is not None:
            answer = error_answer(job.route.dialect, 400, f"a malformed request: {why}")
            headers, body = [*answer.headers, *headers], answer.body
        self._send(_head(400, "Bad Request", [*headers, ("content-length", str(len(body)))]) + body)
        self._close()

    async def _serve(self, method: str, ticket: str) -> None:
        try:
            job = self.relay.take(ticket)
            if job is None:
                self._send(_head(403, "Forbidden", [("content-length", "0")]))
                return
            await self._relay(job, method == "HEAD")
        finally:
            self.busy = False
            self.task = None
            if self.buffer and not self.closed:
                self._next()

    async def _relay(self, job: Job, head_only: bool) -> None:
        answer: Answer | None = None
        self.wrote = False
        try:
            try:
                answer = await self.relay.run(job)
            except (UpstreamError, KeyswapError) as exc:
                answer = error_answer(job.route.dialect, 502, describe(exc, job))
            except asyncio.CancelledError:
                return
            except Exception:
                log.exception("keyswap: internal error while relaying to %s", job.provider.name)
                answer = error_answer(job.route.dialect, 500, "internal error; see the proxy's log")
            await self._write(answer, head_only, Redactor(job.sent))
        except asyncio.CancelledError:
            pass
        except UpstreamError as exc:
            # The provider broke off mid-body: end the client's stream abruptly too, so the
            # client sees an incomplete answer rather than a clean, truncated one.
            log.warning("keyswap: %s stream broke off (%s)", job.provider.name, type(exc).__name__)
            if self.wrote:
                self._close()  # no final chunk: visibly incomplete
            else:
                answer_error = error_answer(job.route.dialect, 502, describe(exc, job))
                await self._write(answer_error, head_only, Redactor(job.sent))
        except Exception:
            log.exception("keyswap: internal error while answering for %s", job.provider.name)
            if self.wrote:
                self._close()
            else:
                answer_error = error_answer(
                    job.route.dialect, 500, "internal error; see the proxy's log"
                )
                await self._write(answer_error, head_only, Redactor(job.sent))
        finally:
            if answer is not None and answer.upstream is not None:
                answer.upstream.aclose()

    async def _write(self, answer: Answer, head_only: bool, redactor: Redactor) -> None:
        """Send `answer`, with every token sent for it taken out of its headers and body."""
        status, headers = answer.status, redactor.headers(answer.headers)
        upstream = answer.upstream
        if upstream is None:
            self._whole(status, "", headers, redactor.whole(answer.body), head_only)
            return
        reason = upstream.reason
        if head_only or status in (204, 304):
            self._send(_head(status, reason, headers))
            return
        reshaper = answer.reshaper
        body = upstream.aiter_raw()
        if reshaper is None and (status >= 400 or _sized(headers)):
            chunks, complete = await _gather(body, _BUFFERED)
            if complete:
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                if status >= 400:
                    data, headers = decoded(data, headers)
                self._whole(status, reason, headers, redactor.whole(data), False)
                return
            # Too large to hold: it streams, and a redacted body no longer has its length.
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            body = _chain(chunks, body)
        elif reshaper is not None:
            body = _reshaped(reshaper, upstream.aiter_decoded(), answer.watch)
            answer.watch = None
        # A stream: its head goes at once, whenever the first event comes.
        self._send(_head(status, reason, [*headers, _CHUNKED]))
        watch = answer.watch
        async for chunk in body:
            if watch is not None:
                watch(chunk)
            if out := redactor.feed(chunk):
                await self._pass(_chunk(out))
        out = redactor.end()
        self._send((_chunk(out) if out else b"") + b"0\r\n\r\n")

    def _whole(
        self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes, head_only: bool
    ) -> None:
        """A complete answer in one write, its length as it is now (redaction changes it)."""
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        headers.append(("content-length", str(len(body))))
        self._send(_head(status, reason, headers) + (b"" if head_only else body))

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
