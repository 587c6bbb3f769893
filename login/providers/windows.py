"""The numbers in providers' usage signals, read the way every provider's hooks need them:
cheaply (they run on every answer) and without ever raising. An odd value (not a number,
NaN, infinite, negative) reads as None, so the signal is skipped, never guessed
(docs/providers.md §2.5, §5.3)."""

from __future__ import annotations

import math

# A reset time below this is a count of seconds from now, not a unix time: 1e9 s after the
# epoch is September 2001, and no window lasts 30 years. Sources disagree on which one some
# fields carry (docs/providers.md §2.5), so both are accepted.
EPOCH_FLOOR = 1e9
# Longer header values are no number keyswap reads.
_LONGEST = 40


def number(value: object) -> float | None:
    """A finite number >= 0 from a header's text or a JSON number; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        if not value or len(value) > _LONGEST:
            return None
        try:
            found = float(value)
        except ValueError:
            return None
    elif isinstance(value, int | float):
        try:
            found = float(value)
        except OverflowError:  # an integer too large for a float
            return None
    else:
        return None
    return found if math.isfinite(found) and found >= 0 else None


def percent(value: object) -> float | None:
    """A percentage (0..100) as the fraction a Window holds."""
    found = number(value)
    return None if found is None else found / 100


def reset_time(value: object, now: float) -> float | None:
    """When a window resets, in unix seconds: the value itself when it is a unix time, else
    `now` plus the value (a count of seconds from now)."""
    found = number(value)
    if found is None:
        return None
    return found if found >= EPOCH_FLOOR else now + found
