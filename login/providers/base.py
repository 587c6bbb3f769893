"""A provider is data (client id, scopes, endpoints, flow) plus small adapter hooks.

The generic parts of every OAuth dance live here; a provider module fills in the
data and overrides a hook only where the provider really differs.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, SecretStr, model_validator

from ..credential import Credential
from ..errors import ClientError, LoginError, NeedsLogin, RefreshFailed, login_command
from ..flows import authcode, device
from ..flows.http import body_of, error_code, error_text, send
from ..redact import redact
from ..ui import LoginUI
from .paths import CheckedPath, under
from .ratelimit import retry_after
from .shapes import dump_json, parse_json
from .sources import IMPORTED_BY, Source
from .sources import taken_back as _source_changed
from .streams import Reshaper
from .usage import Outcome, Window

log = logging.getLogger(__name__)

# Refresh answers that mean the login is gone for good (RFC 6749 §5.2, OpenAI's codes).
_DEAD_GRANT = {
    "invalid_grant",
    "invalid_client",
    "unauthorized_client",
    "refresh_token_reused",
    "refresh_token_expired",
    "refresh_token_invalidated",
}
# Form fields keyswap sends to a token endpoint that are secrets (an answer may quote them).
_SECRET_FIELDS = ("refresh_token", "code", "code_verifier", "client_secret", "device_code")

# Bounds on how long keyswap trusts a fresh access token, whatever its answer says. The floor
# keeps a token usable for a minute past the refresh skew, so a nonsense expiry (-30, 0) costs
# one refresh a minute rather than one per request; a token that really dies sooner gets a 401,
# and the API's refresh-once path covers that. The ceiling caps absurd values (1e12).
MIN_USABLE = 60.0
MAX_LIFETIME = 30 * 86400.0


def seconds(value: object) -> float | None:
    """A number of seconds as a provider sent it (a number or a numeric string); None for
    anything else, so an odd field never stops the answer from being kept."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):  # "abc", or an integer too large for a float
        return None
    return number if math.isfinite(number) else None


def token_text(value: object) -> str | None:
    """A token as a provider sent it: a non-empty string, or a number's digits; None for
    anything else (an object is no token)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    return value if isinstance(value, str) and value else None


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


# How long a browser sign-in waits for its callback or a pasted code, unless told otherwise.
BROWSER_WAIT = 300.0


@dataclass
class LoginContext:
    http: httpx.AsyncClient
    endpoints: Mapping[str, str]
    ui: LoginUI
    bucket: str
    # Give up after this long; None: the flow's own limit (BROWSER_WAIT for a browser sign-in,
    # the code's lifetime for a device code).
    timeout: float | None = None
    # Sign in with the provider's device code instead of its browser sign-in
    # (`device_alternative`).
    device: bool = False
    # The person will paste the answer (`--no-browser`): a callback port that cannot be
    # listened on is said, and the sign-in goes on by paste alone.
    paste: bool = False
    # The provider's own login options as the user gave them (`Provider.login_options`).
    options: Mapping[str, str] = field(default_factory=dict)


class LoginOption(BaseModel):
    """A command-line option of one provider's login (`keyswap login <provider> --flag V`):
    data the CLI turns into an argument; its value reaches `login` as `ctx.options[dest]`."""

    model_config = ConfigDict(frozen=True)

    flag: str  # "--start-url"
    dest: str  # "start_url"
    help: str
    metavar: str | None = None
    choices: tuple[str, ...] | None = None


class Provider(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    title: str
    flow: Literal["device", "auth_code"]
    client_id: str
    # Installed-app secrets that the vendors publish in their own CLIs; not secret.
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
    # An auth-code provider that also offers a device code (`_device_login`), for machines
    # where no browser can reach the loopback callback: `--device`, or automatic when no
    # browser opens and nothing can be pasted.
    device_alternative: bool = False
    # Refresh this many seconds before the access token expires.
    refresh_skew: float = 300.0
    # How long an access token is trusted when its answer gives no usable expiry; short of
    # the provider's real lifetime, so an unknown expiry means refreshing early, not late.
    default_lifetime: float = 3600.0
    # Where a placeholder for this provider may be sent, and where it is delivered.
    routes: tuple[Route, ...] = ()
    # Hosts where a bare `oauth` placeholder means this provider.
    native_hosts: tuple[str, ...] = ()
    # Hosts the token may be delivered to, besides the `api` endpoint's host; a leading
    # "." admits subdomains.
    api_hosts: tuple[str, ...] = ()
    # Where this provider is listed among the others (status page, help, doctor).
    order: int = 100
    # Seconds between polls of `poll_usage` (None: the provider has no usage endpoint).
    usage_poll: float | None = None
    # Bytes that mark a usage event inside a streamed answer (`usage_from_event`).
    usage_event: bytes | None = None
    # The account's models for the status page: a GET of this path under the API base
    # (with `models_query()`); None when the provider has no listing keyswap reads.
    models_path: str | None = None
    # Whether a refresh spends the refresh token (a new one comes back, the old one is dead):
    # then one login cannot be shared with another tool, and importing one takes it over.
    rotates_refresh: bool = False
    # Options of this provider's login beyond the bucket (an issuer URL, a sign-in method).
    login_options: tuple[LoginOption, ...] = ()

    # -- login ---------------------------------------------------------------------------

    async def login(self, ctx: LoginContext) -> Credential:
        if ctx.device and self.flow != "device" and not self.device_alternative:
            raise LoginError(f"{self.title} has no device-code sign-in")
        if self.flow == "device" or ctx.device:
            tokens = await self._device_login(ctx)
        else:
            tokens = await self._auth_code_login(ctx)
        return await self.finish_login(ctx, tokens)

    async def _device_login(self, ctx: LoginContext) -> dict[str, Any]:
        """The token answer of a device-code sign-in (RFC 8628); a provider whose device flow
        differs (or that offers one beside its browser sign-in) overrides this."""
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
            except authcode.CannotListen as exc:
                # A paste flow only listens where it can; the pasted code works regardless.
                # A loopback flow goes on by paste when the person said they would paste.
                if self.callback == "loopback":
                    if not ctx.paste:
                        raise
                    ctx.ui.step(
                        f"{exc.reason}, so nothing catches the browser's redirect: paste the "
                        "URL the browser lands on (or its code) here"
                    )
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
        wait = BROWSER_WAIT if ctx.timeout is None else ctx.timeout
        code = await authcode.wait_for_code(listener, state, ctx.ui, wait)
        return await self.exchange_code(ctx, code, redirect_uri, pkce.verifier, state)

    async def exchange_code(
        self,
        ctx: LoginContext,
        code: str,
        redirect_uri: str,
        verifier: str,
        state: str | None = None,
    ) -> dict[str, Any]:
        """The token endpoint's answer to an authorization code (with its PKCE verifier)."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "client_id": self.client_id,
            "code_verifier": verifier,
        }
        if self.send_state_in_exchange and state is not None:
            form["state"] = state
        return await self.token_request(ctx.http, ctx.endpoints["token"], form, "signing in")

    async def finish_login(self, ctx: LoginContext, tokens: dict[str, Any]) -> Credential:
        """Turn the token answer into a credential; providers add account, project, ..."""
        return self.credential(ctx.bucket, tokens)

    # -- import (`keyswap import`, login/imports.py) -----------------------------

    def import_sources(self) -> tuple[Source, ...]:
        """Where other tools keep a login of this provider that keyswap can take over, in the
        order to look (paths are read from the environment when called). None by default: a
        provider module that knows its tool's store (Kiro's `~/.aws/sso/cache/...`, say)
        overrides this with its own `Source`, and `import` works for it unchanged."""
        return ()

    async def finish_import(self, ctx: LoginContext, cred: Credential) -> Credential:
        """An imported login, just refreshed: what a login would add that the other tool's
        file does not hold (a project, an account name)."""
        return cred

    def taken_back(self, cred: Credential) -> NeedsLogin | None:
        """Why a refresh of an imported login was refused, when its refresh tokens rotate and
        the tool it came from has refreshed it since (its file holds another refresh token
        than the one imported): that tool owns the login again. None otherwise. Reads a
        file: call it off the event loop."""
        if not self.rotates_refresh:
            return None
        where = _source_changed(cred.extra, cred.account, self.import_sources())
        if where is None:
            return None
        tool = cred.extra.get(IMPORTED_BY, "the tool it came from")
        return NeedsLogin(
            self.name,
            cred.bucket,
            f"{tool} refreshed this login after it was imported ({where} changed): the login "
            "now belongs to it",
            f"run `{login_command(self.name, cred.bucket, 'import ')}` again or log in "
            f"(`{login_command(self.name, cred.bucket)}`)",
        )

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
            tokens = await self._token_answer(
                http, endpoints["token"], form, "refreshing", self.refresh_format
            )
            # An answer with neither token is a refusal (GitHub answers errors with 200). One
            # with only a new refresh token is kept: the old one may be spent already.
            if not token_text(tokens.get("access_token")) and not token_text(
                tokens.get("refresh_token")
            ):
                raise _Rejected("refreshing", 200, tokens, self._secrets_sent(form))
        except _Rejected as exc:
            why = redact(exc.reason, cred.secrets())
            if exc.code in _DEAD_GRANT or exc.status in (400, 401):
                raise NeedsLogin(self.name, cred.bucket, f"refresh refused ({why})") from None
            raise RefreshFailed(f"{self.name}/{cred.bucket}: refresh failed ({why})") from None
        except LoginError as exc:
            raise RefreshFailed(f"{self.name}/{cred.bucket}: {exc}") from None
        # From here on nothing may fail: the provider has rotated the refresh token.
        return self._refined(self.credential(cred.bucket, tokens, previous=cred), tokens)

    def refined(self, cred: Credential, tokens: dict[str, Any]) -> Credential:
        """What a provider reads from a refresh answer beyond the tokens (account, claims)."""
        return cred

    def _refined(self, cred: Credential, tokens: dict[str, Any]) -> Credential:
        try:
            return self.refined(cred, tokens)
        except Exception as exc:
            # The answer's tokens are already in `cred` and the old refresh token may be
            # spent: a surprise in the extras must not throw the new tokens away.
            log.warning(
                "%s/%s: part of the refresh answer could not be read (%s); using its tokens",
                self.name,
                cred.bucket,
                type(exc).__name__,
            )
            return cred

    # -- shared helpers ------------------------------------------------------------------

    async def token_request(
        self,
        http: httpx.AsyncClient,
        url: str,
        fields: dict[str, str],
        what: str,
        fmt: Literal["form", "json"] | None = None,
    ) -> dict[str, Any]:
        """The token endpoint's answer, which carries an access token; _Rejected otherwise."""
        data = await self._token_answer(http, url, fields, what, fmt)
        if not token_text(data.get("access_token")):
            raise _Rejected(what, 200, data, self._secrets_sent(fields))
        return data

    async def _token_answer(
        self,
        http: httpx.AsyncClient,
        url: str,
        fields: dict[str, str],
        what: str,
        fmt: Literal["form", "json"] | None,
    ) -> dict[str, Any]:
        """The token endpoint's 200 answer, whatever it holds; _Rejected for any other."""
        if self.client_secret:
            fields = {**fields, "client_secret": self.client_secret}
        headers = {"Accept": "application/json"}
        if (fmt or self.token_format) == "json":
            req = http.build_request("POST", url, json=fields, headers=headers)
        else:
            req = http.build_request("POST", url, data=fields, headers=headers)
        resp = await send(http, req, what)
        data = body_of(resp)
        if resp.status_code != 200:
            raise _Rejected(what, resp.status_code, data, self._secrets_sent(fields))
        return data

    def _secrets_sent(self, fields: Mapping[str, str]) -> tuple[str | None, ...]:
        return (*(fields.get(k) for k in _SECRET_FIELDS), self.client_secret)

    def credential(
        self, bucket: str, tokens: dict[str, Any], previous: Credential | None = None
    ) -> Credential:
        """The answer as a credential; never fails, whatever the answer holds. Keeps the old
        refresh token when the answer carries none (not every provider rotates it). An answer
        with no usable access token gives an expired credential, refreshed on its next use."""
        now = time.time()
        access = token_text(tokens.get("access_token"))
        refresh = token_text(tokens.get("refresh_token")) or (
            previous.refresh if previous else None
        )
        return Credential(
            provider=self.name,
            bucket=bucket,
            access_token=SecretStr(access or ""),
            refresh_token=SecretStr(refresh) if refresh else None,
            expires_at=self.expiry(self.lifetime(tokens), now) if access else 0.0,
            account=previous.account if previous else None,
            extra=dict(previous.extra) if previous else {},
            updated_at=now,
            login_at=previous.login_at if previous else now,
        )

    def lifetime(self, tokens: dict[str, Any]) -> float | None:
        """Seconds the answer's access token lives, as it says; None if it does not say."""
        return seconds(tokens.get("expires_in"))

    def expiry(self, lifetime: float | None, now: float) -> float:
        """When to treat a token issued `now` as expired: its lifetime (else the default),
        within [refresh skew + MIN_USABLE, MAX_LIFETIME]."""
        if lifetime is None:
            lifetime = self.default_lifetime
        return now + min(max(lifetime, self.refresh_skew + MIN_USABLE), MAX_LIFETIME)

    # -- API requests (used by the addon) ------------------------------------------------

    def api_base(self, cred: Credential, endpoints: Mapping[str, str]) -> str:
        return endpoints["api"].rstrip("/")

    def models_query(self) -> list[tuple[str, str]]:
        """The query of the models listing (`models_path`)."""
        return []

    def known_models(self) -> tuple[str, ...] | None:
        """The models keyswap serves without asking the provider, if it knows them."""
        return None

    def may_deliver_to(self, host: str, endpoints: Mapping[str, str]) -> bool:
        """Whether a token of this provider may be sent to `host`."""
        if host == _host_of(endpoints.get("api", "")):
            return True
        return any(
            host == allowed or (allowed.startswith(".") and host.endswith(allowed))
            for allowed in self.api_hosts
        )

    def auth_headers(self, token: str) -> dict[str, str]:
        """How an API request carries the access token."""
        return {"Authorization": f"Bearer {token}"}

    def api_headers(
        self, cred: Credential, path: str, headers: Mapping[str, str], body: bytes
    ) -> dict[str, str]:
        """Headers to set on an API request beside the token's (`auth_headers`).
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

    def rate_limit_hint(self, headers: Mapping[str, str], body: bytes) -> float | None:
        """Seconds until a 429 lifts, from what the answer says (`Retry-After` here; a
        provider with hints of its own adds them); None when it says nothing."""
        return retry_after(headers)

    # -- what answers say about the account (login/providers/usage.py) ---------------------

    def classify(self, status: int, headers: Mapping[str, str]) -> Outcome:
        """What an answer's status means for the bucket that served it. A provider whose
        quota errors are not 429s (a 402 or 403 for an exhausted allowance) says so here;
        for those it must also be able to tell from the headers alone, since the body is
        the client's to read."""
        if status == 429:
            return "rotate"
        if status == 401:
            return "refresh"
        return "ok" if status < 400 else "pass"

    def usage_from_headers(self, headers: Mapping[str, str]) -> list[Window]:
        """The account's quota windows as an answer's headers report them (any answer)."""
        return []

    def usage_from_event(self, event: dict[str, Any]) -> list[Window]:
        """The account's quota windows as one event of a streamed answer reports them (the
        event's parsed JSON data); most providers send none inside a stream."""
        return []

    async def poll_usage(
        self, http: httpx.AsyncClient, endpoints: Mapping[str, str], cred: Credential
    ) -> list[Window]:
        """The account's quota windows from a usage endpoint, for a provider whose answers
        do not carry them (`usage_poll` seconds apart); [] when it has none."""
        return []

    def conversation(self, call: ApiCall) -> str | None:
        """The conversation a request belongs to, from what the client sends (a session id
        in the body or headers), so that its turns stay on one account and its prompt cache
        is read. None when the client names none."""
        return None


@functools.lru_cache(maxsize=64)
def _host_of(url: str) -> str:
    return httpx.URL(url).host


class _Rejected(LoginError):
    """The token endpoint said no. Carries the code, never the request's secrets: `sent`
    are the values that were sent, taken out of whatever the answer quotes."""

    def __init__(
        self, what: str, status: int, data: dict[str, Any], sent: Iterable[str | None]
    ) -> None:
        self.status, self.code = status, error_code(data)
        self.reason = redact(error_text(data), sent) or f"HTTP {status}"
        super().__init__(f"{what} failed: {self.reason}")
