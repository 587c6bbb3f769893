"""What a provider's answers say about an account: its quota windows, and what an error
means for the account (rotate, refresh, log in again, or the client's own problem).

Providers report usage on ordinary answers, not only on 429s (docs/providers.md §1.4, §2.5,
§3.5, §5.3): each provider reads its own signals in `Provider.usage_from_headers` (and, for
signals inside a stream, `Provider.usage_from_event`), and classifies its errors in
`Provider.classify`. The addon keeps what they report per bucket (addon/quota.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# What an answer means for the bucket that served it:
# - "ok": served; nothing to do.
# - "rotate": this account is limited (a 429, or a quota-class 402/403): rest it until its
#   reset and try the next account.
# - "refresh": the access token was refused (401): refresh once and send again.
# - "relogin": the login itself is gone (revoked, refresh token reused): no retry on it
#   until the user logs in again.
# - "pass": an error about the request itself: the client gets it as it is.
Outcome = Literal["ok", "rotate", "refresh", "relogin", "pass"]


@dataclass(frozen=True)
class Window:
    """One quota window of an account, as the provider last reported it."""

    name: str  # the provider's own name for it: "5h", "7d", "primary", "premium", ...
    used: float  # fraction of the window used, 0..1 (a provider may report more than 1)
    resets_at: float | None = None  # unix seconds
    minutes: float | None = None  # the window's length, when the provider says
    status: str | None = None  # the provider's own word, e.g. "allowed_warning", "rejected"
