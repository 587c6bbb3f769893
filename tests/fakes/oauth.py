"""One fake OAuth server for every keyswap provider, following docs/providers.md.

    with FakeOAuth() as fake:
        config = fake.config_toml("codex")       # [providers.codex.endpoints] pointing here
        ...
        assert fake.count("codex", "refresh") == 1

Copilot: GitHub device flow (§1) plus the Copilot token exchange. Codex (§2), Anthropic (§5),
Gemini (§3) and Antigravity (§4): authorization code (+PKCE) with the providers' own refresh
rules, which `CLIENTS` describes as data; Gemini and Antigravity share Google's endpoints and
tell each other apart by client_id. Code Assist project discovery (§3.4) per `code_assist_mode`.
Codex also has its device-code sign-in (§2.1): `codex_device_approve` plays the person.
"""

from __future__ import annotations

import hashlib
import html
import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, ClassVar, Literal
from urllib.parse import urlencode, urlsplit

from .server import (
    FakeServer,
    Handler,
    Json,
    Reply,
    Request,
    Route,
    fail,
    form_reply,
    html_reply,
    json_reply,
    redirect,
    route,
)
from .tokens import RefreshRejected, TokenStore, b64url, fake_jwt, pkce_matches

if TYPE_CHECKING:
    import trustme

PROVIDERS = ("copilot", "codex", "anthropic", "gemini", "antigravity")
GOOGLE = ("gemini", "antigravity")

# Where each endpoint lives on the fake (keys are the keyswap endpoint names of §9).
PATHS: dict[str, dict[str, str]] = {
    "copilot": {
        "device_code": "/github/login/device/code",
        "token": "/github/login/oauth/access_token",
        "copilot_token": "/github-api/copilot_internal/v2/token",
        "usage": "/github-api/copilot_internal/user",
        "user": "/github-api/user",
        "api": "/copilot-api",
    },
    "codex": {
        "authorize": "/openai/oauth/authorize",
        "token": "/openai/oauth/token",
        "device_usercode": "/openai/api/accounts/deviceauth/usercode",
        "device_token": "/openai/api/accounts/deviceauth/token",
        "device_verification": "/openai/codex/device",
        "device_redirect_uri": "/openai/deviceauth/callback",
        "api": "/codex-api",
    },
    "anthropic": {
        "authorize": "/anthropic/oauth/authorize",
        "token": "/anthropic/v1/oauth/token",
        "redirect_uri": "/anthropic/oauth/code/callback",
        "profile": "/anthropic-api/api/oauth/profile",
        "api": "/anthropic-api",
    },
    **{
        p: {
            "authorize": "/google/o/oauth2/v2/auth",
            "token": "/google/token",
            "userinfo": "/google/oauth2/v1/userinfo",
            "code_assist": f"/{p}-code-assist",
        }
        for p in GOOGLE
    },
}
DEVICE_PAGE = "/github/login/device"

# A test's own answer in place of the fake's: given the credential the caller presented and
# the answer the fake would give (its tokens already issued and recorded), (status, body).
Tamper = Callable[[str, "Json"], tuple[int, "Json"]]


def oauth_error(error: str, description: str) -> Json:
    return {"error": error, "error_description": description}


def google_error(code: int, status: str, message: str) -> Json:
    return {"error": {"code": code, "message": message, "status": status}}


def anthropic_error(message: str) -> Json:
    return {"type": "error", "error": {"type": "authentication_error", "message": message}}


def codex_refresh_error(code: str, message: str) -> tuple[int, Json]:
    return 401, {"error": {"message": message, "type": "invalid_request_error", "code": code}}


GITHUB_BAD_CREDENTIALS = {
    "message": "Bad credentials",
    "documentation_url": "https://docs.github.com/rest",
    "status": "401",
}
GOOGLE_UNAUTHENTICATED = google_error(
    401,
    "UNAUTHENTICATED",
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
    "cookie or other valid authentication credential. "
    "See https://developers.google.com/identity/sign-in/web/devconsole-project.",
)
ANTHROPIC_BAD_REFRESH = (400, oauth_error("invalid_grant", "Refresh token not found or invalid"))
GOOGLE_BAD_REFRESH = (400, oauth_error("invalid_grant", "Token has been expired or revoked."))


@dataclass(frozen=True)
class Client:
    """How one provider's authorization-code client is checked and its tokens are minted."""

    provider: str
    client_id: str
    refresh_prefix: str
    access_prefix: str | None  # None: the access token is a JWT (Codex)
    refresh_reused: tuple[int, Json]  # answer to an already-used refresh token
    refresh_unknown: tuple[int, Json]  # answer to an unknown or revoked one
    secret: str | None = None
    exact: Mapping[str, str] = field(default_factory=dict)  # authorize params with fixed values
    scopes: tuple[str, ...] = ()  # required scopes (a Google scope matches by its last part)
    pkce_required: bool = True
    token_bodies: frozenset[str] = frozenset({"form", "json"})
    state_at_exchange: bool = False
    rotate: bool = False  # refresh issues a new refresh token; the old one becomes reused
    revoke_previous_access: bool = False  # refresh also kills the previous access token
    manual_redirect: str | None = None  # a fake path accepted as redirect_uri besides loopback


def _google_client(provider: str, client_id: str, secret: str, *scopes: str) -> Client:
    return Client(
        provider,
        client_id,
        refresh_prefix="1//",
        access_prefix="ya29.",
        refresh_reused=GOOGLE_BAD_REFRESH,
        refresh_unknown=GOOGLE_BAD_REFRESH,
        secret=secret,
        exact={"response_type": "code", "access_type": "offline"},
        scopes=("cloud-platform", *scopes),
        pkce_required=False,
        token_bodies=frozenset({"form"}),
    )


CLIENTS: dict[str, Client] = {
    "codex": Client(
        "codex",
        "app_EMoamEEZ73f0CkXaXp7hrann",
        refresh_prefix="rt_",
        access_prefix=None,
        refresh_reused=codex_refresh_error(
            "refresh_token_reused",
            "Your refresh token has already been used to generate a new access token. "
            "Please try signing in again.",
        ),
        refresh_unknown=codex_refresh_error(
            "refresh_token_invalidated",
            "Your refresh token has been invalidated. Please try signing in again.",
        ),
        exact={"response_type": "code", "code_challenge_method": "S256"},
        scopes=("openid", "offline_access"),
        rotate=True,
    ),
    "anthropic": Client(
        "anthropic",
        "9d1c250a-e61b-44d9-88ed-5944d1962f5e",
        refresh_prefix="sk-ant-ort01-",
        access_prefix="sk-ant-oat01-",
        refresh_reused=ANTHROPIC_BAD_REFRESH,
        refresh_unknown=ANTHROPIC_BAD_REFRESH,
        exact={"code": "true", "response_type": "code", "code_challenge_method": "S256"},
        scopes=("user:inference",),
        token_bodies=frozenset({"json"}),
        state_at_exchange=True,
        rotate=True,
        revoke_previous_access=True,
        manual_redirect=PATHS["anthropic"]["redirect_uri"],
    ),
    "gemini": _google_client(
        "gemini",
        "681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com",
        "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",
    ),
    "antigravity": _google_client(
        "antigravity",
        "1071006060591-tmhssin2h21lcre235vtolojh4g403ep.apps.googleusercontent.com",
        "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",
        "cclog",
        "experimentsandconfigs",
    ),
}
COPILOT_CLIENT_ID = "Iv1.b507a08c87ecfe98"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
GITHUB_DEVICE_DOCS = (
    "https://docs.github.com/developers/apps/authorizing-oauth-apps#error-codes-for-the-device-flow"
)

# Code Assist answers (§3.4), by `FakeOAuth.code_assist_mode`.
STANDARD_TIER = {
    "id": "standard-tier",
    "name": "Gemini Code Assist",
    "description": "Unlimited coding assistant with the most powerful Gemini models",
    "userDefinedCloudaicompanionProject": False,
}
FREE_TIER = {
    "id": "free-tier",
    "name": "Gemini Code Assist for individuals",
    "description": "Gemini Code Assist for individuals",
    "userDefinedCloudaicompanionProject": False,
}
SUNSET_MESSAGE = (
    "This client is no longer supported for Gemini Code Assist for individuals. "
    "Please migrate to the Antigravity suite."
)
LOAD_CODE_ASSIST: dict[str, Json] = {
    "existing": {
        "currentTier": STANDARD_TIER,
        "allowedTiers": [{**STANDARD_TIER, "isDefault": True}],
        "cloudaicompanionProject": "proj-existing",
    },
    "onboard": {
        "allowedTiers": [{**FREE_TIER, "isDefault": False}, {**STANDARD_TIER, "isDefault": True}],
    },
    "ineligible": {
        "ineligibleTiers": [
            {
                "reasonCode": "INELIGIBLE_ACCOUNT",
                "reasonMessage": SUNSET_MESSAGE,
                "tierId": "free-tier",
                "tierName": "Gemini Code Assist for individuals",
            }
        ],
    },
}
ONBOARD_RESPONSE_TYPE = (
    "type.googleapis.com/google.internal.cloud.code.v1internal.OnboardUserResponse"
)
ONBOARDED_PROJECT = {"id": "proj-onboarded", "name": "Onboarded Code Assist project"}
ANTHROPIC_ORG = {"uuid": "00000000-0000-4000-8000-0000000000a1", "name": "Fake Org"}
ANTHROPIC_ACCOUNT_UUID = "00000000-0000-4000-8000-0000000000b2"

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def with_query(url: str, **params: str) -> str:
    return f"{url}{'&' if urlsplit(url).query else '?'}{urlencode(params)}"


def is_loopback_http(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "http" and parts.hostname in _LOOPBACK


def number(value: float) -> float | int:
    """JSON-friendly: 5.0 -> 5, 0.2 stays 0.2."""
    return int(value) if float(value).is_integer() else value


@dataclass
class AuthCode:
    client: Client
    redirect_uri: str
    scope: str
    state: str
    challenge: str | None


DeviceStatus = Literal["pending", "approved", "denied", "expired"]


@dataclass
class DeviceCode:
    device_code: str
    user_code: str
    scope: str
    interval: float
    expires_at: float  # time.monotonic()
    status: DeviceStatus = "pending"
    login: str = "octocat"
    last_poll: float | None = None

    def poll_too_fast(self, now: float, slow_down_first: bool) -> bool:
        """Record a poll; True if it came sooner than `interval` after the last one, with a
        grace of 0.2 s (at most half the interval, so tiny test intervals are still enforced)."""
        last, self.last_poll = self.last_poll, now
        if last is None:
            return slow_down_first
        return now - last < self.interval - min(0.2, self.interval / 2)


@dataclass
class CodexDevice:
    """A Codex device code (§2.1). The server keeps the PKCE pair and hands the verifier
    back with the authorization code."""

    device_auth_id: str
    user_code: str
    expires_at: float  # time.monotonic()
    approved: bool = False


# What the Codex device endpoints answer while nothing is approved (§2.1: 403 or 404), and
# to a user-code request when device codes are not enabled (404).
CODEX_DEVICE_PENDING: dict[int, Json] = {
    403: {
        "error": {
            "message": "Device authorization is pending. Please try again.",
            "type": "invalid_request_error",
            "code": "deviceauth_authorization_pending",
        }
    },
    404: {"detail": "Not Found"},
}


class FakeOAuth(FakeServer):
    """Fake OAuth/token endpoints of all keyswap providers. See the module docstring."""

    # Every instance, so the test run can be scanned for any token they ever issued.
    instances: ClassVar[list[FakeOAuth]] = []

    def __init__(self, tls: trustme.CA | None = None) -> None:
        super().__init__(tls)
        FakeOAuth.instances.append(self)
        # device flow (Copilot)
        self.device_interval: float = 1
        self.device_expires_in: float = 900
        self.slow_down_once = False
        self.copilot_ttl: float = 1800
        self.copilot_api = self._url("copilot", "api")
        # authorization-code providers
        self.deny_consent = False
        self.access_ttl: float = 3600  # Codex
        self.anthropic_ttl: float = 28800
        self.google_ttl: float = 3599
        self.codex_email = "user@example.com"
        self.codex_account_id = "acct_123"
        self.anthropic_email = "user@example.com"
        self.google_email = "user@example.com"
        self.anthropic_last_paste: str | None = None
        self.code_assist_mode: dict[str, str] = dict.fromkeys(GOOGLE, "existing")
        # Codex device code (§2.1): the interval goes out as given (a string, as the real
        # server sends it); pending polls get this status; an unapproved code is forgotten
        # after `codex_device_expires_in` s (polls for it then get 404, as for any unknown
        # code); disabled, the user-code request gets 404.
        self.codex_device_enabled = True
        self.codex_device_interval: str | float = "1"
        self.codex_device_pending = 403
        self.codex_device_expires_in: float = 900
        self.codex_device_answers: list[Json] = []  # every successful poll's answer
        # A test's own answer to every device poll, given the poll's body.
        self.codex_device_reply: Callable[[Json], tuple[int, Json]] | None = None
        # Odd answers on demand: refresh grants (given the refresh token) and Copilot token
        # exchanges (given the GitHub token).
        self.refresh_reply: Tamper | None = None
        self.copilot_reply: Tamper | None = None

        self._tokens = TokenStore()
        self._devices: dict[str, DeviceCode] = {}
        self._codex_devices: dict[str, CodexDevice] = {}
        self._codes: dict[str, AuthCode] = {}
        self._operations: dict[str, tuple[str, int]] = {}  # op id -> (provider, polls)
        self.add_routes(self._route_table())

    # configuration helpers

    def _url(self, provider: str, key: str) -> str:
        return self.base_url + PATHS[provider][key]

    def endpoints(self, provider: str) -> dict[str, str]:
        """keyswap's `[providers.<provider>.endpoints]` overrides pointing at this fake."""
        return {key: self._url(provider, key) for key in PATHS[provider]}

    def config_toml(self, *providers: str, extra: str = "") -> str:
        """TOML endpoint tables for `providers` (all if none given), then `extra`."""
        lines: list[str] = []
        for provider in providers or PROVIDERS:
            lines.append(f"[providers.{provider}.endpoints]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in self.endpoints(provider).items()]
            lines.append("")
        return "\n".join(lines) + extra

    # token state

    def issued_secrets(self) -> set[str]:
        """Every access and refresh token this server ever issued, live or not."""
        with self._lock:
            return set(self._tokens.access) | set(self._tokens.refresh)

    def valid_access_tokens(self, provider: str) -> set[str]:
        """Unexpired, unrevoked access tokens; "copilot" = Copilot tokens, "github" = gho_."""
        with self._lock:
            return self._tokens.valid(provider)

    @property
    def valid_copilot_tokens(self) -> set[str]:
        return self.valid_access_tokens("copilot")

    def mint(self, provider: str, login: str = "octocat") -> Json:
        """A login made elsewhere (by the provider's own CLI or editor plugin, which
        `login import` takes over): the token answer that tool got, without any request
        to this fake. Copilot: `{"access_token": <GitHub token of `login`>}`."""
        with self._lock:
            if provider == "copilot":
                token = "ghu_" + secrets.token_hex(18)
                self._tokens.add("github", token, float("inf"), login)
                return {"access_token": token, "token_type": "bearer", "scope": "read:user"}
            client = CLIENTS[provider]
            return self._issue(client, " ".join(client.scopes or ("openid",)))

    def unused_refresh_tokens(self, provider: str) -> set[str]:
        """Refresh tokens of `provider` that a refresh would still accept."""
        with self._lock:
            return {
                t for t, e in self._tokens.refresh.items() if e.provider == provider and not e.used
            }

    def revoke(self, provider: str, token: str) -> bool:
        """Forget an access or refresh token of `provider`; False if it was not known."""
        with self._lock:
            return self._tokens.revoke(provider, token)

    def revoke_refresh_tokens(self, provider: str) -> int:
        """Revoke every refresh token of `provider` (as a password change would); how many."""
        with self._lock:
            return self._tokens.revoke_refresh(provider)

    def expire(self, provider: str, token: str | None = None) -> None:
        """Make one (or every) access token of `provider` expired."""
        with self._lock:
            self._tokens.expire(provider, token)

    # device-flow approval (Copilot)

    def github_approve(
        self, user_code: str | None = None, login: str = "octocat", timeout: float = 5.0
    ) -> str:
        """Approve a pending device code (None = the latest), waiting up to `timeout` for one."""
        return self._settle(user_code, "approved", timeout, login)

    def github_deny(self, user_code: str | None = None, timeout: float = 5.0) -> str:
        return self._settle(user_code, "denied", timeout)

    def github_expire(self, user_code: str | None = None, timeout: float = 5.0) -> str:
        return self._settle(user_code, "expired", timeout)

    def codex_device_approve(self, user_code: str | None = None, timeout: float = 5.0) -> str:
        """Approve a live Codex device code (None = the latest), waiting up to `timeout`."""

        def live() -> CodexDevice | None:
            now = time.monotonic()
            found = [
                d
                for d in self._codex_devices.values()
                if now < d.expires_at and user_code in (None, d.user_code)
            ]
            return found[-1] if found else None

        with self._lock:
            if not self._lock.wait_for(lambda: live() is not None, timeout):
                raise LookupError(f"no live Codex device code {user_code or ''}".strip())
            device = live()
            assert device is not None
            device.approved = True
            return device.user_code

    def _pending(self, user_code: str | None) -> DeviceCode | None:
        pending = [
            d
            for d in self._devices.values()
            if d.status == "pending"
            and time.monotonic() < d.expires_at
            and user_code in (None, d.user_code)
        ]
        return pending[-1] if pending else None

    def _settle(
        self, user_code: str | None, status: DeviceStatus, timeout: float, login: str = ""
    ) -> str:
        with self._lock:
            if not self._lock.wait_for(lambda: self._pending(user_code) is not None, timeout):
                raise LookupError(f"no pending device code {user_code or ''}".strip())
            device = self._pending(user_code)
            assert device is not None
            device.status = status
            device.login = login or device.login
            return device.user_code

    # routes

    def _route_table(self) -> list[Route]:
        def at(method: str, provider: str, key: str, handler: Handler) -> Route:
            return route(method, PATHS[provider][key], handler, (provider, key))

        routes = [
            at("POST", "copilot", "device_code", self._device_code),
            at("POST", "copilot", "token", self._device_poll),
            at("GET", "copilot", "copilot_token", self._copilot_token),
            at("GET", "copilot", "usage", self._copilot_usage),
            at("GET", "copilot", "user", self._github_user),
            route("GET", DEVICE_PAGE, self._device_page, ("copilot", "verification")),
            at("POST", "codex", "device_usercode", self._codex_usercode),
            at("POST", "codex", "device_token", self._codex_device_poll),
            at("GET", "codex", "device_verification", self._codex_device_page),
            at("GET", "anthropic", "redirect_uri", self._paste_page),
            at("GET", "anthropic", "profile", self._anthropic_profile),
            route("GET", PATHS["gemini"]["userinfo"], self._google_userinfo, self._userinfo_label),
        ]
        for group in (("codex",), ("anthropic",), GOOGLE):
            for method, key, by_client in (
                ("GET", "authorize", self._authorize),
                ("POST", "token", self._token),
            ):
                label = partial(self._client_label, group, key)
                path = PATHS[group[0]][key]
                routes.append(route(method, path, partial(by_client, group), label))
        for p in GOOGLE:
            base = PATHS[p]["code_assist"] + "/v1internal"
            for method, suffix, name, by_provider in (
                ("POST", ":loadCodeAssist", "loadCodeAssist", self._load_code_assist),
                ("POST", ":onboardUser", "onboardUser", self._onboard_user),
                ("GET", "/operations/{op}", "operation", self._operation),
            ):
                routes.append(route(method, base + suffix, partial(by_provider, p), (p, name)))
        return routes

    def _client(self, group: tuple[str, ...], client_id: str | None) -> Client | None:
        return next((CLIENTS[p] for p in group if CLIENTS[p].client_id == client_id), None)

    def _client_label(self, group: tuple[str, ...], key: str, req: Request) -> tuple[str, str]:
        """Provider by client_id ("google" if unknown); a refresh grant is labelled "refresh"."""
        client = self._client(group, req.field("client_id") or req.params.get("client_id"))
        provider = client.provider if client else group[0] if len(group) == 1 else "google"
        refresh = key == "token" and req.field("grant_type") == "refresh_token"
        return provider, "refresh" if refresh else key

    # GitHub device flow and Copilot token (§1)

    def _github_reply(self, req: Request, payload: Json, status: int = 200) -> Reply:
        """GitHub answers JSON only when asked to, form-encoded otherwise."""
        if "application/json" in req.headers.get("accept", ""):
            return json_reply(payload, status)
        return form_reply(payload, status)

    def _github_error(self, req: Request, error: str, description: str, **extra: object) -> Reply:
        payload = {
            "error": error,
            "error_description": description,
            "error_uri": GITHUB_DEVICE_DOCS,
        }
        return self._github_reply(req, payload | extra)

    def _device_code(self, req: Request) -> Reply:
        if req.field("client_id") != COPILOT_CLIENT_ID:
            return self._github_reply(
                req, oauth_error("incorrect_client_credentials", "Unknown client_id."), 400
            )
        user_code = f"{secrets.token_hex(2).upper()}-{secrets.token_hex(2).upper()}"
        device = DeviceCode(
            device_code=secrets.token_hex(20),
            user_code=user_code,
            scope=req.field("scope") or "",
            interval=self.device_interval,
            expires_at=time.monotonic() + self.device_expires_in,
        )
        self._devices[device.device_code] = device
        return self._github_reply(
            req,
            {
                "device_code": device.device_code,
                "user_code": user_code,
                "verification_uri": self.base_url + DEVICE_PAGE,
                "expires_in": number(self.device_expires_in),
                "interval": number(device.interval),
            },
        )

    def _device_poll(self, req: Request) -> Reply:
        err = partial(self._github_error, req)
        if req.field("client_id") != COPILOT_CLIENT_ID:
            return err("incorrect_client_credentials", "The client_id passed is incorrect.")
        if req.field("grant_type") != DEVICE_GRANT:
            return err("unsupported_grant_type", f"The grant type must be {DEVICE_GRANT}.")
        device = self._devices.get(req.field("device_code") or "")
        if device is None:
            return err("incorrect_device_code", "The device_code provided is not valid.")
        now = time.monotonic()
        if device.status == "expired" or now >= device.expires_at:
            return err("expired_token", "The device_code has expired.")
        if device.poll_too_fast(now, self.slow_down_once):
            device.interval += 5  # RFC 8628 §3.5
            return err(
                "slow_down",
                "Too many requests have been made in the same timeframe.",
                interval=number(device.interval),
            )
        if device.status == "denied":
            return err("access_denied", "The authorization request was denied.")
        if device.status == "pending":
            return err("authorization_pending", "The authorization request is still pending.")
        del self._devices[device.device_code]
        token = "gho_" + secrets.token_hex(18)
        self._tokens.add("github", token, float("inf"), device.login)
        return self._github_reply(
            req, {"access_token": token, "token_type": "bearer", "scope": device.scope}
        )

    def _device_page(self, req: Request) -> Reply:
        return html_reply("<h1>Device activation</h1><p>Enter the code shown in your terminal.</p>")

    def _github_login(self, req: Request) -> str:
        entry = self._tokens.find(req.credential("token", "bearer"), ("github",))
        if entry is None or entry.expired:
            raise fail(401, GITHUB_BAD_CREDENTIALS)
        return entry.subject

    def _github_user(self, req: Request) -> Reply:
        login = self._github_login(req)
        return json_reply({"login": login, "id": 1, "type": "User", "name": login.title()})

    def _copilot_token(self, req: Request) -> Reply:
        self._github_login(req)
        ttl = self.copilot_ttl
        exp = int(time.time() + ttl)
        token = (
            f"tid={secrets.token_hex(16)};exp={exp};sku=copilot_for_individuals;"
            f"proxy-ep=proxy.individual.githubcopilot.com;st=dotcom;chat=1;"
            f"8kp=1:{secrets.token_hex(32)}"
        )
        self._tokens.add("copilot", token, ttl)
        return self._tampered(
            self.copilot_reply,
            req.credential("token", "bearer") or "",
            {
                "token": token,
                "expires_at": exp,
                "refresh_in": number(max(ttl - 300, 0)),
                "endpoints": {
                    "api": self.copilot_api,
                    "proxy": "https://proxy.individual.githubcopilot.com",
                    "origin-tracker": "https://origin-tracker.individual.githubcopilot.com",
                    "telemetry": "https://telemetry.individual.githubcopilot.com",
                },
                "sku": "copilot_for_individuals",
                "chat_enabled": True,
                "individual": True,
            },
        )

    @staticmethod
    def _tampered(tamper: Tamper | None, credential: str, answer: Json) -> Reply:
        status, body = tamper(credential, answer) if tamper else (200, answer)
        return json_reply(body, status)

    def _copilot_usage(self, req: Request) -> Reply:
        unlimited = {"entitlement": 0, "remaining": 0, "percent_remaining": 100, "unlimited": True}
        premium = {"entitlement": 300, "remaining": 250, "percent_remaining": 83.3}
        return json_reply(
            {
                "login": self._github_login(req),
                "access_type_sku": "copilot_for_individuals",
                "copilot_plan": "individual",
                "quota_reset_date": "2099-01-01",
                "quota_snapshots": {
                    "chat": unlimited,
                    "completions": unlimited,
                    "premium_interactions": premium | {"unlimited": False, "overage_count": 0},
                },
            }
        )

    # Codex device code (§2.1; codex `device_code_auth.rs`)

    def _codex_usercode(self, req: Request) -> Reply:
        if not self.codex_device_enabled:
            raise fail(404, CODEX_DEVICE_PENDING[404])
        if req.body_kind != "json":
            raise fail(400, oauth_error("invalid_request", "The body must be JSON."))
        if req.field("client_id") != CLIENTS["codex"].client_id:
            raise fail(400, oauth_error("invalid_client", "Unknown client_id."))
        letters = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
        user_code = "-".join("".join(secrets.choice(letters) for _ in range(4)) for _ in "ab")
        device = CodexDevice(
            device_auth_id="deviceauth_" + secrets.token_urlsafe(24),
            user_code=user_code,
            expires_at=time.monotonic() + self.codex_device_expires_in,
        )
        self._codex_devices[device.device_auth_id] = device
        return json_reply(
            {
                "device_auth_id": device.device_auth_id,
                "user_code": user_code,
                "interval": self.codex_device_interval,
            }
        )

    def _codex_device_poll(self, req: Request) -> Reply:
        if req.body_kind != "json":
            raise fail(400, oauth_error("invalid_request", "The body must be JSON."))
        if self.codex_device_reply is not None:
            status, body = self.codex_device_reply(req.body or {})
            return json_reply(body, status)
        device = self._codex_devices.get(req.field("device_auth_id") or "")
        if device is not None and time.monotonic() >= device.expires_at:
            del self._codex_devices[device.device_auth_id]
            device = None
        if device is None or req.field("user_code") != device.user_code:
            raise fail(404, CODEX_DEVICE_PENDING[404])
        if not device.approved:
            status = self.codex_device_pending
            raise fail(status, CODEX_DEVICE_PENDING[status])
        del self._codex_devices[device.device_auth_id]
        verifier = secrets.token_urlsafe(64)
        challenge = b64url(hashlib.sha256(verifier.encode()).digest())
        code = secrets.token_urlsafe(24)
        scope = "openid profile email offline_access"
        redirect_uri = self._url("codex", "device_redirect_uri")
        self._codes[code] = AuthCode(CLIENTS["codex"], redirect_uri, scope, "", challenge)
        answer = {
            "authorization_code": code,
            "code_challenge": challenge,
            "code_verifier": verifier,
        }
        self.codex_device_answers.append(answer)
        return json_reply(answer)

    def _codex_device_page(self, req: Request) -> Reply:
        return html_reply("<h1>Enter code</h1><p>Enter the code shown in your terminal.</p>")

    # authorization code + PKCE (Codex §2, Anthropic §5, Google §3/§4)

    def _authorize(self, group: tuple[str, ...], req: Request) -> Reply:
        client = self._client(group, req.params.get("client_id"))
        if client is None:
            raise fail(400, oauth_error("invalid_client", "Unknown client_id."))
        problem = self._authorize_problem(client, req.params)
        if problem:
            raise fail(400, oauth_error("invalid_request", problem))
        params = req.params
        uri, state = params["redirect_uri"], params["state"]
        if self.deny_consent:
            description = "The user denied the request."
            return redirect(
                with_query(uri, error="access_denied", error_description=description, state=state)
            )
        code = secrets.token_urlsafe(24)
        challenge = params.get("code_challenge")
        self._codes[code] = AuthCode(client, uri, params["scope"], state, challenge)
        return redirect(with_query(uri, code=code, state=state))

    def _authorize_problem(self, client: Client, params: dict[str, str]) -> str | None:
        needed = ("redirect_uri", "scope", "state", "code_challenge")
        for name in needed if client.pkce_required else needed[:-1]:
            if not params.get(name):
                return f"missing {name}"
        for name, want in client.exact.items():
            if params.get(name) != want:
                return f"{name} must be {want!r}"
        if params.get("code_challenge") and params.get("code_challenge_method") != "S256":
            return "code_challenge_method must be 'S256'"
        granted = params["scope"].split()
        for scope in client.scopes:
            if not any(g == scope or g.endswith("/auth/" + scope) for g in granted):
                return f"scope must include {scope}"
        uri = params["redirect_uri"]
        manual = client.manual_redirect and uri == self.base_url + client.manual_redirect
        if not (manual or is_loopback_http(uri)):
            return f"redirect_uri {uri} is not allowed"
        return None

    def _token(self, group: tuple[str, ...], req: Request) -> Reply:
        client = self._client(group, req.field("client_id"))
        if client is None:
            raise fail(401, oauth_error("invalid_client", "Unknown client_id."))
        if req.body_kind not in client.token_bodies:
            kinds = " or ".join(sorted(client.token_bodies))
            raise fail(400, oauth_error("invalid_request", f"The body must be {kinds}."))
        if client.secret is not None and req.field("client_secret") != client.secret:
            raise fail(401, oauth_error("invalid_client", "Unauthorized"))
        grant = req.field("grant_type")
        if grant == "authorization_code":
            return json_reply(self._exchange_code(client, req))
        if grant == "refresh_token":
            answer = self._refresh(client, req)
            return self._tampered(self.refresh_reply, req.field("refresh_token") or "", answer)
        raise fail(400, oauth_error("unsupported_grant_type", f"Unsupported grant {grant!r}."))

    def _exchange_code(self, client: Client, req: Request) -> Json:
        code = req.field("code") or ""
        pending = self._codes.get(code)
        invalid = partial(oauth_error, "invalid_grant")
        if pending is None or pending.client != client:
            raise fail(400, invalid("Invalid or already used authorization code."))
        if req.field("redirect_uri") != pending.redirect_uri:
            raise fail(400, invalid("redirect_uri does not match the authorization request."))
        if client.state_at_exchange and req.field("state") != pending.state:
            raise fail(400, invalid("state does not match the authorization request."))
        if pending.challenge and not pkce_matches(req.field("code_verifier"), pending.challenge):
            raise fail(400, invalid("code_verifier does not match the code_challenge."))
        del self._codes[code]
        return self._issue(client, pending.scope)

    def _refresh(self, client: Client, req: Request) -> Json:
        token = req.field("refresh_token") or ""
        try:
            entry = self._tokens.redeem(
                client.provider,
                token,
                rotate=client.rotate,
                revoke_access=client.revoke_previous_access,
            )
        except RefreshRejected as exc:
            raise fail(*(client.refresh_reused if exc.reused else client.refresh_unknown)) from None
        return self._issue(client, entry.scope, keep_refresh=None if client.rotate else token)

    def _ttl(self, provider: str) -> float:
        ttls = {"codex": self.access_ttl, "anthropic": self.anthropic_ttl}
        return ttls.get(provider, self.google_ttl)

    def _issue(self, client: Client, scope: str, keep_refresh: str | None = None) -> Json:
        """Mint an access token (and a refresh token unless keeping one) and the response."""
        ttl = self._ttl(client.provider)
        now = int(time.time())
        if client.access_prefix is None:
            access = self._codex_jwt(now, ttl, audience="https://api.openai.com/v1")
        else:
            access = client.access_prefix + secrets.token_urlsafe(32)
        refresh = keep_refresh or client.refresh_prefix + secrets.token_urlsafe(32)
        self._tokens.add(client.provider, access, ttl)
        self._tokens.link(client.provider, refresh, access, scope)
        body: Json = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": number(ttl),
            "scope": scope,
        }
        if keep_refresh is None:
            body["refresh_token"] = refresh
        if client.provider == "codex":
            body["id_token"] = self._codex_jwt(now, ttl, audience=client.client_id)
        elif client.provider == "anthropic":
            account = {"uuid": ANTHROPIC_ACCOUNT_UUID, "email_address": self.anthropic_email}
            body |= {"organization": ANTHROPIC_ORG, "account": account}
        else:
            body["id_token"] = fake_jwt(
                {
                    "iss": "https://accounts.google.com",
                    "aud": client.client_id,
                    "sub": "100000000000000000001",
                    "email": self.google_email,
                    "email_verified": True,
                    "iat": now,
                    "exp": now + int(ttl),
                }
            )
        return body

    def _codex_jwt(self, now: int, ttl: float, audience: str) -> str:
        return fake_jwt(
            {
                "iss": "https://auth.openai.com",
                "aud": [audience],
                "sub": "auth0|fake-user",
                "iat": now,
                "exp": now + int(ttl),
                "jti": secrets.token_hex(8),
                "email": self.codex_email,
                "email_verified": True,
                "https://api.openai.com/auth": {
                    "chatgpt_account_id": self.codex_account_id,
                    "chatgpt_plan_type": "plus",
                    "chatgpt_user_id": "user-fake",
                },
                "https://api.openai.com/profile": {"email": self.codex_email},
            }
        )

    # Anthropic manual-paste page and profile (§5)

    def _paste_page(self, req: Request) -> Reply:
        code, state = req.params.get("code"), req.params.get("state", "")
        if not code:
            error = html.escape(req.params.get("error", "missing code"))
            return html_reply(f"<h1>Authorization failed</h1><p>{error}</p>", 400)
        self.anthropic_last_paste = f"{code}#{state}"
        pasted = html.escape(self.anthropic_last_paste)
        return html_reply(
            "<h1>Authentication Code</h1><p>Paste this into Claude Code:</p>"
            f'<code id="auth-code">{pasted}</code>'
        )

    def _anthropic_profile(self, req: Request) -> Reply:
        entry = self._tokens.find(req.credential("bearer"), ("anthropic",))
        if entry is None:
            raise fail(401, anthropic_error("Invalid bearer token"))
        if entry.expired:
            raise fail(
                401,
                anthropic_error(
                    "OAuth token has expired. Please obtain a new token or refresh your "
                    "existing token."
                ),
            )
        account = {
            "uuid": ANTHROPIC_ACCOUNT_UUID,
            "email": self.anthropic_email,
            "full_name": "Fake User",
            "display_name": "Fake",
            "has_claude_max": True,
            "has_claude_pro": False,
        }
        organization = ANTHROPIC_ORG | {"organization_type": "claude_max"}
        return json_reply({"account": account, "organization": organization})

    # Google userinfo and Code Assist (§3, §4)

    def _google_account(self, req: Request, providers: tuple[str, ...]) -> None:
        entry = self._tokens.find(req.credential("bearer"), providers)
        if entry is None or entry.expired:
            raise fail(401, GOOGLE_UNAUTHENTICATED)

    def _userinfo_label(self, req: Request) -> tuple[str, str]:
        entry = self._tokens.find(req.credential("bearer"), GOOGLE)
        return (entry.provider if entry else "google"), "userinfo"

    def _google_userinfo(self, req: Request) -> Reply:
        self._google_account(req, GOOGLE)
        return json_reply(
            {
                "id": "100000000000000000001",
                "email": self.google_email,
                "verified_email": True,
                "name": "Fake User",
                "given_name": "Fake",
                "family_name": "User",
            }
        )

    def _code_assist_body(self, provider: str, req: Request) -> Json:
        """Authenticate a Code Assist call and return its JSON body."""
        self._google_account(req, (provider,))
        if req.body_kind != "json" or not isinstance((req.body or {}).get("metadata"), dict):
            raise fail(400, google_error(400, "INVALID_ARGUMENT", "metadata is required."))
        return req.body or {}

    def _load_code_assist(self, provider: str, req: Request) -> Reply:
        self._code_assist_body(provider, req)
        return json_reply(LOAD_CODE_ASSIST[self.code_assist_mode.get(provider, "existing")])

    def _onboard_user(self, provider: str, req: Request) -> Reply:
        body = self._code_assist_body(provider, req)
        tier = body.get("tierId", body.get("tier_id"))
        if self.code_assist_mode.get(provider) == "ineligible":
            raise fail(400, google_error(400, "FAILED_PRECONDITION", SUNSET_MESSAGE))
        if tier not in ("free-tier", "standard-tier", "legacy-tier"):
            raise fail(400, google_error(400, "INVALID_ARGUMENT", f"Unknown tier {tier!r}."))
        if tier == "free-tier" and body.get("cloudaicompanionProject"):
            raise fail(400, google_error(400, "FAILED_PRECONDITION", "Precondition check failed."))
        op = f"op{len(self._operations) + 1}"
        self._operations[op] = (provider, 0)
        return json_reply({"name": f"operations/{op}", "done": False})

    def _operation(self, provider: str, req: Request) -> Reply:
        self._google_account(req, (provider,))
        op = req.args["op"]
        owner, polls = self._operations.get(op, ("", 0))
        if owner != provider:
            raise fail(404, google_error(404, "NOT_FOUND", f"Operation {op} not found."))
        self._operations[op] = (provider, polls + 1)
        if polls == 0:
            return json_reply({"name": f"operations/{op}", "done": False})
        response = {
            "@type": ONBOARD_RESPONSE_TYPE,
            "cloudaicompanionProject": ONBOARDED_PROJECT,
        }
        return json_reply({"name": f"operations/{op}", "done": True, "response": response})
