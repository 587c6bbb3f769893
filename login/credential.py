"""What a login leaves behind: one credential per provider and bucket."""

from __future__ import annotations

import base64
import json
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, SecretStr, field_serializer

from .redact import redact

State = Literal["valid", "expired-refreshable", "needs-login"]


class Credential(BaseModel):
    """Tokens are `SecretStr`, so a stray repr or log line shows `**********`.

    `refresh_token` is whatever mints the next access token: an OAuth refresh
    token, or a long-lived token a provider exchanges for short-lived API tokens.
    """

    model_config = ConfigDict(extra="ignore")

    provider: str
    bucket: str
    access_token: SecretStr
    refresh_token: SecretStr | None = None
    expires_at: float | None = None
    account: str | None = None
    extra: dict[str, str] = {}
    needs_login: str | None = None
    updated_at: float = 0.0
    # When this login was made (a refresh keeps it): a new value in the store for a bucket
    # that a running proxy holds means someone logged in to it again.
    login_at: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.provider}:{self.bucket}"

    @property
    def token(self) -> str:
        return self.access_token.get_secret_value()

    @property
    def refresh(self) -> str | None:
        return self.refresh_token.get_secret_value() if self.refresh_token else None

    def secrets(self) -> tuple[str | None, ...]:
        """Every credential value this holds, for redacting text that may quote them."""
        return (self.token, self.refresh)

    @property
    def detail(self) -> str | None:
        """Why a new login is needed, without this credential's own tokens (a provider's
        refusal may quote them, and older versions stored it as it came)."""
        return redact(self.needs_login, self.secrets()) if self.needs_login else None

    def expires_within(self, seconds: float, now: float | None = None) -> bool:
        if self.expires_at is None:
            return False
        return self.expires_at - seconds <= (time.time() if now is None else now)

    def state(self, skew: float = 0.0) -> State:
        if self.needs_login:
            return "needs-login"
        if not self.expires_within(skew):
            return "valid"
        return "expired-refreshable" if self.refresh_token else "needs-login"

    @field_serializer("access_token", "refresh_token", when_used="json")
    def _reveal(self, value: SecretStr | None) -> str | None:
        # Only the store serialises to JSON; everything else sees the masked form.
        # `is not None`: an empty SecretStr is falsy, and an empty access token (an answer that
        # carried only a refresh token) must still round-trip.
        return value.get_secret_value() if value is not None else None

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes) -> Credential:
        return cls.model_validate_json(text)


def expiry_text(expires_at: float | None, now: float | None = None) -> str:
    """ "expires in 25 min", "expired 3 h ago", "no expiry"."""
    if expires_at is None:
        return "no expiry"
    delta = expires_at - (time.time() if now is None else now)
    span = abs(delta)
    if span < 120:
        text = f"{int(span)} s"
    elif span < 7200:
        text = f"{int(span // 60)} min"
    elif span < 172800:
        text = f"{span / 3600:.0f} h"
    else:
        text = f"{span / 86400:.0f} d"
    return f"expires in {text}" if delta > 0 else f"expired {text} ago"


def jwt_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, unverified: used only to read our own token's claims
    (expiry, account id) that came straight from the issuer over TLS."""
    try:
        payload = token.split(".")[1]
        payload += "=" * (-len(payload) % 4)
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (IndexError, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}
