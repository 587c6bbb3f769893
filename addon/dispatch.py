"""Dispatch: which bucket serves a request, and what happens when one cannot.

The retry policy of the relay, as a plain object with its collaborators passed in (the
token service, the rotation, the proxy's logins and the HTTP client), so every branch can be
tried in process with fakes: buckets in order, a resting bucket skipped at the moment of
sending, a 429 rests the bucket until its reset hint and moves on, a 401 refreshes once, a
needs-login bucket is passed over, and with `enabled = true` a request that found no login
waits for one the proxy starts. Every token goes where `delivery.destination` allows.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Protocol

from mitmproxy.net import encoding

from login.errors import ClientError, KeyswapError, NeedsLogin, login_command
from login.providers.base import ApiCall, Dialect, LocalReply, Provider, Route
from login.providers.streams import Reshaper
from login.tokens import Access

from .affinity import Affinity
from .delivery import Refused, destination
from .errors import error_body, error_headers
from .logins import Logins
from .outbound import Response, Target, UpstreamTimeout, Withdrawn
from .placeholder import KEY_HEADERS
from .quota import Quota
from .rotation import Rotation

log = logging.getLogger(__name__)

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
    # The conversation the request belongs to (`sticky`), and the bucket that holds it.
    conversation: str | None = None
    held: str | None = None

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
    # Shown each chunk of a streamed answer as it passes (usage events inside a stream).
    watch: Callable[[bytes], None] | None = None


class Sender(Protocol):
    """What sends a request upstream (`outbound.Outbound`, or a test's fake)."""

    async def send(
        self,
        method: str,
        target: Target,
        headers: list[tuple[str, str]],
        body: bytes,
        withdraw: Any = None,
    ) -> Response: ...


class Tokens(Protocol):
    """What hands out access tokens (`login.tokens.TokenService`, or a test's fake)."""

    async def access(self, provider: str, bucket: str) -> Access: ...

    async def refresh(
        self, provider: str, bucket: str, *, force: bool = ..., rejected: str | None = ...
    ) -> Any: ...

    async def revoked(self, provider: str, bucket: str, token: str, why: str) -> None: ...


class Dispatch:
    def __init__(
        self,
        tokens: Tokens,
        rotation: Rotation,
        logins: Logins | None,
        sender: Sender | None = None,
        cooldown: float = 60.0,
        quota: Quota | None = None,
        affinity: Affinity | None = None,
    ) -> None:
        self.tokens = tokens
        self.rotation = rotation
        self.logins = logins
        self.sender = sender
        self.cooldown = cooldown
        self.quota = Quota() if quota is None else quota
        self.affinity = Affinity() if affinity is None else affinity

    async def run(self, job: Job) -> Answer:
        provider = job.provider.name
        problems = _Problems()
        for bucket in job.buckets:
            probe = False
            if self._resting(job, bucket):
                # A long rest is tried again now and then by one request.
                if not self.rotation.probe(provider, bucket):
                    continue
                probe = True
            access = await self._access(provider, bucket, problems)
            if access is None:
                continue
            sent = await self._attempt(job, bucket, access, problems, probe)
            if sent is None:
                continue
            if isinstance(sent, Answer):
                return sent
            resp, call = sent
            self.quota.observe(provider, bucket, job.provider.usage_from_headers(resp.lookup))
            outcome = job.provider.classify(resp.status, resp.lookup)
            if outcome == "rotate" and not job.pinned:
                # Decoded: the client's Accept-Encoding went upstream, so it may be gzip.
                body, _ = decoded(await resp.read(_MAX_ERROR_BODY), resp.headers)
                hint = job.provider.rate_limit_hint(resp.lookup, body)
                if hint is None and (until := self.quota.spent_until(provider, bucket)):
                    hint = until - time.time()  # a spent window with a known reset
                wait = hint if hint is not None else self.cooldown
                self.rotation.cool(provider, bucket, wait)
                self.quota.limited(provider, bucket, f"HTTP {resp.status}")
                why = (provider, bucket, wait, resp.status)
                log.info("keyswap: %s/%s rests %d s after a %d", *why)
                continue
            if outcome == "relogin":
                await self.tokens.revoked(provider, bucket, job.sent[-1], f"HTTP {resp.status}")
                if not job.pinned:
                    resp.aclose()
                    problems.needs_login.append(
                        f"{provider}/{bucket}: the provider refused the login (HTTP "
                        f"{resp.status}); run `{login_command(provider, bucket)}`"
                    )
                    continue
            if probe:
                log.info("keyswap: %s/%s answered again before its rest ended", provider, bucket)
                self.rotation.reset(provider, bucket)
            if job.conversation is not None and bucket != job.held and outcome != "pass":
                # The conversation moves once, and stays on its new bucket.
                self.affinity.put(provider, job.conversation, bucket)
            self.rotation.served[provider, bucket] += 1
            reshaper = job.provider.reshape(call, resp.status)
            headers = _response_headers(resp, reshaper)
            watch = None
            if job.provider.usage_event and resp.status < 400:
                watch = partial(self._watch, job.provider, bucket)
            return Answer(resp.status, headers, upstream=resp, reshaper=reshaper, watch=watch)
        if job.login_wait is not None and self._only_logins_missing(job, problems):
            return await self._after_login(job, job.login_wait)
        return self._nothing_left(job, problems)

    def _watch(self, provider: Provider, bucket: str, chunk: bytes) -> None:
        """Usage events in a passing stream (`Provider.usage_event` marks them): a substring
        test per chunk, and a parse only of the line that carries one. An event split across
        two chunks is missed; the answer's headers said the same when it began."""
        marker = provider.usage_event
        if marker is None or marker not in chunk:
            return
        for line in chunk.split(b"\n"):
            if line.startswith(b"data:") and marker in line:
                try:
                    event = json.loads(line[5:])
                except ValueError:
                    continue
                if isinstance(event, dict):
                    self.quota.observe(provider.name, bucket, provider.usage_from_event(event))

    def _only_logins_missing(self, job: Job, problems: _Problems) -> bool:
        resting = self.rotation.soonest(job.provider.name, job.buckets) is not None
        return not resting and not problems.failures

    async def _after_login(self, job: Job, wait: float) -> Answer:
        """Log in inside the proxy (one flow shared by every waiting request), then serve
        the request on the new login."""
        assert self.logins is not None, "login_wait needs the proxy's logins"
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
            f"the {provider} login {why}; run `keyswap login {provider}`, or "
            "`keyswap page` for the status page"
        )
        return error_answer(job.route.dialect, 401, msg)

    async def _attempt(
        self, job: Job, bucket: str, access: Access, problems: _Problems, probe: bool = False
    ) -> tuple[Response, ApiCall] | Answer | None:
        """Send on one bucket; when the token is refused, refresh once (or adopt what
        another process refreshed) and send again. None: this bucket cannot serve."""
        sent = await self._send(job, bucket, access, probe)
        if sent is None or isinstance(sent, Answer):
            return sent
        if job.provider.classify(sent[0].status, sent[0].lookup) != "refresh":
            return sent
        sent[0].aclose()
        fresh = await self._access(job.provider.name, bucket, problems, rejected=access.token)
        return None if fresh is None else await self._send(job, bucket, fresh, probe)

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
            try:
                to = destination(access, call.path, call.query)
            except Refused as exc:
                return error_answer(job.route.dialect, exc.status, str(exc))
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
                f"{int(wait) + 1} s. Add an account with `keyswap login {provider} <name>`"
            )
            return error_answer(dialect, 429, msg, retry_after=wait)
        if problems.needs_login:
            return error_answer(dialect, 401, "; ".join(problems.needs_login))
        if problems.failures:
            return error_answer(dialect, 503, "; ".join(problems.failures))
        msg = f"not logged in to {provider}; run `keyswap login {provider}`"
        return error_answer(dialect, 401, msg)

    async def _send(
        self, job: Job, bucket: str, access: Access, probe: bool = False
    ) -> tuple[Response, ApiCall] | Answer | None:
        """Send on `bucket`; None if it started resting before the request left (planned
        before another request's 429, it waited for a refresh or a connection)."""
        assert self.sender is not None
        try:
            call = job.provider.prepare(job.call(), access.credential)
            if isinstance(call, LocalReply):
                return Answer(call.status, [("content-type", call.content_type)], body=call.body)
            to = destination(access, call.path, call.query)
        except (ClientError, Refused) as exc:
            return error_answer(job.route.dialect, exc.status, str(exc))
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
        withdraw = None if job.pinned or probe else partial(self._resting, job, bucket)
        try:
            return await self.sender.send(call.method, to, headers, call.body, withdraw), call
        except Withdrawn:
            return None


def error_answer(
    dialect: Dialect, status: int, message: str, retry_after: float | None = None
) -> Answer:
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


def describe(exc: Exception, job: Job) -> str:
    """A failure to reach the provider, without anything secret (no URL query, no headers)."""
    if isinstance(exc, KeyswapError):
        return str(exc)
    if isinstance(exc, UpstreamTimeout):
        return f"{job.provider.name}: the provider did not answer in time"
    return f"{job.provider.name}: {exc}"


def decoded(data: bytes, headers: list[tuple[str, str]]) -> tuple[bytes, list[tuple[str, str]]]:
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


_DECODABLE = {"gzip", "deflate", "br", "zstd"}
