"""Each provider reads its own 429 hints (Provider.rate_limit_hint); Retry-After is read for
every provider, and the longest wait wins. Fast, in process; the same hints on the wire are in
test_addon.py, test_gemini.py and test_provider_facts.py."""

from __future__ import annotations

import json
import time

import pytest

from login.providers import PROVIDERS

NOW = time.time()


class At(float):
    """A wait given as a time (NOW + n): it comes closer as the suite runs."""


GOOGLE_BODY = {
    "error": {
        "code": 429,
        "details": [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"},
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "metadata": {"quotaResetDelay": "12.5s"},
            },
        ],
    }
}
CASES = [
    # (provider, headers, body, seconds expected (±2), or None)
    ("copilot", {"retry-after": "300"}, {}, 300),
    ("copilot", {"retry-after-ms": "1500"}, {}, 1.5),
    ("copilot", {}, {}, None),
    ("copilot", {"retry-after": "garbage"}, {}, None),
    ("copilot", {"retry-after": "Fri, 31 Dec 1999 23:59:59 GMT"}, {}, None),  # in the past
    ("copilot", {"retry-after": "Thu, 99 Foo 2026 99:99:99 GMT"}, {}, None),
    (
        "copilot",
        {"retry-after": "300"},
        {"error": {"message": "Please try again in 51 hours."}},
        51 * 3600,
    ),
    ("codex", {}, {"error": {"type": "usage_limit_reached", "resets_in_seconds": 7}}, 7),
    ("codex", {}, {"error": {"resets_at": NOW + 3600}}, At(3600)),
    ("codex", {"retry-after": "120"}, {"error": {"resets_in_seconds": 7}}, 120),
    ("codex", {}, GOOGLE_BODY, None),  # another provider's hint means nothing here
    ("gemini", {}, GOOGLE_BODY, 37),
    ("antigravity", {}, [GOOGLE_BODY], 37),  # the JSON-array stream form
    ("gemini", {}, {"error": {"details": ["x", {"retryDelay": 5}]}}, None),
    (
        "anthropic",
        {
            "anthropic-ratelimit-unified-status": "rejected",
            "anthropic-ratelimit-unified-5h-status": "rejected",
            "anthropic-ratelimit-unified-5h-reset": str(int(NOW + 7200)),
            "anthropic-ratelimit-unified-7d-status": "allowed",
            "anthropic-ratelimit-unified-7d-reset": str(int(NOW + 86400)),
            "retry-after": "30",
        },
        {},
        At(7200),
    ),
    (
        "anthropic",
        {
            "anthropic-ratelimit-unified-status": "rejected",
            "anthropic-ratelimit-unified-reset": str(int(NOW + 1800)),
        },
        {},
        At(1800),
    ),
    ("anthropic", {}, {"error": {"resets_in_seconds": 7}}, None),
]


@pytest.mark.parametrize(("provider", "headers", "body", "expected"), CASES)
def test_each_provider_reads_its_own_hints(
    provider: str, headers: dict[str, str], body: object, expected: float | None
) -> None:
    raw = json.dumps(body).encode() if body else b""
    found = PROVIDERS[provider].rate_limit_hint(headers, raw)
    if expected is None:
        assert found is None
    else:
        late = time.time() - NOW if isinstance(expected, At) else 0.0
        assert found is not None and abs(found + late - expected) <= 2, found


def test_a_body_that_is_not_json_or_too_deep_gives_no_hint() -> None:
    for provider in PROVIDERS.values():
        assert provider.rate_limit_hint({}, b"[" * 100_000) is None
        assert provider.rate_limit_hint({}, b"\xff\xfe not json") is None
