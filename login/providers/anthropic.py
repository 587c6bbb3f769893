"""Anthropic Claude Pro/Max: auth code + PKCE with the Claude Code client; the user
pastes the `code#state` the callback page shows (docs/providers.md §5).

Both tokens rotate on refresh and the old pair dies at once, so refreshes must be
serialised across processes (the token service does that for every provider).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ..credential import Credential
from .base import LoginContext, Provider, Route
from .ratelimit import is_number, latest

OAUTH_BETA = "oauth-2025-04-20"


class Anthropic(Provider):
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
    send_state_in_exchange=True,
    callback="paste",
    routes=(Route(hosts=("api.anthropic.com",), dialect="anthropic"),),
    native_hosts=("api.anthropic.com",),
)
