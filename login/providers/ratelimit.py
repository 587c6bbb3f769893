"""How long a rate-limited account must rest: the parts every provider shares. Each provider
reads its own hints in `Provider.rate_limit_hint` (docs/providers.md §1.4, §2.5, §3.5, §5.3)."""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Mapping
from typing import Any


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds from `Retry-After` (seconds or an HTTP date) or `retry-after-ms`."""
    ms = headers.get("retry-after-ms")
    if ms and is_number(ms):
        return float(ms) / 1000
    value = headers.get("retry-after")
    if not value:
        return None
    if is_number(value):
        return float(value)
    try:
        parsed = email.utils.parsedate_to_datetime(value) if "," in value else None
    except (TypeError, ValueError):
        return None
    return parsed.timestamp() - (time.time() if now is None else now) if parsed else None


def latest(*hints: float | None) -> float | None:
    """The longest of the waits given (a limit lifts when every window has), None if none."""
    found = [h for h in hints if h is not None and h >= 0]
    return max(found) if found else None


def json_object(body: bytes) -> dict[str, Any]:
    """An error body as a JSON object ({} if it is none); the first object of a JSON array
    (a streamed answer's form)."""
    try:
        data = json.loads(body) if body else {}
    except (ValueError, RecursionError):
        return {}
    if isinstance(data, list) and data and isinstance(data[0], dict):
        data = data[0]
    return data if isinstance(data, dict) else {}


def is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True
