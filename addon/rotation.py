"""Which bucket (account) serves the next request: round-robin or failover, skipping
buckets that rest after a 429."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Rotation:
    _cooling: dict[tuple[str, str], float] = field(default_factory=dict)
    _next: Counter[str] = field(default_factory=Counter)
    served: Counter[tuple[str, str]] = field(default_factory=Counter)
    limited: Counter[tuple[str, str]] = field(default_factory=Counter)

    def plan(self, provider: str, buckets: list[str], strategy: str) -> list[str]:
        """The buckets to try, in order."""
        if not buckets:
            return []
        if strategy == "round-robin":
            start = self._next[provider] % len(buckets)
            self._next[provider] += 1
            buckets = buckets[start:] + buckets[:start]
        # Resting buckets go last: the dispatch passes them over while they rest (checked
        # again when it sends), and they tell when the next one is free.
        now = time.time()
        ready = [b for b in buckets if self._cooling.get((provider, b), 0.0) <= now]
        return ready + [b for b in buckets if b not in ready]

    def cool(self, provider: str, bucket: str, seconds: float) -> None:
        self.limited[provider, bucket] += 1
        until = time.time() + seconds
        key = (provider, bucket)
        self._cooling[key] = max(self._cooling.get(key, 0.0), until)

    def cooling_until(self, provider: str, bucket: str) -> float | None:
        until = self._cooling.get((provider, bucket))
        return until if until and until > time.time() else None

    def soonest(self, provider: str, buckets: list[str]) -> float | None:
        """Seconds until the first of `buckets` may be used again."""
        waits = [u for b in buckets if (u := self.cooling_until(provider, b))]
        return min(waits) - time.time() if waits else None

    def reset(self, provider: str, bucket: str) -> None:
        self._cooling.pop((provider, bucket), None)
