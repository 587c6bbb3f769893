"""OpenAI Codex (ChatGPT Plus/Pro): auth code + PKCE against auth.openai.com with the
Codex CLI's client, or its device code (`--device`); the ChatGPT account id comes from the
id_token (docs/providers.md §2)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from ..credential import Credential, jwt_claims
from ..errors import LoginError
from ..flows import device
from ..flows.http import body_of, error_text, send
from ..redact import redact
from .base import ApiCall, LocalReply, LoginContext, Provider, Route, seconds, token_text
from .ratelimit import json_object, latest
from .sessions import body_id, header_id
from .shapes import BodyShape
from .sources import Found, Source, Unusable, obj, optional_text, text
from .streams import LastSSEEvent, Reshaper
from .usage import Outcome, Window
from .windows import number, percent, reset_time

_AUTH_CLAIM = "https://api.openai.com/auth"
# The Codex release keyswap names for a client that names none (the openai SDK). The backend
# gates newer models by client version (docs/providers.md §2.1: `models?client_version=<semver>`):
# each model has a `minimal_client_version`, the models list leaves out what the named version
# does not reach, and a turn for one is refused "requires a newer version of Codex". Seen in
# 2026-09: gpt-5.6-* need 0.144.0, gpt-6-astra 0.153.0, gpt-6.1-sol is listed from 0.160.0.
# A Codex client's own version goes as it is: it knows which models it can drive.
CLIENT_VERSION = "0.160.0"
# The two usage windows every answer reports, as the headers (`x-codex-<name>-*`) and the
# `codex.rate_limits` event name them (docs/providers.md §2.5; codex `rate_limits.rs`).
# Which is the 5-hour and which the weekly one is the window's length, not its name.
WINDOWS = ("primary", "secondary")
# The limit family those windows belong to. The backend also reports per-model families
# (`x-codex-<family>-primary-*`, an event's `metered_limit_name`); keyswap reads only this
# one: a per-model limit at 100 % does not make the whole account unusable.
FAMILY = "codex"
# The session headers Codex clients send (docs/providers.md §2.2: the official CLI's
# `session_id`; numman also `conversation_id`; CPA `Session-Id`).
SESSION_HEADERS = ("session_id", "conversation_id", "session-id")
# What an answer means for the account (docs/providers.md §2.5). A 429 is the usage limit
# (`usage_limit_reached`, `usage_not_included`); 503 `server_is_overloaded` is the backend's.
OUTCOMES: dict[int, Outcome] = {
    429: "rotate",
    401: "refresh",  # `token_expired`: refresh once
}


# The device-code sign-in (docs/providers.md §2.1; codex `device_code_auth.rs`): the official
# CLI gives up on an unapproved code after 15 minutes; a 404 on the user-code request means
# the account has not allowed device codes.
DEVICE_WAIT = 15 * 60.0
DEVICE_NOT_ENABLED = (
    'device code sign-in is not enabled for this ChatGPT account: turn on "device code '
    'authorization for Codex" in ChatGPT Settings → Security (a workspace account: ask its '
    "admin), or sign in without --device"
)


class Codex(Provider):
    def import_sources(self) -> tuple[Source, ...]:
        """The Codex CLI's `$CODEX_HOME/auth.json` (default `~/.codex`), as its
        `codex-rs/login/src/auth/storage.rs` writes it. A CLI configured to keep its login in
        the OS keyring (`cli_auth_credentials_store`) has no file to import."""
        home = os.environ.get("CODEX_HOME")
        base = Path(home).expanduser() if home else Path.home() / ".codex"
        return (Source("Codex CLI", "`codex login`", (base / "auth.json",), _auth_json),)

    async def _device_login(self, ctx: LoginContext) -> dict[str, Any]:
        """Ask for a user code, show it, poll until it is approved (403 and 404 mean not
        yet), then exchange the authorization code the poll hands back, with the PKCE
        verifier the server made, as a browser sign-in would."""
        urls = ctx.endpoints
        ask = ctx.http.build_request(
            "POST", urls["device_usercode"], json={"client_id": self.client_id}, headers=_JSON
        )
        resp = await send(ctx.http, ask, "requesting a device code")
        data = body_of(resp)
        if resp.status_code == 404:
            raise LoginError(DEVICE_NOT_ENABLED)
        auth_id = token_text(data.get("device_auth_id"))
        user_code = token_text(data.get("user_code") or data.get("usercode"))
        if resp.status_code != 200 or not auth_id or not user_code:
            why = error_text(data) or f"HTTP {resp.status_code}"
            raise LoginError(f"requesting a device code failed: {why}")
        sent = (auth_id, user_code)

        def judge(resp: httpx.Response, data: dict[str, Any]) -> device.Verdict:
            if resp.status_code in (403, 404):  # `deviceauth_authorization_pending`, or none
                return "pending"
            if resp.status_code == 200 and all(
                token_text(data.get(k)) for k in ("authorization_code", "code_verifier")
            ):
                return data
            why = redact(error_text(data), sent) or f"HTTP {resp.status_code}"
            raise LoginError(f"device code sign-in failed: {why}")

        await ctx.ui.device_code(user_code, urls["device_verification"])
        limit = DEVICE_WAIT if ctx.timeout is None else min(DEVICE_WAIT, ctx.timeout)
        poll = {"device_auth_id": auth_id, "user_code": user_code}
        answer = await device.poll(
            ctx.http,
            lambda: ctx.http.build_request("POST", urls["device_token"], json=poll, headers=_JSON),
            judge,
            interval=device.interval_of(data.get("interval")),
            limit=limit,
            expired=f"the device code was not approved within {_span(limit)}; run the login again",
        )
        return await self.exchange_code(
            ctx,
            str(answer["authorization_code"]),
            urls["device_redirect_uri"],
            str(answer["code_verifier"]),
        )

    async def finish_login(self, ctx: LoginContext, tokens: dict[str, Any]) -> Credential:
        return self._with_claims(self.credential(ctx.bucket, tokens), tokens)

    def refined(self, cred: Credential, tokens: dict[str, Any]) -> Credential:
        return self._with_claims(cred, tokens)

    def lifetime(self, tokens: dict[str, Any]) -> float | None:
        """`expires_in`, else what the access token's own `exp` claim leaves."""
        said = super().lifetime(tokens)
        if said is not None:
            return said
        exp = seconds(jwt_claims(str(tokens.get("access_token") or "")).get("exp"))
        return None if exp is None else exp - time.time()

    def _with_claims(self, cred: Credential, tokens: dict[str, Any]) -> Credential:
        """Account id and email from the id_token (as the official CLI reads them), else from
        the access token."""
        claims = jwt_claims(str(tokens.get("id_token") or "")) or jwt_claims(cred.token)
        auth = claims.get(_AUTH_CLAIM) or jwt_claims(cred.token).get(_AUTH_CLAIM) or {}
        extra = dict(cred.extra)
        for key in ("chatgpt_account_id", "chatgpt_plan_type"):
            if isinstance(auth, dict) and auth.get(key):
                extra[key.removeprefix("chatgpt_")] = str(auth[key])
        update: dict[str, Any] = {"extra": extra}
        if claims.get("email"):
            update["account"] = str(claims["email"])
        return cred.model_copy(update=update)

    def prepare(self, call: ApiCall, cred: Credential) -> ApiCall | LocalReply:
        """The ChatGPT backend takes only stateless streamed Responses (docs/providers.md §2.3),
        and lists models for a client version (§2.1)."""
        if call.method == "GET" and call.path.endswith("/models"):
            if any(k == "client_version" for k, _ in call.query):
                return call
            return replace(call, query=[*call.query, ("client_version", CLIENT_VERSION)])
        if call.method != "POST" or not call.path.endswith("/responses"):
            return call
        body = call.json()
        shape = _ResponsesRequest.of(body)
        for name in _UNSUPPORTED:
            body.pop(name, None)
        body["store"] = False
        body["stream"] = True
        if shape.instructions is None:
            body["instructions"] = ""
        include = shape.include or []
        if "reasoning.encrypted_content" not in include:
            body["include"] = [*include, "reasoning.encrypted_content"]
        prepared = call.with_json(body)
        prepared.headers = [(k, v) for k, v in prepared.headers if k.lower() != "accept"]
        prepared.headers.append(("accept", "text/event-stream"))
        prepared.notes["stream"] = shape.stream is True
        return prepared

    def rate_limit_hint(self, headers: Mapping[str, str], body: bytes) -> float | None:
        """The error's `resets_in_seconds` or `resets_at` (docs/providers.md §2.5)."""
        err = json_object(body).get("error")
        said = None
        if isinstance(err, dict):
            if isinstance(err.get("resets_in_seconds"), int | float):
                said = float(err["resets_in_seconds"])
            elif isinstance(err.get("resets_at"), int | float):
                said = float(err["resets_at"]) - time.time()
        return latest(super().rate_limit_hint(headers, body), said)

    def classify(self, status: int, headers: Mapping[str, str]) -> Outcome:
        """The table above, and a 404 on an account whose window is full: numman (alone)
        reports the usage limit answered as a 404 carrying `usage_limit_reached`
        (docs/providers.md §2.5). Its body is the client's, so keyswap reads the window the
        same answer's headers report instead; any other 404 is the request's."""
        if status == 404 and any(w.used >= 1 for w in self.usage_from_headers(headers)):
            return "rotate"
        return OUTCOMES.get(status) or super().classify(status, headers)

    def usage_from_headers(self, headers: Mapping[str, str]) -> list[Window]:
        """`x-codex-{primary,secondary}-used-percent` (0..100), `-window-minutes` and
        `-reset-at` (unix seconds; a small value is taken as seconds from now), else
        `-reset-after-seconds` (docs/providers.md §2.5; codex `rate_limits.rs`)."""
        now = time.time()
        found = []
        for name in WINDOWS:
            prefix = f"x-{FAMILY}-{name}-"
            used = percent(headers.get(prefix + "used-percent"))
            if used is None:
                continue
            reset = reset_time(headers.get(prefix + "reset-at"), now)
            if reset is None:
                after = number(headers.get(prefix + "reset-after-seconds"))
                reset = None if after is None else now + after
            window = _window(name, used, number(headers.get(prefix + "window-minutes")), reset)
            if window is not None:
                found.append(window)
        return found

    def usage_from_event(self, event: dict[str, Any]) -> list[Window]:
        """The `codex.rate_limits` event at the start of a stream: `rate_limits.{primary,
        secondary}` with `used_percent`, `window_minutes`, `reset_at` (unix seconds) and, in
        captured events, `reset_after_seconds` (codex `rate_limits.rs`
        `parse_rate_limit_event`). One gateway's tests put the windows at the top level: both
        shapes are read. An event for another limit family (`metered_limit_name`) is not
        this account's general limit and is skipped."""
        if event.get("type") != "codex.rate_limits":
            return []
        family = event.get("metered_limit_name") or event.get("limit_name") or FAMILY
        if not isinstance(family, str) or family.strip().lower().replace("-", "_") != FAMILY:
            return []
        details = event.get("rate_limits")
        if not isinstance(details, dict):
            details = event
        now = time.time()
        found = []
        for name in WINDOWS:
            said = details.get(name)
            if not isinstance(said, dict):
                continue
            used = percent(said.get("used_percent"))
            if used is None:
                continue
            reset = reset_time(said.get("reset_at"), now)
            if reset is None:
                reset = reset_time(said.get("resets_at"), now)
            if reset is None:
                after = number(said.get("reset_after_seconds"))
                reset = None if after is None else now + after
            window = _window(name, used, number(said.get("window_minutes")), reset)
            if window is not None:
                found.append(window)
        return found

    def conversation(self, call: ApiCall) -> str | None:
        """The client's session header (the official CLI's `session_id` is its conversation
        id; docs/providers.md §2.2), else the body's `prompt_cache_key`, which Codex clients
        set to their session id (CPA `cacheHelper`, pi-mono)."""
        session = header_id(call.headers, *SESSION_HEADERS)
        if session is not None:
            return f"session:{session}"
        key = body_id(call.body, "prompt_cache_key")
        return None if key is None else f"prompt_cache_key:{key}"

    def models_query(self) -> list[tuple[str, str]]:
        # The backend lists only the models a client of this version may use.
        return [("client_version", CLIENT_VERSION)]

    def reshape(self, call: ApiCall, status: int) -> Reshaper | None:
        if status != 200 or call.notes.get("stream", True):
            return None
        return LastSSEEvent(_final_response)

    def api_headers(
        self, cred: Credential, path: str, headers: Mapping[str, str], body: bytes
    ) -> dict[str, str]:
        out = {"originator": headers.get("originator") or "codex_cli_rs"}
        if not headers.get("version"):
            # The Codex CLI's identity headers carry its version; the turn's model gate reads
            # it (pleaseai/shunt's notes). Another account measured a gate no header lifts;
            # then the backend's 400 reaches the client as it is (see CLIENT_VERSION).
            out["version"] = CLIENT_VERSION
        if cred.extra.get("account_id"):
            out["chatgpt-account-id"] = cred.extra["account_id"]
        return out


def _auth_json(data: Any) -> list[Found]:
    """`{"OPENAI_API_KEY": ..., "tokens": {"id_token", "access_token", "refresh_token",
    "account_id"}, "last_refresh": ...}`; a file with only an API key is no ChatGPT login."""
    root = obj(data, "the file")
    tokens = root.get("tokens")
    if not tokens:
        if root.get("OPENAI_API_KEY"):
            raise Unusable("it holds an OpenAI API key, not a ChatGPT login")
        raise Unusable("it holds no ChatGPT login (no `tokens`)")
    tokens = obj(tokens, "`tokens`")
    refresh = text(tokens, "refresh_token", "tokens.refresh_token")
    access = optional_text(tokens, "access_token")
    claims = jwt_claims(optional_text(tokens, "id_token") or "") or jwt_claims(access or "")
    auth = claims.get(_AUTH_CLAIM)
    auth = auth if isinstance(auth, dict) else {}
    extra = {}
    account_id = optional_text(tokens, "account_id") or auth.get("chatgpt_account_id")
    if account_id:
        extra["account_id"] = str(account_id)
    plan = auth.get("chatgpt_plan_type")
    if plan:
        extra["plan_type"] = str(plan)
    exp = seconds(jwt_claims(access or "").get("exp"))
    email = claims.get("email")
    return [
        Found(
            refresh=refresh,
            access=access,
            expires_at=exp,
            account=str(email) if email else None,
            extra=extra,
            note=f"ChatGPT {plan}" if plan else None,
        )
    ]


class _ResponsesRequest(BodyShape):
    """What `prepare` reads of a Responses request."""

    stream: bool | None = None
    instructions: str | None = None
    include: list[str] | None = None


# Fields the backend rejects or that make no sense without server-side storage.
_UNSUPPORTED = (
    "max_output_tokens",
    "max_completion_tokens",
    "previous_response_id",
    "prompt_cache_retention",
    "safety_identifier",
    "stream_options",
)


_JSON = {"Accept": "application/json"}


def _span(limit: float) -> str:
    return f"{limit / 60:g} minutes" if limit >= 60 else f"{limit:g} s"


def _window(name: str, used: float, minutes: float | None, reset: float | None) -> Window | None:
    """A window, unless it says nothing: 0 % used, no length and no reset (the official
    client drops such a window too, `rate_limits.rs` `parse_rate_limit_window`)."""
    if not used and not minutes and reset is None:
        return None
    return Window(name, used, reset, minutes or None)


def _final_response(event: dict[str, Any]) -> dict[str, Any] | None:
    """The finished Response object a non-streaming caller expects."""
    if event.get("type") in ("response.completed", "response.failed", "response.incomplete"):
        response = event.get("response")
        return response if isinstance(response, dict) else None
    return None


PROVIDER = Codex(
    name="codex",
    order=20,
    usage_event=b'"codex.rate_limits"',
    models_path="/models",
    title="ChatGPT (Codex)",
    flow="auth_code",
    device_alternative=True,
    client_id="app_EMoamEEZ73f0CkXaXp7hrann",
    scopes=("openid", "profile", "email", "offline_access"),
    endpoints={
        "authorize": "https://auth.openai.com/oauth/authorize",
        "token": "https://auth.openai.com/oauth/token",
        "redirect_uri": "http://localhost:1455/auth/callback",
        "device_usercode": "https://auth.openai.com/api/accounts/deviceauth/usercode",
        "device_token": "https://auth.openai.com/api/accounts/deviceauth/token",
        "device_verification": "https://auth.openai.com/codex/device",
        "device_redirect_uri": "https://auth.openai.com/deviceauth/callback",
        "api": "https://chatgpt.com/backend-api/codex",
    },
    authorize_params={
        "id_token_add_organizations": "true",
        "codex_cli_simplified_flow": "true",
        "originator": "codex_cli_rs",
    },
    # The official CLI's Hydra allow-list has 1455 and 1457 for this client.
    fallback_ports=(1457,),
    refresh_format="json",  # as the official CLI sends it
    rotates_refresh=True,  # docs/providers.md §2: a used refresh token is `refresh_token_reused`
    routes=(
        Route(
            hosts=("chatgpt.com",),
            prefixes=("/backend-api/codex/",),
            strip="/backend-api/codex",
            dialect="openai",
        ),
        Route(
            hosts=("api.openai.com",),
            prefixes=("/v1/responses", "/v1/models"),
            strip="/v1",
            dialect="openai",
        ),
    ),
    native_hosts=("chatgpt.com", "api.openai.com"),
)
