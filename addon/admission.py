"""Admission: whether a request that carries a placeholder is served, and with what.

A plain object over the config, the rotation and the known buckets, so every refusal can be
tried in process on a `tflow` request. In order: the client must be on this machine (unless
`allow_remote`), not a web page (unless its origin is allowed), carry a known client secret
when the proxy has a client list, name a known and enabled provider, come over https, have
a path no server can read as another path, match one of the provider's routes, be allowed to
that client, and ask for a model some bucket serves. Each refusal is answered in the API's
own shape; what is admitted becomes a `Job` for the dispatch.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from mitmproxy import http

from login.config import ClientSettings, Config, is_loopback_host
from login.errors import ClientError
from login.providers import PROVIDERS
from login.providers.base import Dialect
from login.providers.paths import checked_path, under

from . import placeholder
from .affinity import Affinity, conversation_of
from .dispatch import Job, forwardable
from .quota import Quota
from .rotation import Rotation


@dataclass(frozen=True)
class Refusal:
    """Why a request is not served: answered in the client's API shape, without a token."""

    status: int
    message: str


class Admission:
    def __init__(
        self,
        config: Callable[[], Config],
        rotation: Rotation,
        buckets: Callable[[str], list[str]],
        affinity: Affinity | None = None,
        quota: Quota | None = None,
    ) -> None:
        self._config = config
        self._rotation = rotation
        self._buckets = buckets  # a provider's stored buckets, by name
        self._affinity = Affinity() if affinity is None else affinity
        self._quota = Quota() if quota is None else quota

    def admit(
        self, req: http.Request, from_loopback: bool, found: placeholder.Placeholder
    ) -> Job | Refusal:
        host = req.pretty_host
        config = self._config()
        if not config.proxy.allow_remote and not from_loopback:
            return Refusal(403, "placeholder keys are served only to clients on this machine")
        if origin := _web_page(req, config.proxy.allow_origins):
            why = f"requests from web pages ({origin}) get no token"
            return Refusal(403, f"{why}; allow it in [proxy] allow_origins")
        client = client_for(config, found.secret)
        if isinstance(client, str):
            return Refusal(401, client)
        if found.provider is None:  # a bare `oauth`: the provider whose own host this is
            provider = next((p for p in PROVIDERS.values() if host in p.native_hosts), None)
        else:
            provider = PROVIDERS.get(found.provider)
        if provider is None:
            return Refusal(400, _unknown(found, host))
        settings = config.provider(provider.name)
        if settings.enabled is False:
            return Refusal(401, f"oauth for {provider.name} is disabled in the config")
        if req.scheme != "https":
            return Refusal(403, "placeholder keys are served only over https")
        try:
            # The path checked here is the one matched and the one delivered.
            path = checked_path(req.path.partition("?")[0])
        except ClientError as exc:
            return Refusal(exc.status, str(exc))
        route = next((r for r in provider.routes if r.matches(host, path)), None)
        if route is None:
            return Refusal(403, f"{provider.name} tokens are not sent to {host}{path}")
        if client is not None and not client.admits(provider.name, found.bucket):
            return Refusal(403, f"this client may not use {provider.name}")
        job = Job(
            provider=provider,
            route=route,
            buckets=[found.bucket] if found.bucket else [],
            pinned=found.bucket is not None,
            method=req.method,
            path=path,
            query=[(k, v) for k, v in req.query.fields if not (k == "key" and placeholder.parse(v))]
            if b"?" in req.data.path
            else [],
            headers=forwardable(req.headers.fields),
            body=req.raw_content or b"",
            login_wait=config.proxy.login_wait if settings.enabled else None,
        )
        if not job.pinned:
            available = settings.buckets or self._buckets(provider.name)
            if client is not None and "*" not in client.allow and provider.name not in client.allow:
                available = [b for b in available if client.admits(provider.name, b)]
            strategy = settings.strategy or config.proxy.strategy
            if strategy == "sticky":
                self._place(job, available, config, client)
            else:
                job.buckets = self._rotation.plan(provider.name, available, strategy)
        buckets = job.buckets
        if settings.bucket and (model := provider.model_of(job.call())):
            job.buckets = [b for b in buckets if settings.rules(b).admits(model)]
            if not job.buckets:
                rules = ", ".join(f"{b} ({settings.rules(b).describe()})" for b in buckets)
                rules = rules or "none"
                name = provider.name
                return Refusal(404, f"no {name} bucket serves model {model!r}; buckets: {rules}")
        return job

    def _place(
        self, job: Job, available: list[str], config: Config, client: ClientSettings | None
    ) -> None:
        """The `sticky` plan: the conversation's own bucket first, else the most headroom."""
        name = job.provider.name
        who = next((n for n, c in config.clients.items() if c is client), "") if client else ""
        job.conversation = conversation_of(job.provider, job.call(), who)
        held = self._affinity.get(name, job.conversation) if job.conversation else None
        quota, affinity = self._quota, self._affinity
        job.held = held
        job.buckets = self._rotation.place(
            name,
            available,
            held,
            lambda b: quota.used(name, b),
            lambda b: affinity.holds(name, b),
            config.proxy.move_at,
        )


def dialect_for(host: str, path: str) -> Dialect:
    """The API shape a client speaks, for errors before its route is known: that of the
    route serving this host and path, else the host's catch-all or first route (OpenAI's for
    a host no provider serves)."""
    routes = [r for p in PROVIDERS.values() for r in p.routes if host in r.hosts]
    for route in routes:
        if any(under(path, prefix) for prefix in route.prefixes if prefix != "/"):
            return route.dialect
    fallback = routes[0].dialect if routes else "openai"
    return next((r.dialect for r in routes if "/" in r.prefixes), fallback)


def client_for(config: Config, secret: str | None) -> ClientSettings | str | None:
    """The configured client whose secret this is; a str says why none matches.
    None when the proxy has no client list."""
    if not config.clients:
        return None
    if not secret:
        return "this proxy needs a client secret in the key: oauth:<provider>#<secret>"
    for client in config.clients.values():
        if hmac.compare_digest(client.secret.encode(), secret.encode()):
            return client
    return "unknown client secret"


def is_loopback_client(flow: http.HTTPFlow) -> bool:
    peer = flow.client_conn.peername
    return bool(peer) and is_loopback_host(str(peer[0]))


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
