"""Session affinity: each conversation stays on the account that served it.

A subscription's prompt cache is per account, so a conversation whose turns go to another
account each time re-processes its whole context every turn, burning the quota windows
faster and answering slower. The `sticky` strategy keeps a conversation on its bucket until
that bucket is limited, failing or excluded, then moves it once.

The conversation comes from what the client sends (`Provider.conversation`: Claude Code's
session id, Codex's session headers, `prompt_cache_key`), else a digest of its first turn
(system prompt and first user message) and the client. The map is bounded and forgets
conversations idle for hours, so it never grows over a long run; every operation on it is
O(1) except the per-bucket counts the status page asks for.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

from pydantic_core import from_json

from login.providers.base import ApiCall, Provider

# How much of a body the first-turn digest reads: the system prompt and first user message
# sit at its start, and a fixed prefix reads the same bytes on every turn.
_PREFIX = 32 * 1024


class Affinity:
    def __init__(self, size: int = 20_000, ttl: float = 6 * 3600.0) -> None:
        self.size, self.ttl = size, ttl
        # (provider, conversation) -> (bucket, last used), least recently used first.
        self._held: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()
        self._counts: Counter[tuple[str, str]] = Counter()  # (provider, bucket) -> conversations
        # Told when a conversation gets a bucket (new, or moved): (provider, conversation,
        # bucket). Set to share them with other proxies (addon/shared.py); it must not block.
        self.on_place: Callable[[str, str, str], None] | None = None

    def get(self, provider: str, conversation: str) -> str | None:
        key = (provider, conversation)
        found = self._held.get(key)
        if found is None:
            return None
        bucket, used = found
        now = time.monotonic()
        if now - used > self.ttl:
            self._drop(key)
            return None
        self._held[key] = (bucket, now)
        self._held.move_to_end(key)
        return bucket

    def put(self, provider: str, conversation: str, bucket: str) -> None:
        key = (provider, conversation)
        old = self._held.pop(key, None)
        if old is not None:
            self._counts[provider, old[0]] -= 1
        self._held[key] = (bucket, time.monotonic())
        self._counts[provider, bucket] += 1
        while len(self._held) > self.size:
            self._drop(next(iter(self._held)))
        if self.on_place is not None and (old is None or old[0] != bucket):
            self.on_place(provider, conversation, bucket)

    def holds(self, provider: str, bucket: str) -> int:
        """How many live conversations the bucket holds (idle ones may still count)."""
        return self._counts[provider, bucket]

    def __len__(self) -> int:
        return len(self._held)

    def _drop(self, key: tuple[str, str]) -> None:
        bucket, _ = self._held.pop(key)
        self._counts[key[0], bucket] -= 1


def conversation_of(provider: Provider, call: ApiCall, client: str = "") -> str | None:
    """The conversation a request belongs to: the id the client names, else a digest of
    its first turn and the client; None for a request that is no conversation."""
    named = provider.conversation(call)
    if named is not None:
        return f"{client}|{named}"
    first = _first_turn(call.body)
    if first is None:
        return None
    digest = hashlib.blake2b(first, digest_size=16, key=client.encode()[:64])
    return "turn:" + digest.hexdigest()


def _first_turn(body: bytes) -> bytes | None:
    """The bytes of a body's system prompt and first user turn (Chat Completions, Messages,
    Responses and Gemini shapes), read from its prefix; None without a conversation."""
    if not body.startswith(b"{"):
        return None
    try:
        data = from_json(body[:_PREFIX], allow_partial=True)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    turns = data.get("messages") or data.get("input") or data.get("contents")
    system: Any = (
        data.get("system") or data.get("instructions") or data.get("systemInstruction") or ""
    )
    if isinstance(turns, str):
        first: Any = turns
    elif isinstance(turns, list):
        first = next((t for t in turns if _is_user(t)), None)
        # Chat Completions puts the system prompt in the messages.
        system = system or next((t for t in turns if _role(t) in ("system", "developer")), "")
    else:
        return None
    if first is None:
        return None
    return repr((system, first)).encode()


def _role(turn: Any) -> Any:
    return turn.get("role") if isinstance(turn, dict) else None


def _is_user(turn: Any) -> bool:
    return isinstance(turn, str) or _role(turn) == "user"
