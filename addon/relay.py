"""The loopback relay that carries every injected request upstream.

mitmproxy cannot re-send a flow or stream a body an addon produces, so a request
that needs a token is pointed at this relay (a small HTTP/1.1 server on 127.0.0.1
that only mitmproxy talks to, with one-shot tickets). The relay adds the token,
calls the provider (`outbound`), rotates to the next bucket on 429 and refreshes
once on 401, and streams the winning response back chunk by chunk — also after a
retry. The token never enters mitmproxy's flow, so no view, dump or log can show it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import secrets
import socket
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field, replace
from functools import partial
from http import HTTPStatus
from typing import Any

from mitmproxy.net import encoding

from login import http1
from login.config import is_loopback_host
from login.errors import ClientError, KeyswapError, NeedsLogin
from login.providers.base import ApiCall, LocalReply, Provider, Route
from login.providers.streams import Reshaper
from login.tokens import Access, TokenService

from .buckets import Rotation
from .errors import error_body, error_headers
from .logins import Logins
from .outbound import Outbound, Response, Target, UpstreamError, UpstreamTimeout, Withdrawn
from .placeholder import KEY_HEADERS
from .ratelimit import reset_after
from .redactor import Redactor

log = logging.getLogger(__name__)

TICKET_HEADER = "x-keyswap-ticket"
_HOP_BY_HOP = {
    "connection",
    "expect",  # the relay sends the body at once
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}
_MAX_ERROR_BODY = 64 * 1024
# Sized answers and error bodies up to this size are read whole before their head goes, so
# one cut short becomes an error in the API's shape and an echoed token can be taken out
# (mitmproxy buffers sized answers anyway). Larger ones stream, chunked.
_BUFFERED = 1 << 20


@dataclass
class Job:
    """One client request waiting for the relay, with the credentials already removed."""

    provider: Provider
    route: Route
    buckets: list[str]
    pinned: bool
    method: str
    path: str  # the client's path, e.g. /v1/chat/completions
    query: list[tuple[str, str]]  # without any `key=` placeholder
    headers: list[tuple[str, str]]
    body: bytes
    # Seconds to wait for a login the proxy starts itself (`enabled = true`); None: don't.
    login_wait: float | None = None
    created: float = field(default_factory=time.monotonic)
    # Every token sent upstream for this request, to take out of what the client gets.
    sent: list[str] = field(default_factory=list)

    def call(self) -> ApiCall:
        return ApiCall(
            method=self.method,
            path=self.path.removeprefix(self.route.strip),
            query=list(self.query),
            headers=list(self.headers),
            body=self.body,
            client_path=self.path,
            client_query=list(self.query),
        )


@dataclass
class _Problems:
    """Why buckets could not serve, for the answer when none could."""

    needs_login: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


@dataclass
class Answer:
    """What the relay sends back: an upstream response to stream, or its own error."""

    status: int
    headers: list[tuple[str, str]]
    upstream: Response | None = None
    body: bytes = b""
    reshaper: Reshaper | None = None


class Relay:
    def __init__(self, tokens: TokenService, rotation: Rotation, logins: Logins) -> None:
        self.tokens = tokens
        self.rotation = rotation
        self.logins = logins
        self._jobs: dict[str, Job] = {}
        self._secret = secrets.token_urlsafe(24)
        self._serial = itertools.count()
        self._server: asyncio.Task[asyncio.Server] | None = None
        self.port = 0
        self.cooldown = 60.0
        self.outbound: Outbound | None = None

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
        if self.outbound is not None:
            self.outbound.close()

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

    # -- the retry loop ------------------------------------------------------------------

    async def run(self, job: Job) -> Answer:
        provider = job.provider.name
        problems = _Problems()
        for bucket in job.buckets:
            if self._resting(job, bucket):
                continue
            access = await self._access(provider, bucket, problems)
            if access is None:
                continue
            sent = await self._attempt(job, bucket, access, problems)
            if sent is None:
                continue
            if isinstance(sent, Answer):
                return sent
            resp, call = sent
            if resp.status == 429 and not job.pinned:
                # Decoded: the client's Accept-Encoding went upstream, so it may be gzip.
                body, _ = _decoded(await resp.read(_MAX_ERROR_BODY), resp.headers)
                hint = reset_after(resp.lookup, body)
                wait = hint if hint is not None else self.cooldown
                self.rotation.cool(provider, bucket, wait)
                log.info("keyswap: %s/%s rests %d s after a 429", provider, bucket, int(wait))
                continue
            self.rotation.served[provider, bucket] += 1
            reshaper = job.provider.reshape(call, resp.status)
            headers = _response_headers(resp, reshaper)
            return Answer(resp.status, headers, upstream=resp, reshaper=reshaper)
        if job.login_wait is not None and self._only_logins_missing(job, problems):
            return await self._after_login(job, job.login_wait)
        return self._nothing_left(job, problems)

    def _only_logins_missing(self, job: Job, problems: _Problems) -> bool:
        resting = self.rotation.soonest(job.provider.name, job.buckets) is not None
        return not resting and not problems.failures

    async def _after_login(self, job: Job, wait: float) -> Answer:
        """Log in inside the proxy (one flow shared by every waiting request), then serve
        the request on the new login."""
        bucket = job.buckets[0] if job.buckets else "default"
        session = await self.logins.start(job.provider, bucket, replace=False, announce=True)
        done, _ = await asyncio.wait([session.finished], timeout=wait)
        provider = job.provider.name
        if session.state == "done":
            return await self.run(
                replace(job, buckets=[session.bucket], pinned=True, login_wait=None)
            )
        why = session.error if done and session.error else f"did not complete within {int(wait)} s"
        msg = (
            f"the {provider} login {why}; finish it at http://keyswap.local/ "
            f"or run `python -m login {provider}`"
        )
        return _error(job.route.dialect, 401, msg)

    async def _attempt(
        self, job: Job, bucket: str, access: Access, problems: _Problems
    ) -> tuple[Response, ApiCall] | Answer | None:
        """Send on one bucket; on a 401 refresh once (or adopt what another process
        refreshed) and send again. None: this bucket cannot serve."""
        sent = await self._send(job, bucket, access)
        if sent is None or isinstance(sent, Answer) or sent[0].status != 401:
            return sent
        sent[0].aclose()
        fresh = await self._access(job.provider.name, bucket, problems, rejected=access.token)
        return None if fresh is None else await self._send(job, bucket, fresh)

    def _resting(self, job: Job, bucket: str) -> bool:
        """A 429 sends a bucket to rest; a request pinned to it goes anyway."""
        return not job.pinned and self.rotation.cooling_until(job.provider.name, bucket) is not None

    async def pick(self, job: Job) -> tuple[Access, str] | Answer:
        """The first usable bucket's token and the URL it may go to, for a request keyswap
        does not carry itself (a WebSocket upgrade)."""
        problems = _Problems()
        for bucket in job.buckets:
            if self._resting(job, bucket):
                continue
            access = await self._access(job.provider.name, bucket, problems)
            if access is None:
                continue
            call = job.call()
            to = Target.of(access.base_url, call.path, call.query)
            if not self._deliverable(job.provider, to, access.endpoints):
                return _error(job.route.dialect, 403, f"refusing to send a token to {to.host}")
            self.rotation.served[job.provider.name, bucket] += 1
            return access, f"{to.scheme}://{to.authority}{to.path}"
        return self._nothing_left(job, problems)

    async def _access(
        self, provider: str, bucket: str, problems: _Problems, rejected: str | None = None
    ) -> Access | None:
        tokens = self.tokens
        try:
            if rejected is not None:
                await tokens.refresh(provider, bucket, force=False, rejected=rejected)
            return await tokens.access(provider, bucket)
        except NeedsLogin as exc:
            problems.needs_login.append(str(exc))
        except KeyswapError as exc:
            problems.failures.append(str(exc))
        return None

    def _nothing_left(self, job: Job, problems: _Problems) -> Answer:
        provider, dialect = job.provider.name, job.route.dialect
        wait = self.rotation.soonest(provider, job.buckets)
        if wait is not None:
            n = len(job.buckets)
            msg = (
                f"every {provider} bucket ({n}) is rate limited; the next is free in "
                f"{int(wait) + 1} s. Add an account with `python -m login {provider} <name>`"
            )
            return _error(dialect, 429, msg, retry_after=wait)
        if problems.needs_login:
            return _error(dialect, 401, "; ".join(problems.needs_login))
        if problems.failures:
            return _error(dialect, 503, "; ".join(problems.failures))
        msg = f"not logged in to {provider}; run `python -m login {provider}`"
        return _error(dialect, 401, msg)

    async def _send(
        self, job: Job, bucket: str, access: Access
    ) -> tuple[Response, ApiCall] | Answer | None:
        """Send on `bucket`; None if it started resting before the request left (planned
        before another request's 429, it waited for a refresh or a connection)."""
        assert self.outbound is not None
        try:
            call = job.provider.prepare(job.call(), access.credential)
        except ClientError as exc:
            return _error(job.route.dialect, exc.status, str(exc))
        if isinstance(call, LocalReply):
            return Answer(call.status, [("content-type", call.content_type)], body=call.body)
        to = Target.of(access.base_url, call.path, call.query)
        if not self._deliverable(job.provider, to, access.endpoints):
            raise KeyswapError(f"refusing to send a {job.provider.name} token to {to.host}")
        extra = access.headers(call.path, {k.lower(): v for k, v in call.headers}, call.body)
        if job.provider.reshape(call, 200) is not None:
            # keyswap reads this body: ask only for what it can decode.
            extra["Accept-Encoding"] = "gzip, deflate"
        replaced = {k.lower() for k in extra}
        # The client's headers exactly, plus the provider's: no defaults of keyswap's own
        # (an Accept-Encoding the client never sent would change what comes back).
        headers = [(k, v) for k, v in call.headers if k.lower() not in replaced]
        headers.extend(extra.items())
        job.sent.append(access.token)
        # Asked again before dialling and right before writing: a 429 may arrive meanwhile.
        withdraw = None if job.pinned else partial(self._resting, job, bucket)
        try:
            return await self.outbound.send(call.method, to, headers, call.body, withdraw), call
        except Withdrawn:
            return None

    @staticmethod
    def _deliverable(provider: Provider, to: Target, endpoints: Any) -> bool:
        if to.scheme != "https" and not (to.scheme == "http" and is_loopback_host(to.host)):
            return False
        return provider.may_deliver_to(to.host, endpoints)


def _error(dialect: Any, status: int, message: str, retry_after: float | None = None) -> Answer:
    headers = list(error_headers(retry_after).items())
    return Answer(status, headers, body=error_body(dialect, status, message))


def forwardable(fields: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """The client's request headers that go upstream: no credentials (keyswap sets its own),
    no hop-by-hop headers, no Host (it follows the delivery URL)."""
    out = []
    for raw_key, raw_value in fields:
        key = raw_key.decode("latin-1")
        if key.lower() in _HOP_BY_HOP or key.lower() in KEY_HEADERS or key.startswith(":"):
            continue
        out.append((key, raw_value.decode("latin-1")))
    return out


def _response_headers(resp: Response, reshaper: Reshaper | None) -> list[tuple[str, str]]:
    """Upstream's headers for the client. A reshaped body is decoded and changes size, so
    its encoding and length go, and its content type may change."""
    dropped = _HOP_BY_HOP - {"content-length"}
    if reshaper is not None:
        dropped = dropped | {"content-length", "content-encoding"}
        if reshaper.content_type:
            dropped = dropped | {"content-type"}
    out = [(k, v) for k, v in resp.headers if k.lower() not in dropped]
    if reshaper is not None and reshaper.content_type:
        out.append(("content-type", reshaper.content_type))
    return out


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
            answer = _error(job.route.dialect, 400, f"a malformed request: {why}")
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
                answer = _error(job.route.dialect, 502, _describe(exc, job))
            except asyncio.CancelledError:
                return
            except Exception:
                log.exception("keyswap: internal error while relaying to %s", job.provider.name)
                answer = _error(job.route.dialect, 500, "internal error; see the proxy's log")
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
                answer_error = _error(job.route.dialect, 502, _describe(exc, job))
                await self._write(answer_error, head_only, Redactor(job.sent))
        except Exception:
            log.exception("keyswap: internal error while answering for %s", job.provider.name)
            if self.wrote:
                self._close()
            else:
                answer_error = _error(job.route.dialect, 500, "internal error; see the proxy's log")
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
                    data, headers = _decoded(data, headers)
                self._whole(status, reason, headers, redactor.whole(data), False)
                return
            # Too large to hold: it streams, and a redacted body no longer has its length.
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            body = _chain(chunks, body)
        elif reshaper is not None:
            body = _reshaped(reshaper, upstream.aiter_decoded())
        # A stream: its head goes at once, whenever the first event comes.
        self._send(_head(status, reason, [*headers, _CHUNKED]))
        async for chunk in body:
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
_DECODABLE = {"gzip", "deflate", "br", "zstd"}
_MAX_HEAD = 64 * 1024
_REASONS = {s.value: s.phrase for s in HTTPStatus}


def _describe(exc: Exception, job: Job) -> str:
    """A failure to reach the provider, without anything secret (no URL query, no headers)."""
    if isinstance(exc, KeyswapError):
        return str(exc)
    if isinstance(exc, UpstreamTimeout):
        return f"{job.provider.name}: the provider did not answer in time"
    return f"{job.provider.name}: {exc}"


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


async def _reshaped(reshaper: Reshaper, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async for chunk in body:
        if out := reshaper.feed(chunk):
            yield out
    if out := reshaper.end():
        yield out


def _decoded(data: bytes, headers: list[tuple[str, str]]) -> tuple[bytes, list[tuple[str, str]]]:
    """An error body without its content encoding, so an echoed token or a reset hint can
    be found in it (providers compress errors like anything else). As it came if it cannot
    be decoded (an unknown encoding, or cut short)."""
    coding = next((v for k, v in headers if k.lower() == "content-encoding"), "").strip().lower()
    if coding not in _DECODABLE:
        return data, headers
    try:
        plain = encoding.decode(data, coding)
    except ValueError:
        return data, headers
    if not isinstance(plain, bytes):
        return data, headers
    return plain, [(k, v) for k, v in headers if k.lower() != "content-encoding"]
