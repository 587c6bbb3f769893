"""A made-up subscription that keyswap does not know, as a config block would describe it: an
OIDC issuer (discovery, RFC 8628 device flow, auth code + PKCE, rotating refresh tokens) and
an OpenAI-compatible API that takes its access tokens, over real TLS.

    with FakeIssuer() as issuer, FakeChat(issuer, ca) as chat:
        issuer.base_url           # the `issuer` of the config block (plain http, loopback)
        chat.resolve_toml()       # [resolve] "api.grok.test:443" = "127.0.0.1:PORT"
        issuer.approve(user_code) # the user approves the device login
        chat.seen                 # (token, static header) of every chat request

The issuer follows OpenID Connect Discovery 1.0 (§3, §4: the document names its own issuer),
RFC 8628 (`authorization_pending`, `expired_token`) and RFC 7636 (S256 only).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .oauth import with_query
from .server import FakeServer, Json, Reply, Request, fail, json_reply, redirect, route

if TYPE_CHECKING:
    import trustme

API_HOST = "api.grok.test"
CLIENT_ID = "grok-cli-public"
DISCOVERY = "/.well-known/openid-configuration"
HEADER = ("X-Grok-Client", "keyswap-test")  # the static header the config adds


@dataclass
class _Device:
    device_code: str
    user_code: str
    expires_at: float
    approved: bool = False


@dataclass
class _Code:
    challenge: str
    redirect_uri: str


@dataclass
class _Grants:
    access: set[str] = field(default_factory=set)
    refresh: set[str] = field(default_factory=set)
    spent: set[str] = field(default_factory=set)


class FakeIssuer(FakeServer):
    def __init__(self) -> None:
        super().__init__()
        self.device_interval = 0.05
        self.device_lifetime = 600.0
        self._devices: dict[str, _Device] = {}
        self._codes: dict[str, _Code] = {}
        self.grants = _Grants()
        self.add_routes(
            [
                route("GET", DISCOVERY, self._discovery, ("oidc", "discovery")),
                route("POST", "/oauth2/device/code", self._device_code, ("oidc", "device")),
                route("GET", "/oauth2/authorize", self._authorize, ("oidc", "authorize")),
                route("POST", "/oauth2/token", self._token, ("oidc", "token")),
            ]
        )

    # -- what a test does -------------------------------------------------------------------

    def approve(self, user_code: str) -> None:
        with self._lock:
            next(d for d in self._devices.values() if d.user_code == user_code).approved = True

    def valid_access_tokens(self) -> set[str]:
        with self._lock:
            return set(self.grants.access)

    def issued_secrets(self) -> set[str]:
        with self._lock:
            return self.grants.access | self.grants.refresh | self.grants.spent

    # -- endpoints --------------------------------------------------------------------------

    def _discovery(self, _req: Request) -> Reply:
        base = self.base_url
        return json_reply(
            {
                "issuer": base,
                "authorization_endpoint": f"{base}/oauth2/authorize",
                "token_endpoint": f"{base}/oauth2/token",
                "device_authorization_endpoint": f"{base}/oauth2/device/code",
                "response_types_supported": ["code"],
                "grant_types_supported": [
                    "authorization_code",
                    "refresh_token",
                    "urn:ietf:params:oauth:grant-type:device_code",
                ],
                "code_challenge_methods_supported": ["S256"],
            }
        )

    def _device_code(self, req: Request) -> Reply:
        self._client(req)
        device = _Device(
            secrets.token_urlsafe(24),
            f"{secrets.randbelow(10**4):04d}-{secrets.randbelow(10**4):04d}",
            time.time() + self.device_lifetime,
        )
        self._devices[device.device_code] = device
        return json_reply(
            {
                "device_code": device.device_code,
                "user_code": device.user_code,
                "verification_uri": f"{self.base_url}/device",
                "expires_in": int(self.device_lifetime),
                "interval": self.device_interval,
            }
        )

    def _authorize(self, req: Request) -> Reply:
        p = req.params
        if p.get("client_id") != CLIENT_ID or p.get("code_challenge_method") != "S256":
            raise fail(400, {"error": "invalid_request"})
        code = secrets.token_urlsafe(16)
        self._codes[code] = _Code(p["code_challenge"], p["redirect_uri"])
        return redirect(with_query(p["redirect_uri"], code=code, state=p.get("state", "")))

    def _token(self, req: Request) -> Reply:
        self._client(req)
        grant = req.field("grant_type")
        if grant == "urn:ietf:params:oauth:grant-type:device_code":
            device = self._devices.get(req.field("device_code") or "")
            if device is None:
                raise fail(400, {"error": "invalid_grant"})
            if time.time() > device.expires_at:
                raise fail(400, {"error": "expired_token"})
            if not device.approved:
                raise fail(400, {"error": "authorization_pending"})
            del self._devices[device.device_code]
            return self._issue()
        if grant == "authorization_code":
            code = self._codes.pop(req.field("code") or "", None)
            verifier = (req.field("code_verifier") or "").encode()
            digest = base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).rstrip(b"=")
            if code is None or digest.decode() != code.challenge:
                raise fail(400, {"error": "invalid_grant"})
            if req.field("redirect_uri") != code.redirect_uri:
                raise fail(400, {"error": "invalid_grant", "error_description": "redirect_uri"})
            return self._issue()
        if grant == "refresh_token":
            refresh = req.field("refresh_token") or ""
            if refresh not in self.grants.refresh:
                raise fail(400, {"error": "invalid_grant"})
            self.grants.refresh.discard(refresh)  # rotating: each refresh token works once
            self.grants.spent.add(refresh)
            return self._issue()
        raise fail(400, {"error": "unsupported_grant_type"})

    def _client(self, req: Request) -> None:
        if req.field("client_id") != CLIENT_ID:
            raise fail(401, {"error": "invalid_client"})

    def _issue(self) -> Reply:
        access, refresh = f"grok-at-{secrets.token_hex(12)}", f"grok-rt-{secrets.token_hex(12)}"
        self.grants.access.add(access)
        self.grants.refresh.add(refresh)
        return json_reply(
            {
                "access_token": access,
                "refresh_token": refresh,
                "token_type": "Bearer",
                "expires_in": 3600,
                "id_token": "unused",
            }
        )


class FakeChat(FakeServer):
    """OpenAI-compatible `/v1/chat/completions` (JSON or SSE) and `/v1/models` at API_HOST."""

    def __init__(self, issuer: FakeIssuer, ca: trustme.CA) -> None:
        super().__init__(tls=ca, hostnames=(API_HOST,))
        self.issuer = issuer
        self.seen: list[tuple[str, str | None]] = []  # (token, the static header) per call
        hosts = (API_HOST,)
        self.add_routes(
            [
                route("POST", "/v1/chat/completions", self._chat, ("grok", "chat"), hosts),
                route("GET", "/v1/models", self._models, ("grok", "models"), hosts),
            ]
        )

    def resolve_toml(self) -> str:
        return f'[resolve]\n"{API_HOST}:443" = "127.0.0.1:{self.base_url.rsplit(":", 1)[1]}"\n'

    def _auth(self, req: Request) -> str:
        token = req.credential("bearer") or ""
        self.seen.append((token, req.headers.get(HEADER[0].lower())))
        if token not in self.issuer.valid_access_tokens():
            error = {"message": "invalid token", "type": "invalid_request_error"}
            raise fail(401, {"error": error})
        return token

    def _models(self, req: Request) -> Reply:
        self._auth(req)
        return json_reply({"object": "list", "data": [{"id": "grok-5", "object": "model"}]})

    def _chat(self, req: Request) -> Reply:
        self._auth(req)
        body: Json = req.body or {}
        model = body.get("model", "grok-5")
        if not body.get("stream"):
            message = {"role": "assistant", "content": "01234"}
            return json_reply(
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                }
            )

        def events() -> Iterator[bytes]:
            for i in range(5):
                chunk = {
                    "id": "chatcmpl-1",
                    "object": "chat.completion.chunk",
                    "model": model,
                    "choices": [{"index": 0, "delta": {"content": str(i)}}],
                }
                yield f"data: {json.dumps(chunk)}\n\n".encode()
                time.sleep(0.02)
            yield b"data: [DONE]\n\n"

        return Reply(200, b"", "text/event-stream", stream=events())
