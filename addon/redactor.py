"""Taking the credentials a request carried out of the answer the client gets.

Providers sometimes quote what they were sent (an error body that echoes the Authorization
header). The relay knows every token it sent on a request; whatever it passes back goes
through a `Redactor` made of those, headers, whole bodies and streams alike. A stream is
redacted as it passes: only a chunk's tail that could be the start of a token waits for the
next chunk, so events are not delayed.
"""

from __future__ import annotations

from collections.abc import Iterable

from login.redact import MIN_SECRET, redact, redact_bytes, secrets_of


class Redactor:
    __slots__ = ("_by_len", "_bytes", "_heads", "_held", "_starts", "_text")

    def __init__(self, secrets: Iterable[str]) -> None:
        self._text = secrets_of(secrets)
        self._bytes = tuple(s.encode("latin-1") for s in self._text)
        self._held = b""
        # A tail of MIN_SECRET bytes or more that begins a secret is found by searching for
        # the secret's first MIN_SECRET bytes; shorter tails by one endswith over them all.
        # Made by the first `feed`: most answers are not streams.
        self._heads: tuple[bytes, ...] = ()
        self._by_len: list[tuple[bytes, ...]] = []
        self._starts: tuple[bytes, ...] = ()

    def headers(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        if not self._text:
            return headers
        # One search over all values: headers almost never hold a secret.
        joined = "\n".join([v for _, v in headers])
        if not any(s in joined for s in self._text):
            return headers
        return [(k, redact(v, self._text)) for k, v in headers]

    def whole(self, data: bytes) -> bytes:
        return redact_bytes(data, self._bytes) if self._bytes else data

    def feed(self, chunk: bytes) -> bytes:
        """The part of a stream that can go out now; a tail that may begin a secret waits."""
        if not self._bytes:
            return chunk
        if not self._heads:
            self._heads = tuple(s[:MIN_SECRET] for s in self._bytes)
            self._by_len = [tuple(s[:k] for s in self._bytes) for k in range(MIN_SECRET)]
            self._starts = tuple({start for starts in self._by_len[1:] for start in starts})
        data = redact_bytes(self._held + chunk if self._held else chunk, self._bytes)
        keep = self._partial(data)
        self._held = data[len(data) - keep :] if keep else b""
        return data[: len(data) - keep] if keep else data

    def end(self) -> bytes:
        """What was held back, once the stream is over: it began no secret after all."""
        held, self._held = self._held, b""
        return held

    def _partial(self, data: bytes) -> int:
        """The length of the longest tail of `data` that is the start of a secret."""
        longest = 0
        for secret, head in zip(self._bytes, self._heads, strict=True):
            at = data.find(head, max(0, len(data) - len(secret) + 1))
            while at >= 0:  # rare: the secret's first bytes near the end
                if secret.startswith(data[at:]):
                    longest = max(longest, len(data) - at)  # the earliest start is longest
                    break
                at = data.find(head, at + 1)
        if longest or not data.endswith(self._starts):
            return longest
        return next(k for k in range(MIN_SECRET - 1, 0, -1) if data.endswith(self._by_len[k]))
