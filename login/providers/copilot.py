"""GitHub Copilot: GitHub device flow, then the GitHub token is exchanged for a
short-lived Copilot token (providers.md §1)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import httpx
from pydantic import SecretStr

from ..credential import Credential
from ..errors import LoginError, NeedsLogin, RefreshFailed
from ..flows.http import body_of, send
from .base import LoginContext, Provider

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
            why = str(data.get("message") or f"HTTP {resp.status_code}")
            raise NeedsLogin(self.name, cred.bucket, f"GitHub refused the Copilot token ({why})")
        if resp.status_code != 200 or not data.get("token"):
            raise RefreshFailed(f"{self.name}/{cred.bucket}: Copilot token HTTP {resp.status_code}")
        api = (data.get("endpoints") or {}).get("api") or endpoints["api"]
        extra = {**cred.extra, "api": str(api).rstrip("/")}
        if data.get("sku"):
            extra["sku"] = str(data["sku"])
        expires_at = data.get("expires_at")
        return Credential(
            provider=self.name,
            bucket=cred.bucket,
            access_token=SecretStr(str(data["token"])),
            refresh_token=cred.refresh_token,
            expires_at=float(expires_at) if expires_at else time.time() + 25 * 60,
            account=cred.account,
            extra=extra,
            updated_at=time.time(),
        )

    def api_headers(self, cred: Credential) -> dict[str, str]:
        return {**EDITOR_HEADERS, "Copilot-Integration-Id": "vscode-chat"}


_JSON = {"Accept": "application/json"}

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
    api_hosts=(
        "api.githubcopilot.com",
        "api.individual.githubcopilot.com",
        "api.business.githubcopilot.com",
        "api.enterprise.githubcopilot.com",
    ),
)
