"""The loopback relay that carries every injected request upstream.

mitmproxy cannot re-send a flow or stream a body an addon produces, so a request
that needs a token is pointed at this relay (tornado, on 127.0.0.1, one-shot
tickets). The relay adds the token, calls the provider with httpx, rotates to
the next bucket on 429 and refreshes once on 401, and streams the winning
response back chunk by chunk — also after a retry. The token never enters
mitmproxy's flow, so no view, dump or log can show it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
from tornado.http1connection import HTTP1Connection
from tornado.httpserver import HTTPServer
from tornado.iostream import StreamClosedError
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from login.config import is_loopback_host
from login.errors import ClientError, KeyswapError, NeedsLogin
from login.providers.base import ApiCall, LocalReply, Provider, Route
from login.providers.streams import Reshaper
from login.tokens import Access, TokenService

from .buckets import Rotation
from .errors import error_body, error_headers
from .logins import Logins
from .placeholder import KEY_HEADERS
from .ratelimit import reset_after

log = logging.getLogger(__name__)

TICKET_HEADER = "x-keyswap-ticket"
_HOP_BY_HOP = {
    "connection",
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
    upstream: httpx.Response | None = None
    body: bytes = b""
    reshaper: Reshaper | None = None


class Relay:
    def __init__(self, tokens: TokenService, rotation: Rotation, logins: Logins) -> None:
        self.tokens = tokens
        self.rotation = rotation
        self.logins = logins
        self._jobs: dict[str, Job] = {}
        self._server: HTTPServer | None = None
        self.port = 0
        self.cooldown = 60.0
        self.client: httpx.AsyncClient | None = None

    def start(self) -> int:
        sockets = bind_sockets(0, "127.0.0.1")
        app = Application([(r".*", _RelayHandler, {"relay": self})], compress_response=False)
        self._server = HTTPServer(app, idle_connection_timeout=120, decompress_request=False)
        self._server.add_sockets(sockets)
        self.port = int(sockets[0].getsockname()[1])
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def submit(self, job: Job) -> str:
        self._expire()
        ticket = secrets.token_urlsafe(24)
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
            if not job.pinned and self.rotation.cooling_until(provider, bucket):
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
            if resp.status_code == 429 and not job.pinned:
                hint = reset_after(resp.headers, await _read_some(resp))
                wait = hint if hint is not None else self.cooldown
                self.rotation.cool(provider, bucket, wait)
                log.info("keyswap: %s/%s rests %d s after a 429", provider, bucket, int(wait))
                continue
            self.rotation.served[provider, bucket] += 1
            reshaper = job.provider.reshape(call, resp.status_code)
            headers = _response_headers(resp, reshaper)
            return Answer(resp.status_code, headers, upstream=resp, reshaper=reshaper)
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
    ) -> tuple[httpx.Response, ApiCall] | Answer | None:
        """Send on one bucket; on a 401 refresh once (or adopt what another process
        refreshed) and send again. None: this bucket cannot serve."""
        sent = await self._send(job, access)
        if isinstance(sent, Answer) or sent[0].status_code != 401:
            return sent
        await sent[0].aclose()
        fresh = await self._access(job.provider.name, bucket, problems, rejected=access.token)
        return None if fresh is None else await self._send(job, fresh)

    async def pick(self, job: Job) -> tuple[Access, httpx.URL] | Answer:
        """The first usable bucket's token and the URL it may go to, for a request keyswap
        does not carry itself (a WebSocket upgrade)."""
        problems = _Problems()
        for bucket in job.buckets:
            if not job.pinned and self.rotation.cooling_until(job.provider.name, bucket):
                continue
            access = await self._access(job.provider.name, bucket, problems)
            if access is None:
                continue
            call = job.call()
            url = httpx.URL(access.base_url + call.path, params=call.query)
            if not self._deliverable(job.provider, url, access.endpoints):
                return _error(job.route.dialect, 403, f"refusing to send a token to {url.host}")
            self.rotation.served[job.provider.name, bucket] += 1
            return access, url
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

    async def _send(self, job: Job, access: Access) -> tuple[httpx.Response, ApiCall] | Answer:
        assert self.client is not None
        try:
            call = job.provider.prepare(job.call(), access.credential)
        except ClientError as exc:
            return _error(job.route.dialect, exc.status, str(exc))
        if isinstance(call, LocalReply):
            return Answer(call.status, [("content-type", call.content_type)], body=call.body)
        url = httpx.URL(access.base_url + call.path, params=call.query)
        if not self._deliverable(job.provider, url, access.endpoints):
            raise KeyswapError(f"refusing to send a {job.provider.name} token to {url.host}")
        extra = access.headers(call.path, {k.lower(): v for k, v in call.headers}, call.body)
        replaced = {k.lower() for k in extra}
        headers = [(k, v) for k, v in call.headers if k.lower() not in replaced]
        headers.extend(extra.items())
        # A bare Request: the client's headers exactly, without httpx's defaults
        # (an Accept-Encoding the client never sent would change what comes back).
        request = httpx.Request(
            call.method,
            url,
            headers=headers,
            content=call.body,
            extensions={"timeout": self.client.timeout.as_dict()},
        )
        return await self.client.send(request, stream=True), call

    @staticmethod
    def _deliverable(provider: Provider, url: httpx.URL, endpoints: Any) -> bool:
        if url.scheme != "https" and not (url.scheme == "http" and is_loopback_host(url.host)):
            return False
        return provider.may_deliver_to(url.host, endpoints)


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


def _response_headers(resp: httpx.Response, reshaper: Reshaper | None) -> list[tuple[str, str]]:
    """Upstream's headers for the client. A reshaped body is decoded and changes size, so
    its encoding and length go, and its content type may change."""
    dropped = _HOP_BY_HOP - {"content-length"}
    if reshaper is not None:
        dropped = dropped | {"content-length", "content-encoding"}
        if reshaper.content_type:
            dropped = dropped | {"content-type"}
    out = [(k, v) for k, v in resp.headers.multi_items() if k.lower() not in dropped]
    if reshaper is not None and reshaper.content_type:
        out.append(("content-type", reshaper.content_type))
    return out


async def _read_some(resp: httpx.Response) -> bytes:
    data = bytearray()
    try:
        async for chunk in resp.aiter_bytes():
            data += chunk
            if len(data) >= _MAX_ERROR_BODY:
                break
    except httpx.HTTPError:
        pass
    finally:
        await resp.aclose()
    return bytes(data)


class _RelayHandler(RequestHandler):
    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS")

    def initialize(self, relay: Relay) -> None:
        self.relay = relay
        self._task: asyncio.Task[Any] | None = None

    def set_default_headers(self) -> None:
        for name in ("Server", "Content-Type", "Date"):
            self.clear_header(name)

    def compute_etag(self) -> None:
        return None

    def on_connection_close(self) -> None:
        # The client went away: stop reading upstream, which closes that stream too.
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def _serve(self, *args: Any) -> None:
        job = self.relay.take(self.request.headers.get(TICKET_HEADER, ""))
        if job is None:
            self.set_status(403)
            self.finish(b"")
            return
        self._task = asyncio.current_task()
        answer: Answer | None = None
        try:
            try:
                answer = await self.relay.run(job)
            except (httpx.HTTPError, KeyswapError) as exc:
                answer = _error(job.route.dialect, 502, _describe(exc, job))
            except asyncio.CancelledError:
                return
            except Exception:
                log.exception("keyswap: internal error while relaying to %s", job.provider.name)
                answer = _error(job.route.dialect, 500, "internal error; see the proxy's log")
            await self._write(answer)
        except (StreamClosedError, asyncio.CancelledError):
            pass
        except httpx.HTTPError as exc:
            # The provider broke off mid-body: end the client's stream abruptly too, so the
            # client sees an incomplete answer rather than a clean, truncated one.
            log.warning("keyswap: %s stream broke off (%s)", job.provider.name, type(exc).__name__)
            if self._headers_written:
                if isinstance(self.request.connection, HTTP1Connection):
                    self.request.connection.close()  # no final chunk: visibly incomplete
            else:
                self.clear()
                await self._write(_error(job.route.dialect, 502, _describe(exc, job)))
        finally:
            if answer is not None and answer.upstream is not None:
                await answer.upstream.aclose()

    get = head = post = delete = patch = put = options = _serve

    async def _write(self, answer: Answer) -> None:
        self.set_status(answer.status, _reason(answer))
        for key, value in answer.headers:
            self.add_header(key, value)
        if answer.upstream is None:
            self.finish(answer.body)
            return
        reshaper = answer.reshaper
        if reshaper is None:
            async for chunk in answer.upstream.aiter_raw():
                self.write(chunk)
                await self.flush()
            self.finish()
            return
        async for chunk in answer.upstream.aiter_bytes():
            if out := reshaper.feed(chunk):
                self.write(out)
                await self.flush()
        self.finish(reshaper.end())


def _reason(answer: Answer) -> str | None:
    if answer.upstream is not None:
        return answer.upstream.reason_phrase or None
    return None


def _describe(exc: Exception, job: Job) -> str:
    """A failure to reach the provider, without anything secret (no URL query, no headers)."""
    if isinstance(exc, KeyswapError):
        return str(exc)
    host = job.provider.name
    if isinstance(exc, httpx.TimeoutException):
        return f"{host}: the provider did not answer in time"
    return f"{host}: cannot reach the provider ({type(exc).__name__})"
