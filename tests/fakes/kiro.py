"""A fake Kiro (docs/providers.md §7.1) over real TLS, answering for all of Kiro's hosts:

- AWS SSO OIDC (`oidc.us-east-1.amazonaws.com`): `/client/register`, `/device_authorization`,
  `/token` (device grant: HTTP 400 `authorization_pending` until approved, `slow_down` when
  asked; refresh grant with the JSON body, which must carry the registration's secret).
- Kiro's auth service (`prod.us-east-1.auth.desktop.kiro.dev`): the social device flow
  (times in ms, pending as a 200 `status`), `/refreshToken` (rotates the refresh token).
- The runtime (`runtime.us-east-1.kiro.dev` `POST /` with `x-amz-target`, for social/IdC
  tokens; `q.us-east-1.amazonaws.com/generateAssistantResponse` for Builder ID tokens; a
  token at the other host is a 403 "invalid bearer"), answering with a real AWS event
  stream built byte for byte here (its own encoder: prelude, headers, both CRC32s): text in
  pieces, a tool use whose input arrives in pieces, a thinking event, metadata. Scripted
  failures: 402, 429, 403 suspended, 400 with a reason, an error inside a 200 stream, a
  corrupted frame.
- `q.us-east-1.amazonaws.com/getUsageLimits`.
"""

from __future__ import annotations

import json
import secrets
import struct
import time
import zlib
from collections.abc import Iterator
from typing import Any

import trustme

from tests.fakes.server import FakeServer, Reply, Request, fail, json_reply, route

OIDC = "oidc.us-east-1.amazonaws.com"
AUTH = "prod.us-east-1.auth.desktop.kiro.dev"
RUNTIME = "runtime.us-east-1.kiro.dev"
Q = "q.us-east-1.amazonaws.com"
HOSTS = (OIDC, AUTH, RUNTIME, Q)
ARN = "arn:aws:codewhisperer:us-east-1:123456789012:profile/FAKEPROFILE"
TOOL_INPUT = ('{"city":', ' "Par', 'is"}')
TEXT = ("Hel", "lo, ", "world")
THINKING = ("Let me ", "think.")


def _header(name: str, value: str) -> bytes:
    raw, data = name.encode(), value.encode()
    return bytes([len(raw)]) + raw + b"\x07" + struct.pack(">H", len(data)) + data


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    head = b"".join(_header(k, v) for k, v in headers.items())
    total = 12 + len(head) + len(payload) + 4
    prelude = struct.pack(">II", total, len(head))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + head + payload
    return body + struct.pack(">I", zlib.crc32(body))


def event(kind: str, data: dict[str, Any]) -> bytes:
    headers = {":event-type": kind, ":content-type": "application/json", ":message-type": "event"}
    return frame(headers, json.dumps(data).encode())


def exception(kind: str, data: dict[str, Any]) -> bytes:
    headers = {
        ":exception-type": kind,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return frame(headers, json.dumps(data).encode())


class FakeKiro(FakeServer):
    def __init__(self, ca: trustme.CA) -> None:
        super().__init__(ca, hostnames=(*HOSTS, "127.0.0.1", "localhost"))
        self.port = int(self.base_url.rsplit(":", 1)[1])
        self.clients: dict[str, tuple[str, float]] = {}  # clientId → (secret, expiry)
        self.devices: dict[str, dict[str, Any]] = {}  # deviceCode → state
        self.access: dict[str, str] = {}  # token → kind ("builder-id" | "social")
        self.refresh: dict[str, tuple[str, str]] = {}  # refresh token → (kind, clientId)
        self.slow_down_once = False
        self.fail_next: list[tuple[int, dict[str, Any]]] = []
        self.stream_error_next = False
        self.corrupt_next = False
        self.usage = {"current": 12, "limit": 50}
        self.reset_at = time.time() + 10 * 86400
        self.usage_fails: dict[str, tuple[int, dict[str, Any]]] = {}  # token → scripted
        self.token_fails: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        self.gap = 0.0  # seconds between frames
        r = route
        self.add_routes(
            [
                r("POST", "/client/register", self._register, ("kiro", "register"), [OIDC]),
                r("POST", "/device_authorization", self._device, ("kiro", "device"), [OIDC]),
                r("POST", "/token", self._token, self._token_label, [OIDC]),
                r(
                    "POST",
                    "/oauth/device/authorization",
                    self._social_device,
                    ("kiro", "social_device"),
                    [AUTH],
                ),
                r("POST", "/oauth/device/poll", self._social_poll, ("kiro", "social_poll"), [AUTH]),
                r("POST", "/refreshToken", self._social_refresh, ("kiro", "refresh"), [AUTH]),
                r("POST", "/", self._runtime, ("kiro", "runtime"), [RUNTIME]),
                r("POST", "/generateAssistantResponse", self._runtime, ("kiro", "runtime"), [Q]),
                r("GET", "/getUsageLimits", self._usage, ("kiro", "usage"), [Q]),
            ]
        )
        from tests.fakes.oauth import FakeOAuth

        FakeOAuth.instances.append(self)  # type: ignore[arg-type]  # leak checks see ours

    def resolve_toml(self) -> str:
        lines = ["[resolve]", *(f'"{h}:443" = "127.0.0.1:{self.port}"' for h in HOSTS)]
        return "\n".join(lines) + "\n"

    def issued_secrets(self) -> set[str]:
        with self._lock:
            out = set(self.access) | set(self.refresh)
            out |= {s for s, _ in self.clients.values()}
            out |= set(self.devices)
            return out

    # -- OIDC ------------------------------------------------------------------------------

    def _register(self, req: Request) -> Reply:
        body = req.body or {}
        if body.get("clientType") != "public" or not body.get("scopes"):
            raise fail(400, {"error": "invalid_request"})
        client, secret = "client-" + secrets.token_hex(6), "cs-" + secrets.token_urlsafe(24)
        expiry = time.time() + 90 * 86400
        self.clients[client] = (secret, expiry)
        return json_reply(
            {"clientId": client, "clientSecret": secret, "clientSecretExpiresAt": int(expiry)}
        )

    def _client_ok(self, body: dict[str, Any]) -> str:
        client = str(body.get("clientId"))
        found = self.clients.get(client)
        if found is None or found[0] != body.get("clientSecret") or found[1] < time.time():
            raise fail(400, {"error": "invalid_client", "error_description": "bad client"})
        return client

    def _device(self, req: Request) -> Reply:
        body = req.body or {}
        self._client_ok(body)
        code = "dc-" + secrets.token_urlsafe(18)
        user = secrets.token_hex(2).upper() + "-" + secrets.token_hex(2).upper()
        self.devices[code] = {"user": user, "approved": False, "kind": "builder-id"}
        return json_reply(
            {
                "deviceCode": code,
                "userCode": user,
                "verificationUri": "https://view.awsapps.com/start/#/device",
                "verificationUriComplete": f"https://view.awsapps.com/start/#/device?user_code={user}",
                "expiresIn": 600,
                "interval": 0.05,
            }
        )

    def _token_label(self, req: Request) -> tuple[str, str]:
        grant = (req.body or {}).get("grantType")
        return ("kiro", "refresh" if grant == "refresh_token" else "token")

    def _token(self, req: Request) -> Reply:
        body = req.body or {}
        if req.body_kind != "json":
            raise fail(400, {"error": "invalid_request", "error_description": "JSON only"})
        client = self._client_ok(body)
        grant = body.get("grantType")
        if grant == "refresh_token":
            found = self.refresh.get(str(body.get("refreshToken")))
            if found is None or found[1] != client:
                raise fail(400, {"error": "invalid_grant", "error_description": "bad refresh"})
            return json_reply(self._mint(found[0], client, rotate=str(body["refreshToken"])))
        if grant != "urn:ietf:params:oauth:grant-type:device_code":
            raise fail(400, {"error": "unsupported_grant_type"})
        device = self.devices.get(str(body.get("deviceCode")))
        if device is None:
            raise fail(400, {"error": "expired_token"})
        if self.slow_down_once:
            self.slow_down_once = False
            raise fail(400, {"error": "slow_down", "error_description": "slow down"})
        if not device["approved"]:
            raise fail(400, {"error": "authorization_pending", "error_description": "pending"})
        del self.devices[str(body["deviceCode"])]
        return json_reply(self._mint("builder-id", client))

    def _mint(self, kind: str, client: str = "", rotate: str | None = None) -> dict[str, Any]:
        access = "aoa" + secrets.token_urlsafe(30)
        refresh = "aor" + secrets.token_urlsafe(30)
        self.access[access] = kind
        self.refresh[refresh] = (kind, client)
        if rotate is not None:
            self.refresh.pop(rotate, None)
        out: dict[str, Any] = {"accessToken": access, "refreshToken": refresh, "expiresIn": 3600}
        if kind == "social":
            out["profileArn"] = ARN
        return out

    def approve(self, user_code: str) -> None:
        with self._lock:
            for device in self.devices.values():
                if device["user"] == user_code:
                    device["approved"] = True
                    return
        raise KeyError(user_code)

    def expire_access(self) -> None:
        with self._lock:
            self.access.clear()

    # -- social ----------------------------------------------------------------------------

    def _social_device(self, req: Request) -> Reply:
        body = req.body or {}
        if body.get("clientId") != "kiro-cli" or body.get("loginProvider") not in (
            "Google",
            "Github",
        ):
            raise fail(400, {"message": "bad request"})
        code = "sdc-" + secrets.token_urlsafe(18)
        user = secrets.token_hex(3).upper()
        self.devices[code] = {"user": user, "approved": False, "kind": "social"}
        return json_reply(
            {
                "deviceCode": code,
                "userCode": user,
                "verificationUri": "https://app.kiro.dev/device",
                "expiresIn": 600_000,
                "interval": 50,  # milliseconds
            }
        )

    def _social_poll(self, req: Request) -> Reply:
        body = req.body or {}
        device = self.devices.get(str(body.get("deviceCode")))
        if device is None:
            raise fail(400, {"message": "expired"})
        if not device["approved"]:
            return json_reply({"status": "authorization_pending"})
        del self.devices[str(body["deviceCode"])]
        return json_reply({**self._mint("social"), "identityProvider": "Google"})

    def _social_refresh(self, req: Request) -> Reply:
        token = str((req.body or {}).get("refreshToken"))
        found = self.refresh.get(token)
        if found is None or found[0] != "social":
            raise fail(401, {"message": "Invalid refresh token"})
        return json_reply(self._mint("social", rotate=token))

    # -- runtime ---------------------------------------------------------------------------

    def _bearer(self, req: Request) -> tuple[str, str]:
        token = req.credential("bearer") or ""
        kind = self.access.get(token)
        if kind is None:
            raise fail(403, {"message": "The bearer token included in the request is invalid."})
        return token, kind

    def _runtime(self, req: Request) -> Reply:
        token, kind = self._bearer(req)
        on_q = req.path == "/generateAssistantResponse"
        if on_q != (kind == "builder-id"):
            raise fail(403, {"message": "invalid bearer token for this host"})
        if not on_q and req.headers.get("x-amz-target") != (
            "KiroRuntimeService.GenerateAssistantResponse"
        ):
            raise fail(400, {"message": "missing target", "reason": "UNKNOWN_OPERATION"})
        if not on_q and not req.headers.get("content-type", "").startswith(
            "application/x-amz-json-1.0"
        ):
            raise fail(400, {"message": "content type", "reason": "INVALID_INPUT"})
        body = req.body or {}
        if ("profileArn" in body) != (kind == "social"):
            raise fail(403, {"message": "profileArn mismatch"})
        scripted = self.token_fails.get(token)
        if scripted:
            status, payload = scripted.pop(0)
            raise fail(status, payload)
        if self.fail_next:
            status, payload = self.fail_next.pop(0)
            raise fail(status, payload)
        state = body.get("conversationState") or {}
        current = (state.get("currentMessage") or {}).get("userInputMessage") or {}
        self._check(state, current)
        context = current.get("userInputMessageContext") or {}
        frames = list(self._answer(current, context))
        if self.stream_error_next:
            self.stream_error_next = False
            frames = [
                *frames[:2],
                exception(
                    "com.amazon.aws.codewhisperer#ValidationException",
                    {"message": "Improperly formed request.", "reason": "INVALID_INPUT"},
                ),
            ]
        if self.corrupt_next:
            self.corrupt_next = False
            bad = bytearray(frames[2])
            bad[-6] ^= 0xFF
            frames = [*frames[:2], bytes(bad), *frames[3:]]
        return Reply(
            200,
            b"",
            "application/vnd.amazon.eventstream",
            (("x-amzn-requestid", "req-1"),),
            stream=self._paced(frames),
        )

    def _paced(self, frames: list[bytes]) -> Iterator[bytes]:
        for i, data in enumerate(frames):
            if self.gap:
                time.sleep(self.gap)
            if i == 1 and len(data) > 20:  # one frame split across chunks, mid-prelude
                yield data[:7]
                yield data[7:]
            else:
                yield data

    def _check(self, state: dict[str, Any], current: dict[str, Any]) -> None:
        """Kiro's rules the facts name: history alternates from a user turn, every user
        turn names the model, toolResults need tools, tool names ≤ 64."""
        if state.get("chatTriggerType") != "MANUAL" or not current.get("modelId"):
            raise fail(400, {"message": "Improperly formed request.", "reason": "INVALID_INPUT"})
        if current.get("modelId") == "no-such-model":
            raise fail(400, {"message": "Invalid model.", "reason": "INVALID_MODEL_ID"})
        roles = [next(iter(h)) for h in state.get("history") or []]
        expected = ["userInputMessage", "assistantResponseMessage"] * len(roles)
        if roles != expected[: len(roles)] or (roles and roles[-1] != "assistantResponseMessage"):
            raise fail(400, {"message": "history does not alternate", "reason": "INVALID_INPUT"})
        context = current.get("userInputMessageContext") or {}
        if context.get("toolResults") and not context.get("tools"):
            raise fail(400, {"message": "toolResults without tools", "reason": "INVALID_INPUT"})
        for tool in context.get("tools") or []:
            if len(tool["toolSpecification"]["name"]) > 64:
                raise fail(400, {"message": "tool name too long", "reason": "INVALID_INPUT"})

    def _answer(self, current: dict[str, Any], context: dict[str, Any]) -> Iterator[bytes]:
        content = str(current.get("content") or "")
        if "<thinking_mode>enabled</thinking_mode>" in content:
            for piece in THINKING:
                yield event("reasoningContentEvent", {"text": piece})
            yield event("reasoningContentEvent", {"signature": "sig-1"})
        if context.get("tools") and not context.get("toolResults"):
            name = context["tools"][0]["toolSpecification"]["name"]
            yield event("assistantResponseEvent", {"content": "Let me check."})
            yield event("toolUseEvent", {"name": name, "toolUseId": "tooluse_1"})
            for piece in TOOL_INPUT:
                yield event(
                    "toolUseEvent", {"name": name, "toolUseId": "tooluse_1", "input": piece}
                )
            yield event("toolUseEvent", {"name": name, "toolUseId": "tooluse_1", "stop": True})
            stop = "TOOL_USE"
        elif context.get("toolResults"):
            yield event("assistantResponseEvent", {"content": "It is sunny."})
            stop = "END_TURN"
        else:
            for piece in TEXT:
                yield event("assistantResponseEvent", {"content": piece})
            stop = "END_TURN"
        yield event("meteringEvent", {"unit": "credit", "unitPlural": "credits", "usage": 0.1})
        yield event("contextUsageEvent", {"contextUsagePercentage": 1.5})
        yield event(
            "messageMetadataEvent",
            {
                "tokenUsage": {
                    "uncachedInputTokens": 11,
                    "outputTokens": 7,
                    "cacheReadInputTokens": 0,
                    "totalTokens": 18,
                },
                "stopReason": stop,
            },
        )

    def _usage(self, req: Request) -> Reply:
        _token, _ = self._bearer(req)
        if req.params.get("origin") != "AI_EDITOR":
            raise fail(400, {"message": "origin"})
        return json_reply(
            {
                "nextDateReset": self.reset_at,
                "subscriptionInfo": {"subscriptionTitle": "KIRO FREE", "type": "Q_DEVELOPER_FREE"},
                "usageBreakdownList": [
                    {
                        "resourceType": "AGENTIC_REQUEST",
                        "currentUsage": self.usage["current"],
                        "usageLimit": self.usage["limit"],
                        "currentUsageWithPrecision": float(self.usage["current"]),
                        "usageLimitWithPrecision": float(self.usage["limit"]),
                    }
                ],
            }
        )
