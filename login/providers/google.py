"""What Gemini Code Assist and Antigravity share: Google's loopback OAuth and the Code Assist
project discovery of gemini-cli's `setup.ts` (docs/providers.md §3.4, §4.1)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from collections.abc import Mapping
from typing import Any

import httpx
from pydantic import Field

from ..credential import Credential
from ..errors import ClientError, LoginError
from ..flows.http import body_of, error_text, send
from ..redact import redact
from .base import ApiCall, LocalReply, LoginContext, Provider, Route
from .ratelimit import json_object, latest
from .sessions import body_id
from .shapes import BodyShape
from .streams import MapSSE, Reshaper, SSEToJSONArray, WholeJSON
from .usage import Outcome

# A protobuf Duration as JSON: "37s", "0.5s".
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")
# What an answer means for the account (docs/providers.md §3.5). A 429 RESOURCE_EXHAUSTED is
# the quota or a rate limit; 401 UNAUTHENTICATED an expired token. A 403 may be
# VALIDATION_REQUIRED (the account must be verified in a browser) or PERMISSION_DENIED about
# the request or project: only the body tells them apart, so a 403 reaches the client.
OUTCOMES: dict[int, Outcome] = {
    429: "rotate",
    401: "refresh",
}
# Where clients name their session: gemini-cli's `session_id` in the request (§3.3),
# Antigravity's `sessionId` (§4.2).
SESSION_FIELDS = ("session_id", "sessionId")


class GoogleProvider(Provider):
    # loadCodeAssist/onboardUser metadata that identifies the client.
    ide_metadata: dict[str, str]
    # Project used when Code Assist names none (Antigravity's public fallback).
    fallback_project: str | None = None
    # Fields the envelope carries besides model/project/request (docs/providers.md §3.3, §4.2).
    envelope: dict[str, str] = Field(default_factory=dict)
    # Request fields the backend refuses.
    drop_fields: tuple[str, ...] = ()
    # What `GET /v1beta/models` lists: the models the account can reach here.
    models: tuple[str, ...] = ()

    async def finish_login(self, ctx: LoginContext, tokens: dict[str, Any]) -> Credential:
        cred = self.credential(ctx.bucket, tokens)
        email = await self._email(ctx.http, ctx.endpoints, cred.token)
        project, tier = await self.discover_project(ctx, cred.token)
        extra = {**cred.extra, "project": project}
        if tier:
            extra["tier"] = tier
        return cred.model_copy(update={"account": email, "extra": extra})

    async def finish_import(self, ctx: LoginContext, cred: Credential) -> Credential:
        """The account and Code Assist project, as a login finds them: another tool's file
        does not hold the project."""
        email = await self._email(ctx.http, ctx.endpoints, cred.token)
        project, tier = await self.discover_project(ctx, cred.token)
        extra = {**cred.extra, "project": project}
        if tier:
            extra["tier"] = tier
        return cred.model_copy(update={"account": email or cred.account, "extra": extra})

    async def _email(
        self, http: httpx.AsyncClient, endpoints: Mapping[str, str], token: str
    ) -> str | None:
        req = http.build_request("GET", endpoints["userinfo"], headers=_bearer(token))
        resp = await send(http, req, "reading the Google account")
        email = body_of(resp).get("email") if resp.status_code == 200 else None
        return str(email) if email else None

    async def discover_project(self, ctx: LoginContext, token: str) -> tuple[str, str | None]:
        """gemini-cli's setup: loadCodeAssist, else onboardUser on the default tier and poll
        the long-running operation for the project it made."""
        env_project = os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get(
            "GOOGLE_CLOUD_PROJECT_ID"
        )
        metadata: dict[str, str] = dict(self.ide_metadata)
        if env_project:
            metadata["duetProject"] = env_project
        body: dict[str, Any] = {"metadata": metadata}
        if env_project:
            body["cloudaicompanionProject"] = env_project
        loaded = await self._call(ctx, token, "loadCodeAssist", body)
        current = loaded.get("currentTier")
        if current:
            project = _project_id(loaded.get("cloudaicompanionProject")) or env_project
            if not project:
                project = self._no_project(loaded)
            return project, str(current.get("id") or "") or None
        tiers = [t for t in loaded.get("allowedTiers") or [] if isinstance(t, dict)]
        if not tiers:
            raise LoginError(redact(_ineligible(loaded, self.title), (token,)))
        tier = next((t for t in tiers if t.get("isDefault")), tiers[0])
        tier_id = str(tier.get("id") or "legacy-tier")
        onboard: dict[str, Any] = {"tierId": tier_id, "metadata": metadata}
        # Setting a project on the free tier causes Precondition Failed (gemini-cli setup.ts).
        if tier_id != "free-tier" and env_project:
            onboard["cloudaicompanionProject"] = env_project
        op = await self._call(ctx, token, "onboardUser", onboard)
        delay = 1.0
        while not op.get("done"):
            if not op.get("name"):
                raise LoginError(f"{self.title}: onboarding returned no operation to wait for")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            op = await self._call(ctx, token, str(op["name"]), None)
        project = _project_id((op.get("response") or {}).get("cloudaicompanionProject"))
        return project or env_project or self._no_project(loaded), tier_id

    def _no_project(self, loaded: dict[str, Any]) -> str:
        if self.fallback_project:
            return self.fallback_project
        raise LoginError(
            f"{self.title}: this account has no Code Assist project; set GOOGLE_CLOUD_PROJECT to "
            "your Google Cloud project id and log in again"
        )

    async def _call(
        self, ctx: LoginContext, token: str, method: str, body: dict[str, Any] | None
    ) -> dict[str, Any]:
        base = ctx.endpoints["code_assist"].rstrip("/")
        if body is None:  # a long-running operation: GET v1internal/<name>
            req = ctx.http.build_request(
                "GET", f"{base}/v1internal/{method}", headers=_bearer(token)
            )
        else:
            req = ctx.http.build_request(
                "POST", f"{base}/v1internal:{method}", json=body, headers=_bearer(token)
            )
        resp = await send(ctx.http, req, f"setting up {self.title}")
        data = body_of(resp)
        if resp.status_code != 200:
            why = redact(error_text(data), (token,)) or resp.status_code
            raise LoginError(f"{self.title} {method} failed: {why}")
        return data

    # -- the public Gemini API in front of Code Assist -------------------------------------

    def api_base(self, cred: Credential, endpoints: Mapping[str, str]) -> str:
        return endpoints["code_assist"].rstrip("/")

    def may_deliver_to(self, host: str, endpoints: Mapping[str, str]) -> bool:
        return host == httpx.URL(endpoints["code_assist"]).host

    def known_models(self) -> tuple[str, ...]:
        # Code Assist has no listing keyswap can rely on: what keyswap itself serves.
        return self.models

    def model_of(self, call: ApiCall) -> str | None:
        found = _MODEL_PATH.fullmatch(call.path)
        return found["model"] if found else None

    def prepare(self, call: ApiCall, cred: Credential) -> ApiCall | LocalReply:
        """`/v1beta/models/{model}:{method}` → `v1internal:{method}` with the envelope."""
        found = _MODEL_PATH.fullmatch(call.path)
        if found is not None and found["method"] is None:
            return self._models_reply(found["model"] or "")
        if found is None or found["method"] not in _METHODS or call.method != "POST":
            raise ClientError(
                404, f"{call.method} {call.client_path} is not served for {self.name}"
            )
        model, method = found["model"], found["method"]
        project = cred.extra.get("project")
        if not project:
            again = f"keyswap login {self.name}"
            raise ClientError(401, f"this login has no Code Assist project; run `{again}`")
        body = call.json()
        if method == "countTokens":
            count = _CountTokens.of(body)
            # The contents may come wrapped in a whole generateContent request, or bare.
            inner = count.generate.contents if count.generate else None
            contents = inner or count.contents or []
            wrapped: dict[str, Any] = {
                "request": {"model": f"models/{model}", "contents": contents}
            }
        else:
            request = {k: v for k, v in body.items() if k not in self.drop_fields}
            wrapped = {
                "model": model,
                "project": project,
                **{k: v.replace("{uuid}", str(uuid.uuid4())) for k, v in self.envelope.items()},
                "request": request,
            }
        query = [("alt", "sse")] if method == "streamGenerateContent" else []
        return call.with_json(wrapped, path=f"/v1internal:{method}", query=query)

    def rate_limit_hint(self, headers: Mapping[str, str], body: bytes) -> float | None:
        """`RetryInfo.retryDelay` or `quotaResetDelay` among the error's details, e.g. "37s"
        (docs/providers.md §3.5)."""
        err = json_object(body).get("error")
        details = err.get("details") if isinstance(err, dict) else None
        found: list[float] = []
        for item in details if isinstance(details, list) else []:
            if not isinstance(item, dict):
                continue
            metadata = item.get("metadata")
            reset = metadata.get("quotaResetDelay") if isinstance(metadata, dict) else None
            for value in (item.get("retryDelay"), reset):
                if isinstance(value, str) and (m := _DURATION.match(value)):
                    found.append(float(m[1]))
        return latest(super().rate_limit_hint(headers, body), *found)

    def classify(self, status: int, headers: Mapping[str, str]) -> Outcome:
        return OUTCOMES.get(status) or super().classify(status, headers)

    def conversation(self, call: ApiCall) -> str | None:
        """The session id the client's body names (`session_id`, `sessionId`), if any."""
        for name in SESSION_FIELDS:
            session = body_id(call.body, name)
            if session is not None:
                return f"session:{session}"
        return None

    def reshape(self, call: ApiCall, status: int) -> Reshaper | None:
        if status != 200:
            return None  # Google RPC errors are already in the client's shape
        method = call.path.rpartition(":")[2]
        if method == "generateContent":
            return WholeJSON(_unwrap)
        if method == "streamGenerateContent":
            wants_sse = ("alt", "sse") in call.client_query
            return MapSSE(_unwrap) if wants_sse else SSEToJSONArray(_unwrap)
        return None

    def _models_reply(self, name: str) -> LocalReply:
        def entry(model: str) -> dict[str, Any]:
            return {
                "name": f"models/{model}",
                "displayName": model,
                "supportedGenerationMethods": list(_METHODS),
            }

        if not name:
            body: dict[str, Any] = {"models": [entry(m) for m in self.models]}
        elif name in self.models:
            body = entry(name)
        else:
            msg = f"models/{name} is not available on {self.title}"
            body = {"error": {"code": 404, "message": msg, "status": "NOT_FOUND"}}
            return LocalReply(404, json.dumps(body).encode())
        return LocalReply(200, json.dumps(body).encode())


class _Contents(BodyShape):
    contents: list[dict[str, Any]] | None = None


class _CountTokens(_Contents):
    """A countTokens body: `contents`, or a whole `generateContentRequest` holding them."""

    generate: _Contents | None = Field(None, alias="generateContentRequest")


_METHODS = ("generateContent", "streamGenerateContent", "countTokens")
# The public API's model paths: the list, one model, or a method on one. The model name goes
# into the Code Assist envelope, so it is held to the names Google uses.
_MODEL_PATH = re.compile(
    r"/v1(?:beta)?/models(?:/(?P<model>[A-Za-z0-9][A-Za-z0-9._-]*)(?::(?P<method>\w+))?)?/?"
)


def _unwrap(obj: dict[str, Any]) -> dict[str, Any]:
    """Code Assist wraps the public API's response in `{"response": ..., "traceId": ...}`."""
    inner = obj.get("response")
    return inner if isinstance(inner, dict) else obj


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": "application/json"}


def _project_id(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("id")
    return str(value) if value else None


def _ineligible(loaded: dict[str, Any], title: str) -> str:
    reasons = [
        str(t.get("reasonMessage") or t.get("reasonCode"))
        for t in loaded.get("ineligibleTiers") or []
        if isinstance(t, dict)
    ]
    why = "; ".join(r for r in reasons if r and r != "None") or "no eligible Code Assist tier"
    return f"{title}: this Google account cannot use Code Assist: {why}"


GOOGLE_AUTH = {
    "authorize": "https://accounts.google.com/o/oauth2/v2/auth",
    "token": "https://oauth2.googleapis.com/token",
    "userinfo": "https://www.googleapis.com/oauth2/v1/userinfo?alt=json",
}
GOOGLE_SCOPES = (
    "https://www.googleapis.com/auth/cloud-platform",
    "https://www.googleapis.com/auth/userinfo.email",
    "https://www.googleapis.com/auth/userinfo.profile",
)
GOOGLE_AUTHORIZE_PARAMS = {"access_type": "offline", "prompt": "consent"}
GEMINI_API_ROUTES = (
    Route(
        hosts=("generativelanguage.googleapis.com",),
        prefixes=("/v1/models", "/v1beta/models"),
        dialect="google",
    ),
)
