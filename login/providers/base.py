"""A provider is data (client id, scopes, endpoints, flow) plus small adapter hooks.

The generic parts of every OAuth dance live here; a provider module fills in the
data and overrides a hook only where the provider really differs.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, SecretStr, model_validator

from ..credential import Credential
from ..errors import ClientError, LoginError, NeedsLogin, RefreshFailed
from ..flows import authcode, device
from ..flows.http import body_of, error_code, error_text, send
from ..ui import LoginUI
from .paths import CheckedPath, under
from .shapes import dump_json, parse_json
from .streams import Reshaper

# Refresh answers that mean the login is gone for good (RFC 6749 §5.2, OpenAI's codes).
_DEAD_GRANT = {
    "invalid_grant",
    "invalid_client",
    "unauthorized_client",
    "refresh_token_reused",
    "refresh_token_expired",
    "refresh_token_invalidated",
}


Dialect = Literal["openai", "anthropic", "google"]


class Route(BaseModel):
    """Requests to `hosts` whose path is at or below one of `prefixes` carry this provider's
    token to `{api base}` + the path without `strip`. `dialect` is the API shape the client
    speaks (for error bodies)."""

    model_config = ConfigDict(frozen=True)

    hosts: tuple[str, ...]
    prefixes: tuple[str, ...] = ("/",)
    strip: str = ""
    dialect: Dialect

    @model_validator(mode="after")
    def _strip_is_a_prefix(self) -> Route:
        # What is delivered is the approved path minus `strip`, so nothing else may change.
        if not all(p.startswith(self.strip) for p in self.prefixes):
            raise ValueError(f"strip {self.strip!r} is not a prefix of every route prefix")
        return self

    def matches(self, host: str, path: CheckedPath) -> bool:
        """Only a checked path: one that no server reads as a path outside the prefix."""
        return host in self.hosts and any(under(path, p) for p in self.prefixes)


@dataclass
class ApiCall:
    """A request on its way to the provider's API, relative to the API base."""

    method: str
    path: str
    query: list[tuple[str, str]]
    headers: list[tuple[str, str]]
    body: bytes
    client_path: str = ""
    client_query: list[tuple[str, str]] = field(default_factory=list)
    # What `prepare` learned that `reshape` needs (e.g. whether the client wanted a stream).
    notes: dict[str, Any] = field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        """The body as a JSON object ({} when there is none); ClientError when it is not one."""
        data = parse_json(self.body) if self.body else {}
        if not isinstance(data, dict):
            raise ClientError(400, "the request body must be a JSON object")
        return data

    def with_json(self, data: dict[str, Any], **changes: Any) -> ApiCall:
        headers = [(k, v) for k, v in self.headers if k.lower() != "content-type"]
        headers.append(("content-type", "application/json"))
        return replace(self, body=dump_json(data), headers=headers, **changes)


@dataclass(frozen=True)
class LocalReply:
    """An answer keyswap gives itself, without calling the provider (e.g. a models list)."""

    status: int
    body: bytes
    content_type: str = "application/json"


@dataclass
class LoginContext:
    http: httpx.AsyncClient
    endpoints: Mapping[str, str]
    ui: LoginUI
    bucket: str
    timeout: float = 300.0


class Provider(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    title: str
    flow: Literal["device", "auth_code"]
    client_id: str
    # Installed-app secrets that the vendors publish in their own CLIs (Google); not secret.
    client_secret: str | None = None
    scopes: tuple[str, ...]
    endpoints: dict[str, str]
    authorize_params: dict[str, str] = {}
    token_format: Literal["form", "json"] = "form"
    refresh_format: Literal["form", "json"] | None = None  # None: as token_format
    send_state_in_exchange: bool = False
    fallback_ports: tuple[int, ...] = ()
    # "loopback": the code comes to a listener on the redirect URI (or is pasted);
    # "paste": the provider's page shows the code and the user pastes it (a loopback
    # redirect URI from the config is listened on too, if its port is free).
    callback: Literal["loopback", "paste"] = "loopback"
    # Refresh this many seconds before the access token expires.
    refresh_skew: float = 300.0
    # Where a placeholder for this provider may be sent, and where it is delivered.
    routes: tuple[Route, ...] = ()
    # Hosts where a bare `oauth` placeholder means this provider.
    native_hosts: tuple[str, ...] = ()
    # Hosts the token may be delivered to, besides the `api` endpoint's host; a leading
    # "." admits subdomains.
    api_hosts: tuple[str, ...] = ()

    # -- login ---------------------------------------------------------------------------

    async def login(self, ctx: LoginContext) -> Credential:
        if self.flow == "device":
            tokens = await self._device_login(ctx)
        else:
            tokens = await self._auth_code_login(ctx)
        return await self.finish_login(ctx, tokens)

    async def _device_login(self, ctx: LoginContext) -> dict[str, Any]:
        scope = " ".join(self.scopes)
        code = await device.request_code(
            ctx.http, ctx.endpoints["device_code"], self.client_id, scope
        )
        await ctx.ui.device_code(code.user_code, code.verification_uri)
        return await device.poll_token(ctx.http, ctx.endpoints["token"], self.client_id, code)

    async def _auth_code_login(self, ctx: LoginContext) -> dict[str, Any]:
        pkce, state = authcode.Pkce.new(), authcode.new_state()
        redirect_uri = ctx.endpoints["redirect_uri"]
        listener = None
        if authcode.listens(redirect_uri):
            # The fallback ports are registered only beside the default redirect URI.
            default = redirect_uri == self.endpoints.get("redirect_uri")
            fallback = self.fallback_ports if default else ()
            try:
                listener = authcode.CallbackListener.bind(redirect_uri, state, fallback)
            except LoginError:
                if self.callback == "loopback":
                    raise
                # A paste flow only listens where it can; the pasted code works regardless.
            if listener is not None:
                redirect_uri = listener.redirect_uri
        params = {
            **self.authorize_params,
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(self.scopes),
            "code_challenge": pkce.challenge,
            "code_challenge_method": "S256",
            "state": state,
        }
        url = authcode.authorize_url(ctx.endpoints["authorize"], params)
        try:
            ctx.ui.authorize_url(url, self.title, listening=listener is not None)
        except BaseException:
            if listener is not None:
                listener.close()
            raise
        code = await authcode.wait_for_code(listener, state, ctx.ui, ctx.timeout)
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "client_id": self.client_id,
            "code_verifier": pkce.verifier,
        }
        if self.send_state_in_exchange:
            form["state"] = state
        return await self.token_request(ctx.http, ctx.endpoints["token"], form, "signing in")

    async def finish_login(self, ctx: LoginContext, tokens: dict[str, Any]) -> Credential:
        """Turn the token answer into a credential; providers add account, project, ..."""
        return self.credential(ctx.bucket, tokens)

    # -- refresh -------------------------------------------------------------------------

    async def refresh(
        self, http: httpx.AsyncClient, endpoints: Mapping[str, str], cred: Credential
    ) -> Credential:
        """A fresh credential. Raises NeedsLogin when the grant is gone for good and
        RefreshFailed when it may pass (network, 5xx)."""
        if not cred.refresh:
            raise NeedsLogin(self.name, cred.bucket, "the login expired and cannot be refreshed")
        form = {
            "grant_type": "refresh_token",
            "refresh_token": cred.refresh,
            "client_id": self.client_id,
        }
        try:
            tokens = await self.token_request(
                http, endpoints["token"], form, "refreshing", self.refresh_format
            )
        except _Rejected as exc:
            if exc.code in _DEAD_GRANT or exc.status in (400, 401):
                raise NeedsLogin(
                    self.name, cred.bucket, f"refresh refused ({exc.reason})"
                ) from None
            raise RefreshFailed(
                f"{self.name}/{cred.bucket}: refresh failed ({exc.reason})"
            ) from None
        except LoginError as exc:
            raise RefreshFailed(f"{self.name}/{cred.bucket}: {exc}") from None
        return self.credential(cred.bucket, tokens, previous=cred)

    # -- shared helpers ------------------------------------------------------------------

    async def token_request(
        self,
        http: httpx.AsyncClient,
        url: str,
        fields: dict[str, str],
        what: str,
        fmt: Literal["form", "json"] | None = None,
    ) -> dict[str, Any]:
        if self.client_secret:
            fields = {**fields, "client_secret": self.client_secret}
        headers = {"Accept": "application/json"}
        if (fmt or self.token_format) == "json":
            req = http.build_request("POST", url, json=fields, headers=headers)
        else:
            req = http.build_request("POST", url, data=fields, headers=headers)
        resp = await send(http, req, what)
        data = body_of(resp)
        if resp.status_code != 200 or not data.get("access_token"):
            raise _Rejected(what, resp.status_code, data)
        return data

    def credential(
        self, bucket: str, tokens: dict[str, Any], previous: Credential | None = None
    ) -> Credential:
        """Keep the old refresh token when the answer carries none (Google does not rotate)."""
        refresh = tokens.get("refresh_token") or (previous.refresh if previous else None)
        expires_in = tokens.get("expires_in")
        return Credential(
            provider=self.name,
            bucket=bucket,
            access_token=SecretStr(str(tokens["access_token"])),
            refresh_token=SecretStr(refresh) if refresh else None,
            expires_at=time.time() + float(expires_in) if expires_in else None,
            account=previous.account if previous else None,
            extra=dict(previous.extra) if previous else {},
            updated_at=time.time(),
        )

    # -- API requests (used by the addon) ------------------------------------------------

    def api_base(self, cred: Credential, endpoints: Mapping[str, str]) -> str:
        return endpoints["api"].rstrip("/")

    def may_deliver_to(self, host: str, endpoints: Mapping[str, str]) -> bool:
        """Whether a token of this provider may be sent to `host`."""
        if host == _host_of(endpoints.get("api", "")):
            return True
        return any(
            host == allowed or (allowed.startswith(".") and host.endswith(allowed))
            for allowed in self.api_hosts
        )

    def api_headers(
        self, cred: Credential, path: str, headers: Mapping[str, str], body: bytes
    ) -> dict[str, str]:
        """Headers to set on an API request beside `Authorization: Bearer <token>`.
        `headers` are the client's (credentials already removed)."""
        return {}

    def model_of(self, call: ApiCall) -> str | None:
        """The model a request asks for: the JSON body's `model`."""
        try:
            model = call.json().get("model")
        except ClientError:
            return None
        return model if isinstance(model, str) else None

    def prepare(self, call: ApiCall, cred: Credential) -> ApiCall | LocalReply:
        """Rewrite a request into what the provider's endpoint accepts (envelopes, required
        fields). Raises ClientError for a request that cannot be served."""
        return call

    def reshape(self, call: ApiCall, status: int) -> Reshaper | None:
        """How to rewrite the response body for the client, if at all."""
        return None


@functools.lru_cache(maxsize=64)
def _host_of(url: str) -> str:
    return httpx.URL(url).host


class _Rejected(LoginError):
    """The token endpoint said no. Carries the code, never the request's secrets."""

    def __init__(self, what: str, status: int, data: dict[str, Any]) -> None:
        self.status, self.code = status, error_code(data)
        self.reason = error_text(data) or f"HTTP {status}"
        super().__init__(f"{what} failed: {self.reason}")
