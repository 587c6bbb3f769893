"""Providers defined in the config rather than built in: a `[providers.<name>]` block with a
`flow` describes a plain OAuth login (RFC 8628 device flow, or auth code + PKCE) at any
issuer, with its endpoints given or read from OIDC discovery, and an OpenAI- or
Anthropic-compatible API that receives the token. Everything else (store, refresh, buckets,
rotation, the page, doctor) treats it as any provider.

What a definition may not do is reach a built-in provider's hosts: its API host must be none
of theirs, so a config block can never make keyswap hand a built-in provider's placeholder,
or its traffic, to someone else.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

import httpx

from ..config import check_url
from ..credential import Credential
from ..errors import LoginError, RefreshFailed
from ..flows.http import body_of, send
from .base import LoginContext, Provider, Route

if TYPE_CHECKING:
    from ..config import ProviderSettings

# Where a defined provider sits in lists: after every built-in one.
ORDER = 1000
# How long an issuer's discovery document is used before it is read again.
DISCOVERY_TTL = 24 * 3600.0
# A loopback redirect URI on any free port (RFC 8252 §7.3), for auth code + PKCE.
LOOPBACK_REDIRECT = "http://127.0.0.1:0/callback"
# OIDC discovery's names (OpenID Connect Discovery 1.0 §3, RFC 8628 §4) → keyswap's.
_DISCOVERED = {
    "authorization_endpoint": "authorize",
    "token_endpoint": "token",
    "device_authorization_endpoint": "device_code",
}
_ENDPOINTS = frozenset({"authorize", "token", "device_code", "redirect_uri"})
_NEEDS = {"device": ("device_code", "token"), "auth_code": ("authorize", "token")}

_discovered: dict[str, tuple[float, dict[str, str]]] = {}


class DefinitionError(ValueError):
    """A definition that cannot work; `key` is the block's key at fault ("" for the block)."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        super().__init__(reason)


class Defined(Provider):
    # The OIDC discovery document's URL, when the endpoints come from it.
    discovery: str | None = None
    # The issuer that document must name (OIDC Discovery §4.3), when the config gave one.
    issuer: str | None = None
    token_header: str = "Authorization"
    token_prefix: str = "Bearer "
    static_headers: tuple[tuple[str, str], ...] = ()

    async def login(self, ctx: LoginContext) -> Credential:
        endpoints = await self.resolved(ctx.http, ctx.endpoints)
        return await super().login(replace(ctx, endpoints=endpoints))

    async def refresh(
        self, http: httpx.AsyncClient, endpoints: Mapping[str, str], cred: Credential
    ) -> Credential:
        try:
            endpoints = await self.resolved(http, endpoints)
        except LoginError as exc:
            raise RefreshFailed(f"{self.name}/{cred.bucket}: {exc}") from None
        return await super().refresh(http, endpoints, cred)

    async def resolved(
        self, http: httpx.AsyncClient, endpoints: Mapping[str, str]
    ) -> dict[str, str]:
        """The endpoints to use: the discovered ones, with what the config names over them."""
        if self.discovery is None:
            return dict(endpoints)
        return {**await discover(http, self.discovery, self.issuer), **endpoints}

    def auth_headers(self, token: str) -> dict[str, str]:
        return {self.token_header: f"{self.token_prefix}{token}"}

    def api_headers(
        self, cred: Credential, path: str, headers: Mapping[str, str], body: bytes
    ) -> dict[str, str]:
        return dict(self.static_headers)


async def discover(http: httpx.AsyncClient, url: str, issuer: str | None) -> dict[str, str]:
    """The endpoints an OIDC discovery document names (kept for a day); LoginError, one line,
    when it cannot be read or names another issuer or a URL keyswap would not use."""
    kept = _discovered.get(url)
    if kept is not None and time.monotonic() - kept[0] < DISCOVERY_TTL:
        return kept[1]
    resp = await send(http, http.build_request("GET", url, headers=_JSON), "reading " + url)
    data = body_of(resp)
    if resp.status_code != 200 or not data.get("token_endpoint"):
        why = f"HTTP {resp.status_code}" if resp.status_code != 200 else "no token_endpoint"
        raise LoginError(f"the OIDC discovery document at {url} cannot be used ({why})")
    said = data.get("issuer")
    if issuer is not None and (not isinstance(said, str) or said.rstrip("/") != issuer):
        raise LoginError(f"the discovery document at {url} names issuer {said!r}, not {issuer}")
    found: dict[str, str] = {}
    for theirs, ours in _DISCOVERED.items():
        value = data.get(theirs)
        if not isinstance(value, str):
            continue
        try:
            found[ours] = check_url(value)
        except ValueError as exc:
            raise LoginError(f"the discovery document at {url}: {theirs}: {exc}") from None
    _discovered[url] = (time.monotonic(), found)
    return found


_JSON = {"Accept": "application/json"}


def define(name: str, settings: ProviderSettings, others: Iterable[Provider] = ()) -> Defined:
    """The provider a config block defines; DefinitionError for what cannot work."""
    from . import BUILT_IN  # late: this module is imported while the registry is built

    assert settings.flow is not None
    flow = "device" if settings.flow == "device" else "auth_code"
    if not settings.client_id:
        raise DefinitionError("client_id", "required: the OAuth client id to log in with")
    if not settings.api:
        raise DefinitionError("api", "required: the API base URL the tokens are sent to")
    discovery = settings.discovery
    issuer = settings.issuer.rstrip("/") if settings.issuer else None
    if discovery is None and issuer is not None:
        discovery = f"{issuer}/.well-known/openid-configuration"
    endpoints = dict(settings.endpoints)
    for key in endpoints.keys() - _ENDPOINTS:
        known = ", ".join(sorted(_ENDPOINTS))
        raise DefinitionError(f"endpoints.{key}", f"unknown endpoint (known: {known})")
    if flow == "auth_code":
        endpoints.setdefault("redirect_uri", LOOPBACK_REDIRECT)
    missing = [e for e in _NEEDS[flow] if e not in endpoints]
    if missing and discovery is None:
        raise DefinitionError(
            "endpoints",
            f"flow {settings.flow!r} needs endpoints.{' and endpoints.'.join(missing)}, "
            "or `issuer` (or `discovery`) to read them from OIDC discovery",
        )
    api = httpx.URL(settings.api)
    host, path = api.host, api.path.rstrip("/")
    _check_host(host, BUILT_IN.values(), others)
    endpoints["api"] = settings.api
    return Defined(
        name=name,
        title=settings.title or name,
        order=ORDER,
        flow=flow,
        client_id=settings.client_id,
        client_secret=settings.client_secret,
        scopes=tuple(settings.scopes),
        endpoints=endpoints,
        token_format=settings.token_format,
        routes=(
            Route(
                hosts=(host,),
                prefixes=(f"{path}/",) if path else ("/",),
                strip=path,
                dialect=settings.dialect,
            ),
        ),
        native_hosts=(host,),
        models_path="/models" if settings.dialect == "openai" else "/v1/models",
        discovery=discovery,
        issuer=issuer,
        token_header=settings.token_header,
        token_prefix=settings.token_prefix,
        static_headers=tuple(settings.headers.items()),
    )


def _check_host(host: str, built_in: Iterable[Provider], defined: Iterable[Provider]) -> None:
    owners = [
        p.name
        for p in built_in
        if host in _hosts_of(p)
        or any(host == h or (h.startswith(".") and host.endswith(h)) for h in p.api_hosts)
    ]
    if owners:
        raise DefinitionError(
            "api",
            f"{host} is a host of the built-in {' and '.join(owners)}: a defined provider "
            "cannot receive tokens there",
        )
    for p in defined:
        if host in _hosts_of(p):
            raise DefinitionError("api", f"{host} is already the API host of {p.name}")


def _hosts_of(p: Provider) -> set[str]:
    hosts = {h for r in p.routes for h in r.hosts} | set(p.native_hosts)
    for url in p.endpoints.values():
        try:
            hosts.add(httpx.URL(url).host)
        except httpx.InvalidURL:
            continue
    return hosts


__all__ = ["Defined", "DefinitionError", "define", "discover"]
