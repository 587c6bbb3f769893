"""Taking known secret values out of text keyswap passes on, logs or stores.

Providers sometimes quote what they were sent: an error body that echoes the
Authorization header, an `invalid_grant` description that names the refresh token.
Whatever keyswap relays, logs or keeps as detail goes through here first, with every
credential value it knows of at that point (the current ones and one just refused).
"""

from __future__ import annotations

from collections.abc import Iterable

REDACTED = "(redacted)"
# Shorter values are not secrets worth hunting (and would redact ordinary words).
MIN_SECRET = 8


def secrets_of(values: Iterable[str | None]) -> tuple[str, ...]:
    """The values worth redacting, longest first (so one that contains another goes whole)."""
    found = {v for v in values if v and len(v) >= MIN_SECRET}
    return tuple(sorted(found, key=len, reverse=True))


def redact(text: str, secrets: Iterable[str | None]) -> str:
    for secret in secrets_of(secrets):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def redact_bytes(data: bytes, secrets: Iterable[bytes]) -> bytes:
    for secret in secrets:
        if secret in data:
            data = data.replace(secret, REDACTED.encode())
    return data
