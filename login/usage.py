"""Each bucket's quota windows, cooldown and traffic, as `keyswap status` and the
status page's `GET /api/usage` show them.

The proxy keeps these per bucket (addon/quota.py) and saves them to `<data dir>/state.json`
(0600) within a second of a change and every 30 s while it serves, so the CLI can show them
whether or not the proxy runs. `view()` turns one bucket's record, saved or live, into the
documented fields; `read_state()` reads the file and tells a damaged one from a missing one.
Nothing here holds a token or a conversation's content.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import KeyswapError
from .store.paths import data_dir, read_private

STATE_FILE = "state.json"  # written by the proxy (addon/quota.py), read by both


class UnreadableState(Exception):
    """The state file is there but cannot be used (damaged, foreign, refused)."""


def state_path(data: Path | None = None) -> Path:
    return (data or data_dir()) / STATE_FILE


def read_state(path: Path) -> tuple[float | None, dict[str, Mapping[str, Any]]]:
    """When the proxy saved the state, and its records by "provider:bucket"; (None, {})
    without a file. Raises UnreadableState for a file that is there but unusable."""
    try:
        data = json.loads(read_private(path))
    except FileNotFoundError:
        return None, {}
    except (OSError, ValueError, KeyswapError) as exc:
        raise UnreadableState(str(exc) or type(exc).__name__) from None
    buckets = data.get("buckets") if isinstance(data, dict) else None
    if not isinstance(buckets, dict) or not all(isinstance(v, dict) for v in buckets.values()):
        raise UnreadableState("not a keyswap state file")
    return _number(data.get("saved")), buckets


def view(record: Mapping[str, Any] | None, now: float) -> dict[str, Any]:
    """One bucket's documented usage fields from its record (the state file's shape):

    - `windows`: one per quota window the provider reported, each `name` (the provider's:
      "5h", "7d", "primary", "premium", ...), `used` (fraction, 0..1, more when over),
      `resets_at` (unix seconds or null), `resets_in` (seconds, 0 once passed: the window
      has started over and `used` is 0), `minutes` (its length, when known), `status`
      (the provider's word, e.g. "allowed_warning", "rejected");
    - `cooling_until`: unix seconds while the bucket rests after a 429, else null;
    - `requests`, `limited`: requests served and 429s (null without a record);
    - `last_429`: unix seconds; `last_error`: e.g. "HTTP 429";
    - `usage_updated`: when a provider last reported the windows (unix seconds).

    Values of the wrong type are left out (null), never raised: the record may come from
    a file another version wrote."""
    record = record or {}
    windows = [w for raw in _list(record.get("windows")) if (w := _window(raw, now)) is not None]
    until = _number(record.get("cooling_until"))
    error = record.get("last_error")
    return {
        "windows": windows,
        "cooling_until": until if until is not None and until > now else None,
        "requests": _count(record.get("served")) if record else None,
        "limited": _count(record.get("limited")) if record else None,
        "last_429": _number(record.get("last_429")),
        "last_error": error if isinstance(error, str) else None,
        "usage_updated": _number(record.get("updated")),
    }


def _window(raw: Any, now: float) -> dict[str, Any] | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        return None
    used = _number(raw.get("used"))
    if used is None:
        return None
    resets_at = _number(raw.get("resets_at"))
    resets_in = None if resets_at is None else max(0, int(resets_at - now))
    status = raw.get("status")
    return {
        "name": raw["name"],
        "used": 0.0 if resets_in == 0 else used,
        "resets_at": resets_at,
        "resets_in": resets_in,
        "minutes": _number(raw.get("minutes")),
        "status": status if isinstance(status, str) else None,
    }


# -- the compact text `keyswap status` prints -----------------------------------------


def span(seconds: float) -> str:
    """A duration in a few characters: "45s", "12m", "3h12m", "5d2h"."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    days, hours = divmod(s // 3600, 24)
    return f"{days}d{hours}h" if hours else f"{days}d"


def window_text(window: Mapping[str, Any]) -> str:
    """ "5h 42% (resets in 3h12m)", "7d 9%", "5h 0% (reset)"."""
    text = f"{window['name']} {round(window['used'] * 100)}%"
    if window["resets_in"] is None:
        return text
    if window["resets_in"] == 0:
        return f"{text} (reset)"
    return f"{text} (resets in {span(window['resets_in'])})"


def columns(usage: Mapping[str, Any], slots: int, now: float) -> list[str]:
    """A bucket's usage cells: its windows (padded to `slots`), requests, 429s, cooldown;
    all empty for a bucket the state does not know."""
    if usage["requests"] is None and not usage["windows"]:
        return [""] * (slots + 3)
    windows = [window_text(w) for w in usage["windows"]]
    windows += [""] * (slots - len(windows))
    requests = usage["requests"] or 0
    cells = [f"{requests} request{'' if requests == 1 else 's'}", f"{usage['limited'] or 0} × 429"]
    until = usage["cooling_until"]
    cooldown = f"cooldown {span(until - now)}" if until is not None else ""
    return [*windows, *cells, cooldown]


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _count(value: object) -> int:
    number = _number(value)
    return int(number) if number is not None and number >= 0 else 0
