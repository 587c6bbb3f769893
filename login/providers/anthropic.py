"""Anthropic Claude Pro/Max: auth code + PKCE with the Claude Code client; the user
pastes the `code#state` the callback page shows (docs/providers.md §5).

Both tokens rotate on refresh and the old pair dies at once, so refreshes must be
serialised across processes (the token service does that for every provider).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..credential import Credential
from .base import ApiCall, LoginContext, Provider, Route
from .ratelimit import is_number, latest
from .sessions import claude_session
from .sources import Found, Source, Unusable, millis, obj, optional_text, side_file, text
from .usage import Outcome, Window
from .windows import number, reset_time

OAUTH_BETA = "oauth-2025-04-20"
# The unified limiter's headers (docs/providers.md §5.3): per window `-utilization` (a fraction,
# 0..1), `-reset` (unix seconds) and `-status` (allowed, allowed_warning, rejected).
UNIFIED = "anthropic-ratelimit-unified-"
# The windows keyswap reads, as the headers name them, with their length in minutes.
WINDOWS = (("5h", 300.0), ("7d", 10080.0), ("7d_oi", 10080.0))
# The paid "extra usage" budget beyond the plan (`-overage-*`): a window only while it is
# enabled and reports a utilization (public usage monitors show it so; a status alone,
# e.g. "rejected" for an organisation that disabled it, declares a policy, not a use).
OVERAGE = "overage"
# What an answer means for the account (docs/providers.md §5.3); other errors are the
# request's own (400 "only authorized for use with Claude Code", 403 permission_error, 413).
OUTCOMES: dict[int, Outcome] = {
    429: "rotate",  # the unified limiter (or a request rate limit): rest until the reset
    401: "refresh",  # "OAuth token has expired": refresh once
    529: "pass",  # overloaded_error: Anthropic's capacity, not this account's
}


class Anthropic(Provider):
    def import_sources(self) -> tuple[Source, ...]:
        """Claude Code's `.credentials.json` in `$CLAUDE_CONFIG_DIR` (default `~/.claude`);
        on macOS, where Claude Code keeps it in the keychain, the generic password
        "Claude Code-credentials" (`security find-generic-password -s ... -w`). The account's
        email is in `.claude.json` beside the config dir (`oauthAccount.emailAddress`)."""
        config = os.environ.get("CLAUDE_CONFIG_DIR")
        base = Path(config).expanduser() if config else Path.home() / ".claude"
        profile = (Path(config).expanduser() if config else Path.home()) / ".claude.json"
        return (
            Source(
                "Claude Code",
                "`claude` and its /login",
                (base / ".credentials.json",),
                _credentials_json,
                keychain="Claude Code-credentials",
                account=lambda: _claude_email(profile),
            ),
        )

    async def finish_login(self, ctx: LoginContext, tokens: dict[str, Any]) -> Credential:
        cred = self.credential(ctx.bucket, tokens)
        account = tokens.get("account") or {}
        org = tokens.get("organization") or {}
        extra = dict(cred.extra)
        if isinstance(org, dict) and org.get("uuid"):
            extra["organization"] = str(org["uuid"])
        email = account.get("email_address") if isinstance(account, dict) else None
        return cred.model_copy(update={"account": email or cred.account, "extra": extra})

    def api_headers(
        self, cred: Credential, path: str, headers: Mapping[str, str], body: bytes
    ) -> dict[str, str]:
        """The OAuth beta flag merged into whatever betas the client asked for."""
        betas = [b.strip() for b in headers.get("anthropic-beta", "").split(",") if b.strip()]
        if OAUTH_BETA not in betas:
            betas.insert(0, OAUTH_BETA)
        out = {"anthropic-beta": ",".join(betas)}
        if "anthropic-version" not in headers:
            out["anthropic-version"] = "2023-06-01"
        return out

    def rate_limit_hint(self, headers: Mapping[str, str], body: bytes) -> float | None:
        """The unified limiter names each window that rejected and when it resets, in unix
        seconds (docs/providers.md §5.3); the request waits for the latest of them."""
        now = time.time()
        resets = []
        for window in ("", "-5h", "-7d", "-7d_oi"):
            if headers.get(f"anthropic-ratelimit-unified{window}-status") == "rejected":
                reset = headers.get(f"anthropic-ratelimit-unified{window}-reset")
                if reset and is_number(reset):
                    resets.append(float(reset) - now)
        if not resets:
            reset = headers.get("anthropic-ratelimit-unified-reset")
            if reset and is_number(reset) and headers.get("anthropic-ratelimit-unified-status"):
                resets.append(float(reset) - now)
        return latest(super().rate_limit_hint(headers, body), *resets)

    def classify(self, status: int, headers: Mapping[str, str]) -> Outcome:
        return OUTCOMES.get(status) or super().classify(status, headers)

    def usage_from_headers(self, headers: Mapping[str, str]) -> list[Window]:
        """The 5-hour and 7-day windows (and `7d_oi`, and the overage budget when it is in
        play) every subscription answer reports (docs/providers.md §5.3)."""
        now = time.time()
        found = []
        for name, minutes in WINDOWS:
            window = _window(headers, name, minutes, now)
            if window is not None:
                found.append(window)
        status = headers.get(f"{UNIFIED}{OVERAGE}-status")
        if status != "not_enabled":
            used = number(headers.get(f"{UNIFIED}{OVERAGE}-utilization"))
            if used is not None:
                reset = reset_time(headers.get(f"{UNIFIED}{OVERAGE}-reset"), now)
                found.append(Window(OVERAGE, used, reset, None, _word(status)))
        return found

    def conversation(self, call: ApiCall) -> str | None:
        """Claude Code's session id, from `metadata.user_id` (docs/providers.md §5.3)."""
        session = claude_session(call.body)
        return None if session is None else f"claude-session:{session}"


def _credentials_json(data: Any) -> list[Found]:
    """`{"claudeAiOauth": {"accessToken", "refreshToken", "expiresAt" (ms), "scopes",
    "subscriptionType"}}`."""
    root = obj(data, "the file")
    if "claudeAiOauth" not in root:
        raise Unusable("it holds no Claude.ai login (no `claudeAiOauth`)")
    oauth = obj(root["claudeAiOauth"], "`claudeAiOauth`")
    refresh = text(oauth, "refreshToken", "claudeAiOauth.refreshToken")
    scopes = oauth.get("scopes")
    if isinstance(scopes, list) and scopes and "user:inference" not in scopes:
        raise Unusable("its login lacks the user:inference scope")
    plan = optional_text(oauth, "subscriptionType")
    return [
        Found(
            refresh=refresh,
            access=optional_text(oauth, "accessToken"),
            expires_at=millis(oauth.get("expiresAt")),
            note=f"Claude {plan}" if plan else None,
        )
    ]


def _claude_email(profile: Path) -> str | None:
    data = side_file(profile)
    account = data.get("oauthAccount") if isinstance(data, dict) else None
    email = account.get("emailAddress") if isinstance(account, dict) else None
    return email if isinstance(email, str) and email else None


def _window(headers: Mapping[str, str], name: str, minutes: float, now: float) -> Window | None:
    """One window of the unified limiter; None when the answer says nothing usable of it.
    A window marked `rejected` without a utilization is a full one."""
    status = _word(headers.get(f"{UNIFIED}{name}-status"))
    used = number(headers.get(f"{UNIFIED}{name}-utilization"))
    if used is None:
        if status != "rejected":
            return None
        used = 1.0
    reset = reset_time(headers.get(f"{UNIFIED}{name}-reset"), now)
    return Window(name, used, reset, minutes, status)


def _word(value: str | None) -> str | None:
    """A status word as the provider sent it, if it is one (short, no spaces)."""
    return value if value and len(value) <= 32 and value.isascii() and " " not in value else None


PROVIDER = Anthropic(
    name="anthropic",
    order=30,
    title="Claude (Pro/Max)",
    flow="auth_code",
    client_id="9d1c250a-e61b-44d9-88ed-5944d1962f5e",
    scopes=(
        "org:create_api_key",
        "user:profile",
        "user:inference",
        "user:sessions:claude_code",
        "user:mcp_servers",
        "user:file_upload",
    ),
    endpoints={
        "authorize": "https://claude.ai/oauth/authorize",
        "token": "https://platform.claude.com/v1/oauth/token",
        "redirect_uri": "https://platform.claude.com/oauth/code/callback",
        "profile": "https://api.anthropic.com/api/oauth/profile",
        "api": "https://api.anthropic.com",
    },
    authorize_params={"code": "true"},
    token_format="json",
    rotates_refresh=True,  # docs/providers.md §5: both tokens rotate, the old pair dies
    send_state_in_exchange=True,
    callback="paste",
    routes=(Route(hosts=("api.anthropic.com",), dialect="anthropic"),),
    native_hosts=("api.anthropic.com",),
)
