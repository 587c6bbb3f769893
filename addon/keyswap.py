"""The mitmproxy addons: config, injection, and the bookkeeping around them."""

from __future__ import annotations

import asyncio
import copy
import gc
import hmac
import logging
import re
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from mitmproxy import connection, ctx, exceptions, http
from mitmproxy.proxy import mode_specs, server_hooks

from login.config import (
    ClientSettings,
    Config,
    default_config_path,
    is_loopback_host,
    load_config,
)
from login.env import refresh_bundle
from login.errors import ClientError, KeyswapError
from login.net import make_client, ssl_context
from login.providers import PROVIDERS
from login.providers.base import Dialect, Provider
from login.providers.paths import checked_path
from login.tokens import TokenService

from . import placeholder
from .buckets import Rotation
from .errors import error_body, error_headers
from .logins import Logins
from .outbound import Outbound, basic_auth
from .relay import TICKET_HEADER, Job, Relay, forwardable

log = logging.getLogger(__name__)
# httpx (logins, refreshes) logs every request URL at INFO and httpcore ten DEBUG records per
# request; mitmproxy sets the root logger to DEBUG and hands every record to every addon, which
# costs more than a request itself. Keep keyswap's own per-request logging out of hot paths.
for _name in ("httpx", "httpcore", "h11", "hpack"):
    logging.getLogger(_name).setLevel(logging.WARNING)

_NATIVE = {host: p for p in PROVIDERS.values() for host in p.native_hosts}
_POLL_SECONDS = 1.0


class Settings:
    """The `keyswap_config` option: loads and validates the config file, reloads it when it
    changes, and keeps the last good one when a new one is invalid."""

    def __init__(self) -> None:
        self.config = Config()
        self.path: Path | None = None
        self._mtime: float | None = None
        self._running = False

    def running(self) -> None:
        self._running = True

    def load(self, loader: Any) -> None:
        loader.add_option(
            "keyswap_config",
            str,
            "",
            "keyswap's config file (TOML). Default: $KEYSWAP_CONFIG, else the user config "
            "dir's keyswap/config.toml.",
        )

    def configure(self, updated: set[str]) -> None:
        if "keyswap_config" not in updated:
            return
        explicit = ctx.options.keyswap_config or None
        try:
            self.config = load_config(explicit)
        except KeyswapError as exc:
            if self._running:  # a `set` at runtime: refuse it, keep the last good config
                raise exceptions.OptionsError(str(exc)) from None  # type: ignore[no-untyped-call]
            # At start-up an error log makes mitmdump exit, with one clear line.
            log.error("keyswap: %s", exc)
            return
        self.path = Path(explicit) if explicit else default_config_path()
        self._mtime = _mtime(self.path)

    def changed(self) -> bool:
        """Reload if the file changed; True when a new config took effect."""
        if self.path is None:
            return False
        mtime = _mtime(self.path)
        if mtime == self._mtime:
            return False
        self._mtime = mtime
        try:
            self.config = load_config(str(self.path) if mtime is not None else None)
        except KeyswapError as exc:
            log.error("keyswap: %s; keeping the last good config", exc)
            return False
        log.info("keyswap: reloaded %s", self.path)
        return True


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


class Injector:
    """Finds placeholder keys and hands the request to the relay, which adds the token."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rotation = Rotation()
        self.tokens = TokenService(settings.config)
        self.buckets: dict[str, list[str]] = {}
        self.logins = Logins(self.tokens, self.add_bucket)
        self.relay = Relay(self.tokens, self.rotation, self.logins)
        self._saved: dict[str, tuple[http.RequestData, str | None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._bundle: asyncio.Task[None] | None = None
        # mitmproxy's upstream proxy, which keyswap's own connections take too.
        self.upstream: Upstream | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def configure(self, updated: set[str]) -> None:
        if updated & {"mode", "upstream_auth"}:
            # Checked before anything changes: a refused `set` leaves the old proxy in use.
            upstream = upstream_proxy(ctx.options.mode, ctx.options.upstream_auth)
            if upstream != self.upstream and upstream is not None:
                log.info("keyswap: its own requests go through the upstream proxy %s", upstream)
            self.upstream = upstream
        watched = {"ssl_insecure", "ssl_verify_upstream_trusted_ca", "mode", "upstream_auth"}
        if updated & (watched | {"keyswap_config"}):
            self._reconfigure()

    def _reconfigure(self) -> None:
        config = self.settings.config
        self.relay.cooldown = config.proxy.cooldown
        verify, up = _verify(), self.upstream
        old = self.relay.outbound
        # Through an upstream proxy, names are the proxy's to resolve.
        resolve = None if up else config.resolve_target
        self.relay.outbound = Outbound(
            verify,
            resolve=resolve,
            proxy=up.url if up else None,
            proxy_auth=up.auth if up else None,
        )
        proxy = up.for_httpx(verify) if up else None
        self.tokens.reconfigure(config, make_client(config, proxy=proxy, verify=verify))
        if old is not None:
            old.close()

    def running(self) -> None:
        if not ctx.options.allow_hosts and not ctx.options.ignore_hosts:
            # Decrypt only what keyswap serves; everything else is tunnelled untouched.
            ctx.options.update(allow_hosts=served_hosts())  # type: ignore[no-untyped-call]
        port = self.relay.start()
        log.debug("keyswap: relay on 127.0.0.1:%d", port)
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._maintain())
        # Shells that exported the CA bundle keep verifying after mitmproxy's CA changed.
        confdir = Path(ctx.options.confdir).expanduser()
        self._bundle = loop.create_task(asyncio.to_thread(_refresh_bundle, confdir))
        # Everything loaded so far lives as long as the proxy: keep it out of the
        # collector's full passes, which would otherwise stall every flow for tens of ms.
        gc.freeze()

    def done(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.logins.stop()
        self.relay.stop()

    def add_bucket(self, provider: str, bucket: str) -> None:
        """A login just finished: rotation may use the bucket at once."""
        known = self.buckets.setdefault(provider, [])
        if bucket not in known:
            known.append(bucket)

    def remove_buckets(self, provider: str, buckets: list[str]) -> None:
        known = self.buckets.get(provider)
        if known is not None:
            self.buckets[provider] = [b for b in known if b not in buckets]

    async def _maintain(self) -> None:
        """Pick up config edits and new logins while running."""
        problem = None
        while True:
            try:
                if self.settings.changed():
                    self._reconfigure()
                # Tokens the store refused (a full disk) are retried here as well as on use.
                await self.tokens.save_held()
                names = await asyncio.to_thread(self.tokens.names)
                self.tokens.retain(set(names))
                found: dict[str, list[str]] = {}
                for name in names:
                    prov, _, bucket = name.partition(":")
                    found.setdefault(prov, []).append(bucket)
                self.buckets = found
                problem = None
                await self._refresh_resting(found)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if str(exc) != problem:  # once per distinct problem, not every second
                    problem = str(exc)
                    log.warning("keyswap: cannot read the token store: %s", exc)
            await asyncio.sleep(_POLL_SECONDS)

    async def _refresh_resting(self, buckets: dict[str, list[str]]) -> None:
        """A bucket resting after a 429 gets no traffic, so nothing would refresh its token;
        keep it fresh so it is ready the moment the cooldown ends."""
        for provider, names in buckets.items():
            for bucket in names:
                if self.rotation.cooling_until(provider, bucket) is None:
                    continue
                try:
                    await self.tokens.access(provider, bucket)
                except KeyswapError as exc:
                    log.debug("keyswap: %s", exc)

    # -- hooks ---------------------------------------------------------------------------

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        """`[resolve]` applies to mitmproxy's own upstream connections too."""
        if data.server.address is None:
            return
        host, port = data.server.address[:2]
        target = self.settings.config.resolve_target(str(host), int(port))
        if target is not None:
            data.server.sni = data.server.sni or str(host)
            data.server.address = target

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        found = placeholder.find(flow.request)
        if found is None:
            return
        placeholder.redact(flow.request, found)
        try:
            job = self._job(flow, found)
            if job is None:
                return
            if flow.request.headers.get("upgrade", "").lower() == "websocket":
                await self._inject_websocket(flow, job)
            else:
                self._hand_to_relay(flow, job)
        except Exception:
            # Never let the placeholder or a half-built request go upstream.
            log.exception("keyswap: internal error")
            dialect = _dialect_for(flow.request.pretty_host)
            _answer(flow, dialect, 500, "internal error; see the proxy's log")

    def _job(self, flow: http.HTTPFlow, found: placeholder.Placeholder) -> Job | None:
        """What to send where, or None after answering the client with why not."""
        req = flow.request
        host = req.pretty_host
        dialect = _dialect_for(host)
        config = self.settings.config
        if not config.proxy.allow_remote and not is_loopback_client(flow):
            _answer(
                flow, dialect, 403, "placeholder keys are served only to clients on this machine"
            )
            return None
        if origin := _web_page(req, config.proxy.allow_origins):
            why = f"requests from web pages ({origin}) get no token"
            _answer(flow, dialect, 403, f"{why}; allow it in [proxy] allow_origins")
            return None
        client = _client(config, found)
        if isinstance(client, str):
            _answer(flow, dialect, 401, client)
            return None
        provider = self._provider(found, host)
        if provider is None:
            _answer(flow, dialect, 400, _unknown(found, host))
            return None
        if config.provider(provider.name).enabled is False:
            _answer(flow, dialect, 401, f"oauth for {provider.name} is disabled in the config")
            return None
        if req.scheme != "https":
            _answer(flow, dialect, 403, "placeholder keys are served only over https")
            return None
        try:
            # The path checked here is the one matched and the one delivered.
            path = checked_path(req.path.partition("?")[0])
        except ClientError as exc:
            _answer(flow, dialect, exc.status, str(exc))
            return None
        route = next((r for r in provider.routes if r.matches(host, path)), None)
        if route is None:
            _answer(flow, dialect, 403, f"{provider.name} tokens are not sent to {host}{path}")
            return None
        if client is not None and not client.admits(provider.name, found.bucket):
            _answer(flow, dialect, 403, f"this client may not use {provider.name}")
            return None
        if found.bucket:
            buckets, pinned = [found.bucket], True
        else:
            settings = config.provider(provider.name)
            available = settings.buckets or self.buckets.get(provider.name, [])
            if client is not None and "*" not in client.allow and provider.name not in client.allow:
                available = [b for b in available if client.admits(provider.name, b)]
            strategy = settings.strategy or config.proxy.strategy
            buckets = self.rotation.plan(provider.name, list(available), strategy)
            # Cooling buckets go last: they are used only if nothing else is left.
            buckets += [b for b in available if b not in buckets]
            pinned = False
        job = Job(
            provider=provider,
            route=route,
            buckets=buckets,
            pinned=pinned,
            method=req.method,
            path=path,
            query=[(k, v) for k, v in req.query.fields if not (k == "key" and placeholder.parse(v))]
            if b"?" in req.data.path
            else [],
            headers=forwardable(req.headers.fields),
            body=req.raw_content or b"",
        )
        settings = config.provider(provider.name)
        if settings.enabled:
            job.login_wait = config.proxy.login_wait
        if settings.bucket and (model := provider.model_of(job.call())):
            job.buckets = [b for b in buckets if settings.rules(b).admits(model)]
            if not job.buckets:
                rules = ", ".join(f"{b} ({settings.rules(b).describe()})" for b in buckets)
                msg = (
                    f"no {provider.name} bucket serves model {model!r}; buckets: {rules or 'none'}"
                )
                _answer(flow, dialect, 404, msg)
                return None
        return job

    def _hand_to_relay(self, flow: http.HTTPFlow, job: Job) -> None:
        req = flow.request
        ticket = self.relay.submit(job)
        # Point the flow at the relay; the original comes back once the response starts.
        # The job carries the request, so the relay needs nothing but the ticket.
        self._saved[flow.id] = (req.data, ticket)
        req.data = copy.copy(req.data)
        req.data.headers = http.Headers([(TICKET_HEADER.encode(), ticket.encode())])
        req.data.content = b""
        # Straight into the data: the setters would also rewrite Host and authority, which
        # the relay does not read.
        req.data.scheme, req.data.host, req.data.port = b"http", "127.0.0.1", self.relay.port
        if flow.server_conn.via is not None:
            # Never via an upstream proxy (mitmproxy's `upstream:` mode would otherwise send
            # the relay's address to that proxy).
            flow.server_conn = connection.Server(address=("127.0.0.1", self.relay.port))

    async def _inject_websocket(self, flow: http.HTTPFlow, job: Job) -> None:
        """A WebSocket upgrade cannot go through the relay: mitmproxy carries it upstream
        itself, with the token set here and the placeholder put back once the 101 arrives.
        No 429 rotation: a socket that is open stays on its bucket."""
        picked = await self.relay.pick(job)
        if not isinstance(picked, tuple):
            flow.response = http.Response.make(picked.status, picked.body, dict(picked.headers))
            return
        access, url = picked
        req = flow.request
        self._saved[flow.id] = (req.data, None)
        req.data = copy.copy(req.data)
        req.data.headers = req.data.headers.copy()
        client_headers = {k.lower(): v for k, v in job.headers}
        req.url = url
        for name in placeholder.KEY_HEADERS:
            req.headers.pop(name, None)
        for key, value in access.headers(job.path, client_headers, b"").items():
            req.headers[key] = value

    def _provider(self, found: placeholder.Placeholder, host: str) -> Provider | None:
        if found.provider is None:
            return _NATIVE.get(host)
        return PROVIDERS.get(found.provider)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if self._restore(flow) and (resp := flow.response) is not None:
            # Streams (SSE, chunked) pass through as they come; a sized answer is buffered
            # like any other, which costs mitmproxy less.
            headers = resp.headers
            sse = "event-stream" in headers.get("content-type", "")
            resp.stream = sse or "content-length" not in headers

    def error(self, flow: http.HTTPFlow) -> None:
        self._restore(flow)

    def _restore(self, flow: http.HTTPFlow) -> bool:
        saved = self._saved.pop(flow.id, None)
        if saved is None:
            return False
        original, ticket = saved
        if ticket is not None:
            self.relay.drop(ticket)
        flow.request.data = original
        return True


def _refresh_bundle(confdir: Path) -> None:
    try:
        refresh_bundle(confdir)
    except (OSError, KeyswapError) as exc:
        log.warning("keyswap: cannot update the CA bundle: %s", exc)


def served_hosts() -> list[str]:
    """mitmproxy `allow_hosts` patterns for every host a provider route or the status page
    answers on."""
    hosts = {h for p in PROVIDERS.values() for r in p.routes for h in r.hosts}
    hosts |= {h for p in PROVIDERS.values() for h in p.native_hosts} | {"keyswap.local"}
    return [rf"^{re.escape(h)}:\d+$" for h in sorted(hosts)]


def _unknown(found: placeholder.Placeholder, host: str) -> str:
    if found.provider:
        known = ", ".join(sorted(PROVIDERS))
        return f"unknown provider {found.provider!r} in the placeholder (known: {known})"
    return f"a bare `oauth` key names no provider on {host}; use oauth:<provider>"


def _web_page(req: http.Request, allowed: list[str]) -> str | None:
    """The origin of a browser request (a page's fetch, form post or image load), unless the
    user allowed it. A URL the user typed (`Sec-Fetch-Site: none`) is not a page's."""
    site = req.headers.get("sec-fetch-site", "").lower()
    source = req.headers.get("origin") or req.headers.get("referer")
    from_page = (
        "origin" in req.headers
        or site in ("cross-site", "same-site")
        or (not site and source is not None and _origin(source) != f"https://{req.pretty_host}")
    )
    if not from_page:
        return None
    origin = _origin(source) if source else "another site"
    return None if origin in {_origin(a) for a in allowed} else origin


def _origin(url: str) -> str:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return url
    return f"{parsed.scheme}://{parsed.netloc.decode()}" if parsed.scheme else url


def _client(config: Config, found: placeholder.Placeholder) -> ClientSettings | str | None:
    """The client whose secret the placeholder carries; a str says why none matches.
    None when the proxy has no client list."""
    if not config.clients:
        return None
    if not found.secret:
        return "this proxy needs a client secret in the key: oauth:<provider>#<secret>"
    for client in config.clients.values():
        if hmac.compare_digest(client.secret.encode(), found.secret.encode()):
            return client
    return "unknown client secret"


def is_loopback_client(flow: http.HTTPFlow) -> bool:
    peer = flow.client_conn.peername
    return bool(peer) and is_loopback_host(str(peer[0]))


def _dialect_for(host: str) -> Dialect:
    if host.endswith("anthropic.com"):
        return "anthropic"
    if host.endswith("googleapis.com"):
        return "google"
    return "openai"


def _answer(flow: http.HTTPFlow, dialect: Dialect, status: int, message: str) -> None:
    log.info(
        "keyswap: %s %s -> %d: %s", flow.request.method, flow.request.pretty_host, status, message
    )
    flow.response = http.Response.make(
        status, error_body(dialect, status, message), error_headers()
    )


def _verify() -> ssl.SSLContext:
    """certifi + system roots + SSL_CERT_FILE, plus mitmproxy's own upstream trust options."""
    opts = ctx.options
    extra = [opts.ssl_verify_upstream_trusted_ca] if opts.ssl_verify_upstream_trusted_ca else []
    context = ssl_context(extra)
    if opts.ssl_insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


@dataclass(frozen=True)
class Upstream:
    """The proxy of mitmproxy's `upstream:` mode, with `upstream_auth`."""

    scheme: str  # "http", or "https" for TLS to the proxy itself
    host: str
    port: int
    # `user:password`, a secret like a token: out of repr and so out of every log line.
    auth: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def for_httpx(self, verify: ssl.SSLContext) -> httpx.Proxy:
        """The same proxy for httpx (logins, refreshes): the proxy's certificate checked like
        the providers', and the credential sent exactly as the relay sends it."""
        headers = {"Proxy-Authorization": basic_auth(self.auth)} if self.auth else None
        tls = verify if self.scheme == "https" else None  # httpcore refuses one for http
        return httpx.Proxy(self.url, ssl_context=tls, headers=headers)

    def __str__(self) -> str:
        return self.url + (" (with upstream_auth)" if self.auth else "")


def upstream_proxy(modes: Iterable[str], auth: str | None) -> Upstream | None:
    """The upstream proxy named in mitmproxy's `mode` entries, read by mitmproxy's own parser
    so that every form it accepts means the same here: with or without `http://` or
    `https://`, with or without a port, with an `@[host:]port` listen address, one of several
    modes. Beside other modes it carries keyswap's requests from every listener: the relay,
    logins and refreshes belong to no one listener. Raises OptionsError for what keyswap
    cannot honour."""
    found: list[Upstream] = []
    for spec in modes:
        try:
            mode = mode_specs.ProxyMode.parse(spec)
        except ValueError:
            continue  # mitmproxy refuses the option itself, with its own message
        if isinstance(mode, mode_specs.UpstreamMode):
            host, port = mode.address
            proxy = Upstream(mode.scheme, host, port)
            if proxy not in found:
                found.append(proxy)
    if not found:
        return None
    if len(found) > 1:
        # Which one a login or a refresh should take, nothing tells.
        names = ", ".join(p.url for p in found)
        raise exceptions.OptionsError(  # type: ignore[no-untyped-call]
            f"keyswap sends its own requests through one upstream proxy; the modes name "
            f"{len(found)}: {names}"
        )
    if auth is not None and not _AUTH.search(auth):
        # Without the value: it is a secret even when malformed.
        raise exceptions.OptionsError(  # type: ignore[no-untyped-call]
            "upstream_auth must be USER:PASSWORD"
        )
    return Upstream(found[0].scheme, found[0].host, found[0].port, auth)


# What mitmproxy's own upstream_auth addon accepts: something, then a colon.
_AUTH = re.compile(".+:")
