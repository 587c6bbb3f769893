"""The status page and management API at http://keyswap.local/ (and https:// via mitmproxy's CA).

Served by the addon itself, through the proxy, to clients on this machine only. No token
ever appears in an answer.

    GET  /auth?t=<link token>                   trade a one-time link for a page session
    GET  /                                      the status page (addon/page/)
    GET  /api/auth/providers                    every provider, its buckets and running logins
    GET  /api/auth/status/:provider             one provider
    GET  /api/auth/models/:provider?bucket=     the account's models
    GET  /api/usage                             every bucket's quota windows, cooldown, traffic
    POST /api/auth/login/:provider?bucket=      start a login; answers with the code or URL
    POST /api/auth/paste/:provider?bucket=      feed a pasted code / redirect URL to a login
    POST /api/auth/cancel/:provider?bucket=     stop a running login
    POST /api/auth/logout/:provider?bucket=     forget a login (`all=1`: every bucket)
    POST /api/buckets/:provider/:bucket/reset   end a bucket's cooldown

Any program on this machine can reach this API through the proxy, so nothing it can fetch
grants anything. Every API call needs one of:

- the per-install secret (`X-Keyswap-Secret`, the contents of `<data dir>/manage.secret`,
  0600): everything. For scripts and `keyswap login`.
- a page session: the cookie a browser gets for a one-time link from `keyswap page`
  (signed with that secret, see login/page.py). Reads need the cookie; state changes also
  the CSRF token the page carries (`X-Keyswap-CSRF`), bound to that session.
- a client secret of `[clients.*]` (`X-Keyswap-Client`): only the providers and buckets its
  `allow` admits, without accounts, running logins or last errors; it may reset its
  buckets' cooldowns but not log in, paste, cancel or log out.

Anything else gets a 401 saying so. A request whose `Origin` is another site is refused
outright, and no CORS headers are ever sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import json
import logging
import os
import re
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
from mitmproxy import http
from mitmproxy.net.tls import starts_like_tls_record
from mitmproxy.proxy import layer, layers

from login import usage
from login.config import BUCKET_PATTERN, ClientSettings, is_loopback_host
from login.errors import KeyswapError
from login.page import LINK_PATH, LINK_TTL, SECRET_MIN, Link, LinkError, verify
from login.providers import PROVIDERS
from login.providers.base import Provider
from login.redact import REDACTED
from login.store.paths import MANAGE_SECRET, data_dir, private_dir, read_private, write_private
from login.tokens import Entry

from .admission import client_for, is_loopback_client
from .delivery import Refused, destination
from .injector import Injector
from .logins import LoginSession

log = logging.getLogger(__name__)

HOST = "keyswap.local"
ORIGINS = frozenset({"http://keyswap.local", "https://keyswap.local"})
SECRET_FILE = MANAGE_SECRET
SECRET_HEADER = "X-Keyswap-Secret"
CLIENT_HEADER = "X-Keyswap-Client"
CSRF_HEADER = "X-Keyswap-CSRF"
COOKIE = "keyswap_session"
SESSION_TTL = 12 * 3600  # a page session lasts a working day; a restart ends it sooner
MAX_SESSIONS = 16  # browsers holding a session; the oldest goes first
MAX_LINKS = 256  # links spent within LINK_TTL; beyond, new ones wait (a replay never works)
PAGE_DIR = Path(__file__).with_name("page")
DEFAULT_BUCKET = "default"

READY_WAIT = 15.0  # how long POST /login waits for the code or URL before answering
FINISHED_SHOWN = 300.0  # a finished login stays listed this long
HISTORY_INTERVAL = 10.0
HISTORY_POINTS = 30
_BUCKET = re.compile(BUCKET_PATTERN)
_STATIC = {
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class ApiError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def _json(data: Any, status: int = 200) -> Reply:
    return Reply(status, json.dumps(data, separators=(",", ":")).encode())


def _html(status: int, body: bytes) -> Reply:
    return Reply(status, body, "text/html; charset=utf-8", {"content-security-policy": _CSP})


# -- the per-install secret -------------------------------------------------------------------


def load_secret(directory: Path | None = None) -> str:
    """The management secret, created (0600, in the 0700 data dir) on first use. Two proxies
    starting at once agree on one: the file appears atomically, and the loser reads it."""
    directory = private_dir(directory or data_dir())
    path = directory / SECRET_FILE
    try:
        found: str | None = read_private(path).decode("ascii", "replace").strip()
    except FileNotFoundError:
        found = None
    if found is not None and len(found) >= SECRET_MIN:
        return found
    secret = secrets.token_urlsafe(32)
    if found is not None:  # there, but damaged (empty, truncated): replace it
        write_private(path, secret.encode() + b"\n")
        return secret
    tmp = directory / f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(secret.encode() + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return read_private(path).decode("ascii", "replace").strip()
    finally:
        tmp.unlink(missing_ok=True)
    return secret


# -- who is asking ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Given:
    """The credentials a request carried, taken out of its flow (which keeps "(redacted)")
    before anything else looks at it."""

    secret: str | None = None
    client: str | None = None
    csrf: str | None = None
    cookie: str | None = None
    link: str | None = None


@dataclass(frozen=True)
class Caller:
    """The user (the secret, or the page's session), or a client of a shared proxy, which
    sees and resets only what its `allow` admits."""

    client: ClientSettings | None = None

    def admits(self, provider: str, bucket: str | None = None) -> bool:
        return self.client is None or self.client.admits(provider, bucket)

    def require(self, provider: str, bucket: str | None = None) -> None:
        if not self.admits(provider, bucket):
            what = f"{provider}/{bucket}" if bucket else provider
            raise ApiError(403, f"this client may not use {what}")


@dataclass
class PageSession:
    csrf: str
    expires: float


class PageSessions:
    """Browsers that opened a one-time link, and the links spent on them. Only in the
    proxy's memory: a restart ends every session."""

    def __init__(self) -> None:
        self._sessions: dict[str, PageSession] = {}  # by the cookie's digest
        self._spent: dict[str, tuple[int, str]] = {}  # nonce -> (link expiry, session key)

    def open(self, link: Link, now: float) -> tuple[str, PageSession]:
        """Trade a link not used before for a new session: its cookie value and itself."""
        self._prune(now)
        spent = self._spent.get(link.nonce)
        if spent is not None:
            # Used twice: one of the two was not the user, so neither keeps the session.
            self._sessions.pop(spent[1], None)
            raise LinkError("this link was already used; the session it opened is now closed")
        if len(self._spent) >= MAX_LINKS:
            raise LinkError(f"too many links in the last {LINK_TTL // 60} minutes")
        cookie = secrets.token_urlsafe(32)
        key = _digest(cookie)
        session = PageSession(secrets.token_urlsafe(32), now + SESSION_TTL)
        self._spent[link.nonce] = (link.expires, key)
        self._sessions[key] = session
        while len(self._sessions) > MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]
        return cookie, session

    def find(self, cookie: str | None, now: float) -> PageSession | None:
        session = self._sessions.get(_digest(cookie)) if cookie else None
        return session if session is not None and session.expires > now else None

    def _prune(self, now: float) -> None:
        # A nonce need be remembered only until its link expires: verify() refuses it then.
        self._spent = {n: v for n, v in self._spent.items() if v[0] > now}
        self._sessions = {k: v for k, v in self._sessions.items() if v.expires > now}


def _digest(cookie: str) -> str:
    """Sessions are looked up by a digest, so the lookup's timing says nothing of the cookie."""
    return hashlib.sha256(cookie.encode()).hexdigest()


def take_credentials(req: http.Request) -> Given:
    """What the request carries, leaving "(redacted)" in the flow mitmproxy shows and saves."""
    headers = req.headers
    link = req.query.get("t") if req.path.split("?", 1)[0] == LINK_PATH else None
    given = Given(
        secret=headers.get(SECRET_HEADER),
        client=headers.get(CLIENT_HEADER),
        csrf=headers.get(CSRF_HEADER),
        cookie=req.cookies.get(COOKIE),
        link=link,
    )
    for name in (SECRET_HEADER, CLIENT_HEADER, CSRF_HEADER, "cookie"):
        if name in headers:
            headers[name] = REDACTED
    if link is not None:
        req.path = f"{LINK_PATH}?t={REDACTED}"
    return given


# -- requests per bucket over time ------------------------------------------------------------

Key = tuple[str, str]


class History:
    """Requests served and 429s per bucket, in `interval`-second slots, newest last; the
    slot in progress is included so the page shows traffic at once."""

    def __init__(self, interval: float = HISTORY_INTERVAL, points: int = HISTORY_POINTS) -> None:
        self.interval, self.points = interval, points
        self._last: dict[Key, tuple[int, int]] = {}
        self._slots: dict[Key, deque[tuple[int, int]]] = {}

    def sample(self, served: dict[Key, int], limited: dict[Key, int]) -> None:
        for key in set(served) | set(limited) | set(self._slots):
            now = (served.get(key, 0), limited.get(key, 0))
            last = self._last.get(key, (0, 0))
            slots = self._slots.setdefault(key, deque(maxlen=self.points - 1))
            slots.append((max(0, now[0] - last[0]), max(0, now[1] - last[1])))
            self._last[key] = now

    def series(self, key: Key, served: int, limited: int) -> dict[str, Any]:
        last = self._last.get(key, (0, 0))
        slots = [*self._slots.get(key, ()), (max(0, served - last[0]), max(0, limited - last[1]))]
        slots = [(0, 0)] * (self.points - len(slots)) + slots
        return {
            "interval": self.interval,
            "served": [s for s, _ in slots],
            "limited": [n for _, n in slots],
        }


# -- the addon --------------------------------------------------------------------------------


Handler = Callable[[http.HTTPFlow, dict[str, str], Caller], Awaitable[Reply]]


# `[providers.<name>] enabled` as the page and API show it, and what each value does.
_ENABLED: dict[bool | None, tuple[str, str]] = {
    True: ("on", "served; a request with no usable login starts the login in the proxy"),
    False: ("off", "placeholders for {name} are refused (enabled = false in the config)"),
    None: (
        "not set",
        "served with the logins made by `keyswap login {name}`; no login on first use "
        "(`keyswap enable {name}` turns that on)",
    ),
}


class Manage:
    """Answers http(s)://keyswap.local/ inside the proxy."""

    def __init__(self, injector: object) -> None:
        if not isinstance(injector, Injector):
            raise TypeError(f"Manage needs the keyswap Injector, not {type(injector).__name__}")
        self.injector: Injector = injector
        self.history = History()
        self.secret: str | None = None
        self.sessions = PageSessions()
        self._secret_error: str | None = None
        self._page: dict[str, bytes] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._secret_task: asyncio.Task[Any] | None = None
        # (method, path, handler, only the user's: not for clients of [clients.*])
        self._routes: list[tuple[str, re.Pattern[str], Handler, bool]] = [
            ("GET", re.compile(r"/api/auth/providers"), self._providers, False),
            ("GET", re.compile(r"/api/auth/status/(?P<provider>[^/]+)"), self._status, False),
            ("GET", re.compile(r"/api/auth/models/(?P<provider>[^/]+)"), self._models, False),
            ("GET", re.compile(r"/api/usage"), self._usage, False),
            ("POST", re.compile(r"/api/auth/login/(?P<provider>[^/]+)"), self._login, True),
            ("POST", re.compile(r"/api/auth/paste/(?P<provider>[^/]+)"), self._paste, True),
            ("POST", re.compile(r"/api/auth/cancel/(?P<provider>[^/]+)"), self._cancel, True),
            ("POST", re.compile(r"/api/auth/logout/(?P<provider>[^/]+)"), self._logout, True),
            (
                "POST",
                re.compile(r"/api/buckets/(?P<provider>[^/]+)/(?P<bucket>[^/]+)/reset"),
                self._reset,
                False,
            ),
        ]

    # -- lifecycle ---------------------------------------------------------------------------

    def running(self) -> None:
        self._secret_task = self._spawn(self._load_secret())
        self._spawn(self._sample())

    def done(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _load_secret(self) -> None:
        try:
            self.secret = await asyncio.to_thread(load_secret)
        except (OSError, KeyswapError) as exc:
            self._secret_error = str(exc)
            log.error(
                "keyswap: the management secret is unusable (%s); keyswap.local is read-only", exc
            )

    async def _sample(self) -> None:
        while True:
            await asyncio.sleep(self.history.interval)
            rotation = self.injector.rotation
            self.history.sample(dict(rotation.served), dict(rotation.limited))

    # -- hooks -------------------------------------------------------------------------------

    def http_connect(self, flow: http.HTTPFlow) -> None:
        """HTTPS to keyswap.local: answer the CONNECT ourselves, never dial the name."""
        if flow.response is not None or _host(flow.request.host) != HOST:
            return
        if not is_loopback_client(flow):
            flow.response = http.Response.make(403, _REMOTE, {"content-type": "text/plain"})
            return
        flow.response = http.Response(
            http_version=flow.request.data.http_version,
            status_code=200,
            reason=b"Connection established",
            headers=http.Headers(),
            content=b"",
            trailers=None,
            timestamp_start=time.time(),
            timestamp_end=time.time(),
        )

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        """Inside the tunnel to keyswap.local: TLS with the client only. mitmproxy's default
        stack would also open TLS to the server first (connection_strategy=eager), i.e. try
        to dial keyswap.local."""
        context = nextlayer.context
        address = context.server.address
        if nextlayer.layer is not None or not address or _host(str(address[0])) != HOST:
            return
        data = nextlayer.data_client()  # type: ignore[no-untyped-call]
        if data and starts_like_tls_record(data) and _is_loopback_peer(context.client.peername):
            nextlayer.layer = layers.ClientTLSLayer(context)

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or not self._ours(flow):
            return
        given = take_credentials(flow.request)
        if not is_loopback_client(flow):
            flow.response = http.Response.make(403, _REMOTE, {"content-type": "text/plain"})
            return
        if flow.client_conn.tls_established:
            flow.request.scheme = "https"  # our TLS-only tunnel (see next_layer)
        try:
            reply = await self._dispatch(flow, given)
        except ApiError as exc:
            reply = _json({"error": exc.message, **exc.extra}, exc.status)
            if "allow" in exc.extra:
                reply.headers["allow"] = ", ".join(exc.extra["allow"])
        except Exception:
            log.exception("keyswap: keyswap.local failed")
            reply = _json({"error": "internal error; see the proxy's log"}, 500)
        headers = {
            "content-type": reply.content_type,
            "cache-control": "no-store",
            "x-content-type-options": "nosniff",
            "x-frame-options": "DENY",
            "referrer-policy": "no-referrer",
            **reply.headers,
        }
        flow.response = http.Response.make(reply.status, reply.body, headers)

    def _ours(self, flow: http.HTTPFlow) -> bool:
        return _host(flow.request.host) == HOST

    # -- dispatch ----------------------------------------------------------------------------

    async def _dispatch(self, flow: http.HTTPFlow, given: Given) -> Reply:
        req = flow.request
        path = req.path.split("?", 1)[0]
        method = req.method.upper()
        if self._secret_task is not None and not self._secret_task.done():
            await asyncio.wait([self._secret_task], timeout=5)  # just started
        if path == LINK_PATH:
            return await self._open_link(flow, method, given)
        if not path.startswith("/api/"):
            return await self._static(method, path, given)
        self._check_origin(flow)
        allowed = []
        for verb, pattern, handler, users_only in self._routes:
            m = pattern.fullmatch(path)
            if m is None:
                continue
            allowed.append(verb)
            if verb != method and not (verb == "GET" and method == "HEAD"):
                continue
            caller = self._caller(given, changing=verb != "GET")
            if users_only and caller.client is not None:
                raise ApiError(403, _USERS_ONLY)
            return await handler(flow, m.groupdict(), caller)
        if allowed:
            raise ApiError(405, f"{method} is not allowed here", allow=allowed)
        raise ApiError(404, f"no such endpoint: {path}")

    def _check_origin(self, flow: http.HTTPFlow) -> None:
        headers = flow.request.headers
        origin = headers.get("origin")
        if origin is not None and origin not in ORIGINS:
            raise ApiError(403, "cross-site requests to keyswap.local are refused")
        if headers.get("sec-fetch-site", "").lower() == "cross-site":
            raise ApiError(403, "cross-site requests to keyswap.local are refused")

    def _caller(self, given: Given, changing: bool) -> Caller:
        """Who asks, from the first credential present; a wrong one is never passed over."""
        if given.secret is not None:
            if self.secret is None:
                raise ApiError(503, f"management is unavailable: {self._unavailable()}")
            if hmac.compare_digest(given.secret.encode(), self.secret.encode()):
                return Caller()
            raise ApiError(
                401, f"wrong {SECRET_HEADER}: send the contents of <keyswap data dir>/{SECRET_FILE}"
            )
        if given.client is not None:
            config = self.injector.settings.config
            client = client_for(config, given.client)
            if isinstance(client, ClientSettings):
                return Caller(client)
            why = "unknown client secret" if config.clients else "this proxy has no [clients.*]"
            raise ApiError(401, f"{why} in {CLIENT_HEADER}")
        session = self.sessions.find(given.cookie, time.time())
        if session is None:
            raise ApiError(401, _UNAUTHORIZED)
        if changing and not (
            given.csrf and hmac.compare_digest(given.csrf.encode(), session.csrf.encode())
        ):
            raise ApiError(403, "the status page's token is missing or stale; reload the page")
        return Caller()

    def _unavailable(self) -> str:
        return self._secret_error or "starting up"

    # -- the page ----------------------------------------------------------------------------

    async def _open_link(self, flow: http.HTTPFlow, method: str, given: Given) -> Reply:
        """A one-time link from `keyswap page`: a session cookie, then the page (the
        303 takes the token out of the address bar and the history)."""
        if method != "GET":
            raise ApiError(405, f"{method} is not allowed here", allow=["GET"])
        if self.secret is None:
            raise ApiError(503, f"management is unavailable: {self._unavailable()}")
        now = time.time()
        try:
            cookie, _ = self.sessions.open(verify(self.secret, given.link or "", now), now)
        except LinkError as exc:
            log.info("keyswap: a status page link was refused: %s", exc)
            return await self._notice(403, f"{exc}. {_GET_A_LINK}")
        log.info("keyswap: the status page was opened with a one-time link")
        secure = "; Secure" if flow.request.scheme == "https" else ""
        attributes = f"Max-Age={SESSION_TTL}; Path=/; HttpOnly; SameSite=Strict{secure}"
        headers = {"location": "/", "set-cookie": f"{COOKIE}={cookie}; {attributes}"}
        return Reply(303, b"", "text/plain; charset=utf-8", headers)

    async def _static(self, method: str, path: str, given: Given) -> Reply:
        if method not in ("GET", "HEAD"):
            raise ApiError(405, f"{method} is not allowed here", allow=["GET"])
        if path in ("/", "/index.html"):
            session = self.sessions.find(given.cookie, time.time())
            if session is None:
                return await self._notice(200, f"This page needs a one-time link. {_GET_A_LINK}")
            page = await self._file("index.html")
            return _html(200, page.replace(b"{{csrf}}", session.csrf.encode()))
        if path in _STATIC:
            name, content_type = _STATIC[path]
            return Reply(200, await self._file(name), content_type)
        return Reply(404, b"not found\n", "text/plain; charset=utf-8")

    async def _notice(self, status: int, message: str) -> Reply:
        """A page of one line (no script, nothing that grants anything)."""
        page = await self._file("notice.html")
        return _html(status, page.replace(b"{{message}}", html.escape(message).encode()))

    async def _file(self, name: str) -> bytes:
        found = self._page.get(name)
        if found is None:
            found = self._page[name] = await asyncio.to_thread((PAGE_DIR / name).read_bytes)
        return found

    # -- read-only endpoints -----------------------------------------------------------------

    async def _providers(self, flow: http.HTTPFlow, args: dict[str, str], caller: Caller) -> Reply:
        entries = await self._entries()
        providers = [p for p in PROVIDERS.values() if caller.admits(p.name)]
        return _json(
            {
                "now": time.time(),
                "providers": [self._provider_json(p, entries, caller) for p in providers],
            }
        )

    async def _status(self, flow: http.HTTPFlow, args: dict[str, str], caller: Caller) -> Reply:
        p = _provider(args["provider"])
        caller.require(p.name)
        entries = await self._entries(p.name)
        return _json({"now": time.time(), **self._provider_json(p, entries, caller)})

    async def _entries(self, provider: str | None = None) -> list[Entry]:
        tokens = self.injector.tokens
        try:
            return await asyncio.to_thread(tokens.entries, provider)
        except KeyswapError as exc:
            raise ApiError(503, f"cannot read the token store: {exc}") from None

    def _provider_json(self, p: Provider, entries: list[Entry], caller: Caller) -> dict[str, Any]:
        config = self.injector.settings.config
        settings = config.provider(p.name)
        stored = {e.bucket: e for e in entries if e.provider == p.name}
        configured = list(settings.buckets or [])
        names = configured + sorted(b for b in stored if b not in configured)
        names = [b for b in names if caller.admits(p.name, b)]
        shown = time.time() - FINISHED_SHOWN
        # A running login's code or sign-in URL would let whoever sees it choose the account
        # that gets the user's traffic: the user's alone.
        sessions = [
            s.public()
            for (prov, _), s in self.injector.logins.sessions.items()
            if prov == p.name and (s.ended is None or s.ended > shown) and caller.client is None
        ]
        return {
            "name": p.name,
            "title": p.title,
            "flow": p.flow,
            "callback": p.callback if p.flow == "auth_code" else None,
            # As configured: "on", "off" or "not set", and what that does.
            "enabled": _ENABLED[settings.enabled][0],
            "enabled_means": _ENABLED[settings.enabled][1].format(name=p.name),
            "strategy": settings.strategy or config.proxy.strategy,
            "buckets": [
                self._bucket_json(p.name, b, stored.get(b), b in configured, caller) for b in names
            ],
            "logins": sorted(sessions, key=lambda s: float(s["started"])),
        }

    def _bucket_json(
        self, provider: str, bucket: str, entry: Entry | None, configured: bool, caller: Caller
    ) -> dict[str, Any]:
        rotation = self.injector.rotation
        now = time.time()
        until = rotation.cooling_until(provider, bucket)
        served, limited = rotation.served[provider, bucket], rotation.limited[provider, bucket]
        expires_at = entry.expires_at if entry else None
        # Whose account it is, and the store's own words about it, are the user's to see.
        private = caller.client is None
        return {
            "bucket": bucket,
            "stored": entry is not None,
            "configured": configured,
            "state": entry.state if entry else "needs-login",
            "account": entry.account if entry and private else None,
            "detail": (entry.detail if private else None) if entry else "not logged in",
            # Which models the config lets this bucket serve (None: any).
            "models": getattr(entry, "models", None),
            "exclude_models": getattr(entry, "exclude_models", None) or [],
            "expires_at": expires_at,
            "expires_in": int(expires_at - now) if expires_at else None,
            "cooling_until": until,
            "cooldown_in": round(until - now, 1) if until else None,
            "served": served,
            "limited": limited,
            "history": self.history.series((provider, bucket), served, limited),
        }

    async def _usage(self, flow: http.HTTPFlow, args: dict[str, str], caller: Caller) -> Reply:
        """Per provider and bucket what `keyswap status` shows (login/usage.py's
        fields), live, plus how many conversations each bucket holds: counts, never content."""
        now = time.time()
        providers = []
        for p in PROVIDERS.values():
            if not caller.admits(p.name):
                continue
            buckets = [
                {
                    "bucket": bucket,
                    **self._usage_json(p.name, bucket, now, caller),
                    "conversations": self.injector.affinity.holds(p.name, bucket),
                }
                for bucket in self._usage_buckets(p.name)
                if caller.admits(p.name, bucket)
            ]
            providers.append({"name": p.name, "title": p.title, "buckets": buckets})
        return _json({"now": now, "providers": providers})

    def _usage_buckets(self, provider: str) -> list[str]:
        """The buckets the proxy serves, then any others it keeps usage for, in the
        config's order."""
        injector, rotation = self.injector, self.injector.rotation
        keys = set(injector.quota.accounts) | set(rotation.served) | set(rotation.limited)
        keys |= set(rotation.cooling())
        found = set(injector.buckets.get(provider, [])) | {b for p, b in keys if p == provider}
        configured = injector.settings.config.provider(provider).buckets or []
        return [b for b in configured if b in found] + sorted(found - set(configured))

    def _usage_json(self, provider: str, bucket: str, now: float, caller: Caller) -> dict[str, Any]:
        account = self.injector.quota.accounts.get((provider, bucket))
        rotation = self.injector.rotation
        record = {
            "windows": [asdict(w) for w in account.windows.values()] if account else [],
            "updated": account.updated if account else None,
            "last_429": account.last_429 if account else None,
            # The proxy's words about an answer are the user's, as a bucket's detail is.
            "last_error": account.last_error if account and caller.client is None else None,
            "cooling_until": rotation.cooling_until(provider, bucket),
            "served": rotation.served[provider, bucket],
            "limited": rotation.limited[provider, bucket],
        }
        return usage.view(record, now)

    async def _models(self, flow: http.HTTPFlow, args: dict[str, str], caller: Caller) -> Reply:
        p = _provider(args["provider"])
        bucket = _bucket(flow)
        caller.require(p.name, bucket)
        out: dict[str, Any] = {"provider": p.name, "bucket": bucket}
        if (known := p.known_models()) is not None:
            models = [{"id": m, "name": m} for m in known]
            return _json({**out, "source": "keyswap", "models": models})
        if p.models_path is None:
            return _json(
                {
                    **out,
                    "source": None,
                    "models": None,
                    "detail": f"keyswap does not list {p.title} models",
                }
            )
        tokens = self.injector.tokens
        try:
            access = await tokens.access(p.name, bucket)
        except KeyswapError as exc:
            raise ApiError(409, str(exc)) from None
        try:
            to = destination(access, p.models_path, p.models_query())
        except Refused as exc:
            raise ApiError(exc.status, str(exc)) from None
        url = f"{to.scheme}://{to.authority}{to.path}"
        headers = {"Accept": "application/json", **access.headers(p.models_path, {}, b"")}
        try:
            resp = await tokens.http.get(url, headers=headers, timeout=30)
        except httpx.HTTPError as exc:
            raise ApiError(502, f"{p.title} models: {type(exc).__name__}") from None
        if resp.status_code != 200:
            raise ApiError(502, f"{p.title} answered the models list with HTTP {resp.status_code}")
        try:
            data = resp.json()
        except ValueError:
            raise ApiError(502, f"{p.title} sent a models list that is not JSON") from None
        source = url.partition("?")[0]
        return _json({**out, "source": source, "models": _model_rows(data)})

    # -- state-changing endpoints ------------------------------------------------------------

    async def _login(self, flow: http.HTTPFlow, args: dict[str, str], caller: Caller) -> Reply:
        p = _provider(args["provider"])
        session = await self.injector.logins.start(p, _bucket(flow), replace=True)
        ready = asyncio.ensure_future(session.ready.wait())
        await asyncio.wait(
            [ready, session.finished], timeout=READY_WAIT, return_when="FIRST_COMPLETED"
        )
        ready.cancel()
        if session.state == "failed":
            raise ApiError(502, session.error or "the login failed", login=session.public())
        status = 200 if session.state in ("waiting", "done") else 202
        return _json({"login": session.public()}, status)

    def _session(self, flow: http.HTTPFlow, provider: str) -> LoginSession:
        p = _provider(provider)
        session = self.injector.logins.sessions.get((p.name, _bucket(flow)))
        if session is None or not session.active:
            raise ApiError(409, f"no {p.name} login is running for that bucket")
        return session

    async def _paste(self, flow: http.HTTPFlow, args: dict[str, str], caller: Caller) -> Reply:
        session = self._session(flow, args["provider"])
        if session.provider.flow != "auth_code":
            raise ApiError(409, f"{session.provider.title} logins take no pasted code")
        text = _pasted_text(flow.request)
        flow.request.content = b"(redacted)"
        if not text.strip():
            raise ApiError(400, "nothing was pasted; send {'code': '<code or redirect URL>'}")
        before = len(session.steps)
        await session.pastes.put(text.strip())
        # Give the flow a moment: a bad paste is reported as a step, a good one finishes.
        for _ in range(20):
            if not session.active or len(session.steps) != before:
                break
            await asyncio.sleep(0.05)
        return _json({"login": session.public()})

    async def _cancel(self, flow: http.HTTPFlow, args: dict[str, str], caller: Caller) -> Reply:
        session = self._session(flow, args["provider"])
        await self.injector.logins.cancel(session)
        return _json({"login": session.public()})

    async def _logout(self, flow: http.HTTPFlow, args: dict[str, str], caller: Caller) -> Reply:
        p = _provider(args["provider"])
        tokens = self.injector.tokens
        if _query(flow).get("all") in ("1", "true", "yes"):
            buckets = [e.bucket for e in await self._entries(p.name)]
        else:
            buckets = [_bucket(flow)]
        removed = []
        for bucket in buckets:
            try:
                if await asyncio.to_thread(tokens.logout, p.name, bucket):
                    removed.append(bucket)
            except KeyswapError as exc:
                raise ApiError(503, f"cannot remove {p.name}/{bucket}: {exc}") from None
            self.injector.rotation.reset(p.name, bucket)
            self.injector.logins.forget(p.name, bucket)
        if not removed:
            raise ApiError(404, f"not logged in to {p.name}/{', '.join(buckets) or '-'}")
        self.injector.remove_buckets(p.name, removed)
        log.info("keyswap: logged out %s/%s from the status page", p.name, ",".join(removed))
        return _json({"provider": p.name, "removed": removed})

    async def _reset(self, flow: http.HTTPFlow, args: dict[str, str], caller: Caller) -> Reply:
        p = _provider(args["provider"])
        bucket = args["bucket"]
        if not _BUCKET.match(bucket):
            raise ApiError(400, f"{bucket!r} is not a bucket name")
        caller.require(p.name, bucket)
        was = self.injector.rotation.cooling_until(p.name, bucket)
        self.injector.rotation.reset(p.name, bucket)
        return _json({"provider": p.name, "bucket": bucket, "was_cooling_until": was})


# -- helpers ----------------------------------------------------------------------------------

_REMOTE = b"keyswap.local answers only clients on this machine\n"
_GET_A_LINK = "Run `keyswap page` and open the link it prints in a browser that uses the proxy."
_UNAUTHORIZED = (
    "keyswap.local needs authorization: open the page with the link `keyswap page` "
    f"prints, or send {SECRET_HEADER} (the contents of <keyswap data dir>/{SECRET_FILE}), or a "
    f"[clients.*] secret in {CLIENT_HEADER}"
)
_USERS_ONLY = (
    "logging in and out, pasting and cancelling are the user's, not a client's "
    f"(a {CLIENT_HEADER} may read and reset its own buckets)"
)


def _host(host: str) -> str:
    """A host name as compared: lower case, no trailing dot."""
    return host.lower().rstrip(".")


def _provider(name: str) -> Provider:
    p = PROVIDERS.get(name)
    if p is None:
        known = ", ".join(sorted(PROVIDERS))
        raise ApiError(404, f"unknown provider {name!r} (known: {known})")
    return p


def _query(flow: http.HTTPFlow) -> dict[str, str]:
    return {k: v for k, v in flow.request.query.items()}


def _bucket(flow: http.HTTPFlow) -> str:
    bucket = _query(flow).get("bucket") or DEFAULT_BUCKET
    if not _BUCKET.match(bucket):
        raise ApiError(
            400, f"{bucket!r} is not a bucket name (letters, digits and @._+- ; no spaces)"
        )
    return bucket


def _pasted_text(req: http.Request) -> str:
    raw = req.get_text(strict=False) or ""
    ctype = req.headers.get("content-type", "")
    if "json" in ctype:
        try:
            data = json.loads(raw or "{}")
        except ValueError:
            raise ApiError(400, "the body is not valid JSON") from None
        value = data.get("code") if isinstance(data, dict) else None
        return value if isinstance(value, str) else ""
    if "x-www-form-urlencoded" in ctype:
        return (parse_qs(raw).get("code") or [""])[0]
    return raw


def _model_rows(data: Any) -> list[dict[str, Any]]:
    """An OpenAI-style `{"data": [...]}` or a `{"models": [...]}` listing, reduced to
    what a person choosing a model needs."""
    items = (data.get("data") or data.get("models") or []) if isinstance(data, dict) else []
    rows = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        ident = item.get("id") or item.get("slug")
        if not ident:
            continue
        row: dict[str, Any] = {"id": str(ident), "name": str(item.get("name") or ident)}
        if item.get("display_name"):
            row["name"] = str(item["display_name"])
        if item.get("vendor"):
            row["vendor"] = str(item["vendor"])
        if isinstance(item.get("supported_endpoints"), list):
            row["endpoints"] = [str(e) for e in item["supported_endpoints"]]
        rows.append(row)
    return rows


def _is_loopback_peer(peer: tuple[Any, ...] | None) -> bool:
    return peer is not None and len(peer) > 0 and is_loopback_host(str(peer[0]))
