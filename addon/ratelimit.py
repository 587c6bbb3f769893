"""How long a rate-limited bucket must rest, read from the provider's own hints
(docs/providers.md §1.4, §2.5, §3.5, §5.3)."""

from __future__ import annotations

import email.utils
import json
import re
import time
from collections.abc import Mapping
from typing import Any

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


def reset_after(headers: Mapping[str, str], body: bytes, now: float | None = None) -> float | None:
    """Seconds until the limit lifts, or None when the answer carries no hint."""
    now = time.time() if now is None else now
    hints = [
        _retry_after(headers, now),
        _anthropic(headers, now),
        _codex(_json(body), now),
        _google(_json(body)),
    ]
    found = [h for h in hints if h is not None and h >= 0]
    return max(found) if found else None


def _retry_after(headers: Mapping[str, str], now: float) -> float | None:
    ms = headers.get("retry-after-ms")
    if ms and _is_number(ms):
        return float(ms) / 1000
    value = headers.get("retry-after")
    if not value:
        return None
    if _is_number(value):
        return float(value)
    parsed = email.utils.parsedate_to_datetime(value) if "," in value else None
    return parsed.timestamp() - now if parsed else None


def _anthropic(headers: Mapping[str, str], now: float) -> float | None:
    """The unified limiter names the window that rejected and when it resets (unix seconds)."""
    resets = []
    for window in ("", "-5h", "-7d", "-7d_oi"):
        if headers.get(f"anthropic-ratelimit-unified{window}-status") == "rejected":
            reset = headers.get(f"anthropic-ratelimit-unified{window}-reset")
            if reset and _is_number(reset):
                resets.append(float(reset) - now)
    if not resets:
        reset = headers.get("anthropic-ratelimit-unified-reset")
        if reset and _is_number(reset) and headers.get("anthropic-ratelimit-unified-status"):
            resets.append(float(reset) - now)
    return max(resets) if resets else None


def _codex(body: dict[str, Any], now: float) -> float | None:
    err = body.get("error")
    if not isinstance(err, dict):
        return None
    if isinstance(err.get("resets_in_seconds"), int | float):
        return float(err["resets_in_seconds"])
    if isinstance(err.get("resets_at"), int | float):
        return float(err["resets_at"]) - now
    return None


def _google(body: dict[str, Any]) -> float | None:
    err = body.get("error")
    details = err.get("details") if isinstance(err, dict) else None
    if not isinstance(details, list):
        return None
    found: list[float] = []
    for item in details:
        if not isinstance(item, dict):
            continue
        for value in (item.get("retryDelay"), (item.get("metadata") or {}).get("quotaResetDelay")):
            if isinstance(value, str) and (m := _DURATION.match(value)):
                found.append(float(m[1]))
    return max(found) if found else None


def _json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body) if body else {}
    except ValueError:
        return {}
    if isinstance(data, list) and data and isinstance(data[0], dict):
        data = data[0]  # Google's JSON-array stream form
    return data if isinstance(data, dict) else {}


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True
