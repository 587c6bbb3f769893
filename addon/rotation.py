"""Which bucket (account) serves the next request: round-robin or failover, with buckets
that rest after a 429 last. A long rest (hours or days, as weekly limits give) is re-probed
now and then with a single request, so an account the provider released early comes back
without a restart."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

# A rest longer than this is re-probed, one request at a time, this often.
PROBE_AFTER = 15 * 60.0
PROBE_EVERY = 15 * 60.0


@dataclass
class Rotation:
    _cooling: dict[tuple[str, str], float] = field(default_factory=dict)
    _probed: dict[tuple[str, str], float] = field(default_factory=dict)
    _next: Counter[str] = field(default_factory=Counter)
    served: Counter[tuple[str, str]] = field(default_factory=Counter)
    limited: Counter[tuple[str, str]] = field(default_factory=Counter)
    version: int = 0  # changes with every rest begun or ended (what the state file keeps)
    # Told of every rest begun here: (provider, bucket, until). Set to share rests with other
    # proxies (addon/shared.py); it must not block.
    on_cool: Callable[[str, str, float], None] | None = None

    def plan(self, provider: str, buckets: list[str], strategy: str) -> list[str]:
        """The buckets to try, in order."""
        if not buckets:
            return []
        if strategy == "round-robin":
            start = self._next[provider] % len(buckets)
            self._next[provider] += 1
            buckets = buckets[start:] + buckets[:start]
        return self.resting_last(provider, buckets)

    def place(
        self,
        provider: str,
        buckets: list[str],
        held: str | None,
        used: Callable[[str], float],
        holds: Callable[[str], int],
        move_at: float,
    ) -> list[str]:
        """The `sticky` order: the bucket holding the conversation first, if it may serve;
        else (a new conversation, or one whose bucket rests) the buckets below `move_at` of
        every window, most headroom first and then fewest conversations, so that new
        conversations spread; buckets past it next, resting ones last."""
        now = time.time()

        def rank(bucket: str) -> tuple[bool, bool, float, int, str]:
            resting = self._cooling.get((provider, bucket), 0.0) > now
            share = used(bucket)
            return (resting, share >= move_at, share, holds(bucket), bucket)

        if held in buckets and self._cooling.get((provider, held), 0.0) <= now:
            return [held, *sorted((b for b in buckets if b != held), key=rank)]
        return sorted(buckets, key=rank)

    def resting_last(self, provider: str, buckets: list[str]) -> list[str]:
        """Resting buckets go last: the dispatch passes them over while they rest (checked
        again when it sends), and they tell when the next one is free."""
        now = time.time()
        ready = [b for b in buckets if self._cooling.get((provider, b), 0.0) <= now]
        if len(ready) == len(buckets):
            return ready
        return ready + [b for b in buckets if b not in ready]

    def cool(self, provider: str, bucket: str, seconds: float, count: bool = True) -> None:
        if count:
            self.limited[provider, bucket] += 1
        until = time.time() + seconds
        key = (provider, bucket)
        self._cooling[key] = max(self._cooling.get(key, 0.0), until)
        self._probed[key] = time.time()
        self.version += 1
        if self.on_cool is not None:
            self.on_cool(provider, bucket, self._cooling[key])

    def cooling_until(self, provider: str, bucket: str) -> float | None:
        until = self._cooling.get((provider, bucket))
        return until if until and until > time.time() else None

    def cooling(self) -> list[tuple[str, str]]:
        now = time.time()
        return [k for k, until in self._cooling.items() if until > now]

    def probe(self, provider: str, bucket: str) -> bool:
        """Whether one request may try a bucket during a long rest: at most one per
        PROBE_EVERY, and only while more than PROBE_AFTER of the rest is left."""
        key, now = (provider, bucket), time.time()
        until = self._cooling.get(key, 0.0)
        if until - now <= PROBE_AFTER or now - self._probed.get(key, 0.0) < PROBE_EVERY:
            return False
        self._probed[key] = now
        return True

    def soonest(self, provider: str, buckets: list[str]) -> float | None:
        """Seconds until the first of `buckets` may be used again."""
        waits = [u for b in buckets if (u := self.cooling_until(provider, b))]
        return min(waits) - time.time() if waits else None

    def reset(self, provider: str, bucket: str) -> None:
        self._cooling.pop((provider, bucket), None)
        self._probed.pop((provider, bucket), None)
        self.version += 1
