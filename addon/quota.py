"""What keyswap knows about each account's quota, learnt from the traffic itself.

Every answer's usage signals (`Provider.usage_from_headers`) update the bucket's windows:
how much of each is used and when it resets. A bucket past the threshold (`[proxy] move_at`,
95 % of any window by default) gets no new conversations while another has headroom. Along
with the rotation's cooldowns this is kept in a state file (0600 in the data dir), so a
restarted proxy does not hammer an exhausted account and `keyswap status` can show
it whether or not the proxy runs.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from login.providers.usage import Window
from login.store.paths import private_dir, write_private
from login.usage import UnreadableState, read_state

from .rotation import Rotation

log = logging.getLogger(__name__)

_VERSION = 1


@dataclass
class Account:
    """One bucket's quota as last reported, and what happened to it."""

    windows: dict[str, Window] = field(default_factory=dict)
    updated: float | None = None  # when a provider last reported usage
    last_429: float | None = None
    last_error: str | None = None

    def used(self, now: float) -> float:
        """The largest used fraction over the windows that have not reset since."""
        return max(
            (w.used for w in self.windows.values() if w.resets_at is None or w.resets_at > now),
            default=0.0,
        )


class Quota:
    """Per (provider, bucket): windows, last 429, last error. Cheap to update on every
    answer (a dict assignment); written out by the proxy's maintenance loop when changed."""

    def __init__(self) -> None:
        self.accounts: dict[tuple[str, str], Account] = {}
        self.dirty = False
        # Told of windows observed here: (provider, bucket, account). Set to share them with
        # other proxies (addon/shared.py); it must not block.
        self.on_observe: Callable[[str, str, Account], None] | None = None

    def account(self, provider: str, bucket: str) -> Account:
        key = (provider, bucket)
        found = self.accounts.get(key)
        if found is None:
            found = self.accounts[key] = Account()
        return found

    def observe(self, provider: str, bucket: str, windows: list[Window]) -> None:
        if not windows:
            return
        account = self.account(provider, bucket)
        for window in windows:
            account.windows[window.name] = window
        account.updated = time.time()
        self.dirty = True
        if self.on_observe is not None:
            self.on_observe(provider, bucket, account)

    def limited(self, provider: str, bucket: str, why: str | None = None) -> None:
        account = self.account(provider, bucket)
        account.last_429 = time.time()
        if why:
            account.last_error = why
        self.dirty = True

    def failed(self, provider: str, bucket: str, why: str) -> None:
        self.account(provider, bucket).last_error = why
        self.dirty = True

    def used(self, provider: str, bucket: str, now: float | None = None) -> float:
        found = self.accounts.get((provider, bucket))
        return found.used(time.time() if now is None else now) if found else 0.0

    def spent_until(self, provider: str, bucket: str) -> float | None:
        """When the last full window resets (for a limit that names no wait of its own,
        such as a spent monthly allowance); None if no window is known to be full."""
        found = self.accounts.get((provider, bucket))
        now = time.time()
        resets = [
            w.resets_at
            for w in (found.windows.values() if found else ())
            if w.used >= 1.0 and w.resets_at is not None and w.resets_at > now
        ]
        return max(resets) if resets else None

    def forget(self, provider: str, bucket: str) -> None:
        if self.accounts.pop((provider, bucket), None) is not None:
            self.dirty = True


# -- the state file: cooldowns, counters and quotas, shared with `keyswap status` -----


def dump(quota: Quota, rotation: Rotation) -> bytes:
    now = time.time()
    buckets: dict[str, dict[str, Any]] = {}
    keys = set(quota.accounts) | set(rotation.served) | set(rotation.limited)
    keys |= {k for k in rotation.cooling() if k}
    for provider, bucket in sorted(keys):
        account = quota.accounts.get((provider, bucket)) or Account()
        until = rotation.cooling_until(provider, bucket)
        buckets[f"{provider}:{bucket}"] = {
            "windows": [asdict(w) for w in account.windows.values()],
            "updated": account.updated,
            "last_429": account.last_429,
            "last_error": account.last_error,
            "cooling_until": until,
            "served": rotation.served[provider, bucket],
            "limited": rotation.limited[provider, bucket],
        }
    return json.dumps({"version": _VERSION, "saved": now, "buckets": buckets}).encode()


def save(path: Path, quota: Quota, rotation: Rotation) -> None:
    """Write the state (0600 in a 0700 dir, atomically). Blocking: call it off the loop."""
    private_dir(path.parent)
    write_private(path, dump(quota, rotation))


def read(path: Path) -> Mapping[str, Mapping[str, Any]]:
    """The saved buckets, by "provider:bucket"; {} when there is no (usable) state. Read as
    `keyswap status` reads it, so a file open to others is refused here too."""
    try:
        _, buckets = read_state(path)
    except UnreadableState as exc:
        log.warning("keyswap: ignoring the saved state %s: %s", path, exc)
        return {}
    return buckets


def restore(path: Path, quota: Quota, rotation: Rotation) -> None:
    """Take back what a previous run saved: cooldowns still running, windows, counters."""
    now = time.time()
    for name, saved in read(path).items():
        provider, _, bucket = name.partition(":")
        if not bucket or not isinstance(saved, Mapping):
            continue
        try:
            account = quota.account(provider, bucket)
            for raw in saved.get("windows") or []:
                window = Window(**raw)
                account.windows[window.name] = window
            account.updated = _number(saved.get("updated"))
            account.last_429 = _number(saved.get("last_429"))
            error = saved.get("last_error")
            account.last_error = error if isinstance(error, str) else None
            until = _number(saved.get("cooling_until"))
            if until is not None and until > now:
                rotation.cool(provider, bucket, until - now, count=False)
            rotation.served[provider, bucket] = int(saved.get("served") or 0)
            rotation.limited[provider, bucket] = int(saved.get("limited") or 0)
        except (TypeError, ValueError) as exc:
            log.warning("keyswap: ignoring the saved state of %s: %s", name, exc)
            quota.accounts.pop((provider, bucket), None)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
