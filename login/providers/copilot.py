"""GitHub Copilot: GitHub device flow, then the GitHub token is exchanged for a
short-lived Copilot token (providers.md §1)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

import httpx
from pydantic import SecretStr

from ..credential import Credential
from ..errors import LoginError, NeedsLogin, RefreshFailed
from ..flows.http import body_of, send
from ..redact import redact
from .base import LoginContext, Provider, Route, seconds, token_text

# The VS Code Copilot Chat profile (ericc copilot-api, litellm).
EDITOR_HEADERS = {
    "Editor-Version": "vscode/1.107.0",
    "Editor-Plugin-Version": "copilot-chat/0.35.0",
    "User-Agent": "GitHubCopilotChat/0.35.0",
}


class Copilot(Provider):
    async def finish_login(self, ctx: LoginContext, tokens: dict[str, Any]) -> Credential:
        github = SecretStr(str(tokens["access_token"]))
        login = await self._github_login(ctx.http, ctx.endpoints, github.get_secret_value())
        seed = Credential(
            provider=self.name,
            bucket=ctx.bucket,
            access_token=SecretStr("-"),
            refresh_token=github,
            expires_at=0,
            account=login,
        )
        try:
            return await self.refresh(ctx.http, ctx.endpoints, seed)
        except NeedsLogin:
            raise LoginError(
                "GitHub accepted the login but refused a Copilot token: "
                "does this account have a Copilot subscription?"
            ) from None
        except RefreshFailed as exc:
            raise LoginError(str(exc)) from None

    async def _github_login(
        self, http: httpx.AsyncClient, endpoints: Mapping[str, str], token: str
    ) -> str | None:
        req = http.build_request(
            "GET", endpoints["user"], headers={"Authorization": f"token {token}", **_JSON}
        )
        try:
            resp = await http.send(req)
        except httpx.HTTPError:
            return None  # the account name is cosmetic
        login = body_of(resp).get("login") if resp.status_code == 200 else None
        return str(login) if login else None

    async def refresh(
        self, http: httpx.AsyncClient, endpoints: Mapping[str, str], cred: Credential
    ) -> Credential:
        """Re-exchange the GitHub token; nothing rotates."""
        github = cred.refresh
        if not github:
            raise NeedsLogin(self.name, cred.bucket, "no GitHub token stored")
        req = http.build_request(
            "GET",
            endpoints["copilot_token"],
            headers={"Authorization": f"token {github}", **_JSON, **EDITOR_HEADERS},
        )
        try:
            resp = await send(http, req, "getting a Copilot token")
        except LoginError as exc:
            raise RefreshFailed(f"{self.name}/{cred.bucket}: {exc}") from None
        data = body_of(resp)
        if resp.status_code in (401, 403, 404):
            # GitHub's message may quote the token it was sent.
            why = redact(str(data.get("message") or ""), cred.secrets()) or (
                f"HTTP {resp.status_code}"
            )
            raise NeedsLogin(self.name, cred.bucket, f"GitHub refused the Copilot token ({why})")
        token = token_text(data.get("token"))
        if resp.status_code != 200 or not token:
            raise RefreshFailed(f"{self.name}/{cred.bucket}: Copilot token HTTP {resp.status_code}")
        endpoints_said = data.get("endpoints")
        api = endpoints_said.get("api") if isinstance(endpoints_said, dict) else None
        extra = {**cred.extra, "api": str(api or endpoints["api"]).rstrip("/")}
        if data.get("sku"):
            extra["sku"] = str(data["sku"])
        now = time.time()
        # `expires_at` is absolute (unix seconds): clamped like any lifetime.
        expires_at = seconds(data.get("expires_at"))
        return Credential(
            provider=self.name,
            bucket=cred.bucket,
            access_token=SecretStr(token),
            refresh_token=cred.refresh_token,
            expires_at=self.expiry(None if expires_at is None else expires_at - now, now),
            account=cred.account,
            extra=extra,
            updated_at=now,
        )

    def api_base(self, cred: Credential, endpoints: Mapping[str, str]) -> str:
        """The API host the Copilot token names (individual/business/enterprise)."""
        return (cred.extra.get("api") or endpoints["api"]).rstrip("/")

    def api_headers(
        self, cred: Credential, path: str, headers: Mapping[str, str], body: bytes
    ) -> dict[str, str]:
        messages = path.endswith("/v1/messages")
        request = _json_object(body)
        out = {
            **EDITOR_HEADERS,
            "Copilot-Integration-Id": "vscode-chat",
            "Openai-Intent": "messages-proxy" if messages else "conversation-panel",
            "X-Initiator": initiator(request),
            "X-Request-Id": str(uuid.uuid4()),
        }
        if messages and "anthropic-version" not in headers:
            out["anthropic-version"] = "2023-06-01"
        if _has_image(request):
            out["Copilot-Vision-Request"] = "true"
        return out


def _json_object(body: bytes) -> dict[str, Any]:
    if not body or body[:1] not in (b"{", b" ", b"\n"):
        return {}
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def initiator(request: dict[str, Any]) -> str:
    """`user` when the request answers a person's new message, `agent` when it continues
    the model's own work (a tool result, an assistant turn). Copilot bills premium requests
    only for `user`, so this must be right both ways."""
    items = request.get("messages") or request.get("input")
    if not isinstance(items, list) or not items:
        return "user"
    last = items[-1]
    if not isinstance(last, dict):
        return "user"
    if last.get("role", "user") != "user" or last.get("type") in _AGENT_ITEMS:
        return "agent"
    content = last.get("content")
    if isinstance(content, list) and any(
        isinstance(part, dict) and part.get("type") == "tool_result" for part in content
    ):
        return "agent"
    return "user"


_AGENT_ITEMS = {"function_call_output", "function_call", "reasoning", "custom_tool_call_output"}


def _has_image(request: dict[str, Any]) -> bool:
    for item in request.get("messages") or request.get("input") or []:
        content = item.get("content") if isinstance(item, dict) else None
        if isinstance(content, list) and any(
            isinstance(p, dict) and p.get("type") in ("image_url", "image", "input_image")
            for p in content
        ):
            return True
    return False


_JSON = {"Accept": "application/json"}

_HOSTS = (
    "api.githubcopilot.com",
    "api.individual.githubcopilot.com",
    "api.business.githubcopilot.com",
    "api.enterprise.githubcopilot.com",
)

PROVIDER = Copilot(
    name="copilot",
    title="GitHub Copilot",
    flow="device",
    client_id="Iv1.b507a08c87ecfe98",
    scopes=("read:user",),
    endpoints={
        "device_code": "https://github.com/login/device/code",
        "token": "https://github.com/login/oauth/access_token",
        "copilot_token": "https://api.github.com/copilot_internal/v2/token",
        "api": "https://api.githubcopilot.com",
        "usage": "https://api.github.com/copilot_internal/user",
        "user": "https://api.github.com/user",
    },
    # ~30 min tokens; re-mint at ~25 min like the editors do.
    refresh_skew=300.0,
    # An answer without a usable `expires_at`: assume 25 min (the editors' fallback TTL).
    default_lifetime=25 * 60.0,
    routes=(
        Route(hosts=_HOSTS, prefixes=("/v1/messages",), dialect="anthropic"),
        Route(hosts=_HOSTS, dialect="openai"),
        Route(
            hosts=("api.openai.com",),
            prefixes=("/v1/chat/completions", "/v1/responses", "/v1/models", "/v1/embeddings"),
            strip="/v1",
            dialect="openai",
        ),
        Route(hosts=("api.anthropic.com",), prefixes=("/v1/messages",), dialect="anthropic"),
    ),
    native_hosts=_HOSTS,
    # The Copilot token names its API host (api.individual.githubcopilot.com, ...).
    api_hosts=(".githubcopilot.com",),
)
