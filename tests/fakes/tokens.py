"""Token bookkeeping and token-format helpers shared by the fakes."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def pkce_matches(verifier: str | None, challenge: str) -> bool:
    """RFC 7636 S256: base64url(sha256(verifier)) without padding equals the challenge."""
    if verifier is None or not _VERIFIER.fullmatch(verifier):
        return False
    return b64url(hashlib.sha256(verifier.encode()).digest()) == challenge


def fake_jwt(claims: dict[str, Any]) -> str:
    """An unsigned-in-spirit JWT: real header and payload, junk signature."""
    header = {"alg": "RS256", "typ": "JWT", "kid": "fake"}
    parts = (json.dumps(header).encode(), json.dumps(claims).encode(), secrets.token_bytes(32))
    return ".".join(b64url(p) for p in parts)


@dataclass
class AccessToken:
    provider: str  # "github" for GitHub OAuth tokens, "copilot" for Copilot tokens
    expires_at: float  # time.time()
    subject: str = ""

    @property
    def expired(self) -> bool:
        return time.time() >= self.expires_at


@dataclass
class RefreshToken:
    provider: str
    access_token: str  # the latest access token minted from it
    scope: str
    used: bool = False


class RefreshRejected(Exception):
    def __init__(self, reused: bool) -> None:
        super().__init__("reused" if reused else "unknown")
        self.reused = reused


class TokenStore:
    """Issued tokens of every provider. Not locked: the owning server's lock guards it."""

    def __init__(self) -> None:
        self.access: dict[str, AccessToken] = {}
        self.refresh: dict[str, RefreshToken] = {}

    def add(self, provider: str, token: str, ttl: float, subject: str = "") -> None:
        self.access[token] = AccessToken(provider, time.time() + ttl, subject)

    def find(self, token: str | None, providers: tuple[str, ...]) -> AccessToken | None:
        entry = self.access.get(token or "")
        return entry if entry is not None and entry.provider in providers else None

    def valid(self, provider: str) -> set[str]:
        return {t for t, e in self.access.items() if e.provider == provider and not e.expired}

    def link(self, provider: str, refresh: str, access: str, scope: str) -> None:
        """Record `refresh` (new, or kept by a non-rotating provider) as minting `access`."""
        self.refresh[refresh] = RefreshToken(provider, access, scope)

    def redeem(
        self, provider: str, token: str, *, rotate: bool, revoke_access: bool
    ) -> RefreshToken:
        """Spend a refresh token. `rotate`: it is single use; `revoke_access`: the access token
        it last minted dies now. Raises RefreshRejected."""
        entry = self.refresh.get(token)
        if entry is None or entry.provider != provider:
            raise RefreshRejected(reused=False)
        if entry.used:
            raise RefreshRejected(reused=True)
        entry.used = rotate
        if revoke_access:
            self.access.pop(entry.access_token, None)
        return entry

    def revoke(self, provider: str, token: str) -> bool:
        found = False
        for table in (self.access, self.refresh):
            entry = table.get(token)
            if entry is not None and entry.provider == provider:
                del table[token]
                found = True
        return found

    def revoke_refresh(self, provider: str) -> int:
        doomed = [t for t, e in self.refresh.items() if e.provider == provider]
        for token in doomed:
            del self.refresh[token]
        return len(doomed)

    def expire(self, provider: str, token: str | None) -> None:
        for t, e in self.access.items():
            if e.provider == provider and token in (None, t):
                e.expires_at = time.time() - 1
