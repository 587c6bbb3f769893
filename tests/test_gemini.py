"""The public Gemini API (google-genai SDK, curl) served by Code Assist logins through keyswap."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import httpx
import pytest
from google import genai

from tests.conftest import User
from tests.e2e import Stack, stack
from tests.test_addon import http_client, sdk_env


@pytest.fixture
def s(user: User, tmp_path: Path) -> Iterator[Stack]:
    with stack(user, tmp_path) as st:
        yield st


@pytest.mark.parametrize("provider", ["gemini", "antigravity"])
def test_genai_sdk_streams_through_code_assist(
    s: Stack, monkeypatch: pytest.MonkeyPatch, provider: str
) -> None:
    token = s.login_google(provider)
    with s.proxy() as proxy:
        sdk_env(proxy, monkeypatch)
        client = genai.Client(api_key=f"oauth:{provider}")
        # The plain call first also warms the SDK's parsers, so arrival times below are the
        # proxy's, not the SDK's first-use cost.
        plain = client.models.generate_content(model="gemini-2.5-pro", contents="hi")
        arrivals, text = [], ""
        for chunk in client.models.generate_content_stream(model="gemini-2.5-pro", contents="hi"):
            arrivals.append(time.monotonic())
            text += chunk.text or ""
        counted = client.models.count_tokens(model="gemini-2.5-pro", contents="hi")
    assert text == s.api.text
    gaps = [round(b - a, 3) for a, b in pairwise(arrivals)]
    assert min(gaps) >= 0.6 * s.api.event_gap, f"bunched: {gaps}"
    assert plain.text == text
    assert counted.total_tokens == 10
    generate, stream, count = [c for c in s.api.calls if c.provider == provider][-3:]
    assert stream.path == "/v1internal:streamGenerateContent"
    assert stream.params.get("alt") == "sse"
    assert stream.headers["authorization"] == f"Bearer {token}"
    assert "x-goog-api-key" not in stream.headers
    assert stream.body["model"] == "gemini-2.5-pro"
    assert stream.body["project"] == "proj-existing"
    assert stream.body["request"]["contents"][0]["parts"][0]["text"] == "hi"
    if provider == "antigravity":
        assert stream.body["userAgent"] == "antigravity"
        assert stream.body["requestId"].startswith("agent-")
    assert generate.path == "/v1internal:generateContent"
    assert count.body["request"]["model"] == "models/gemini-2.5-pro"


def test_json_array_stream_and_models_list_over_curl_style_requests(s: Stack) -> None:
    s.login_google("gemini")
    with s.proxy() as proxy, http_client(proxy) as client:
        base = "https://generativelanguage.googleapis.com/v1beta/models"
        array = client.post(
            f"{base}/gemini-2.5-flash:streamGenerateContent?key=oauth",
            json={"contents": [{"role": "user", "parts": [{"text": "x"}]}]},
        )
        models = client.get(f"{base}?key=oauth:gemini")
    assert array.status_code == 200, array.text
    items = json.loads(array.text)
    assert isinstance(items, list) and len(items) == s.api.stream_events
    assert "response" not in items[0] and "candidates" in items[0], "unwrapped"
    assert "key" not in s.api.calls[-1].params, "the placeholder never left"
    names = [m["name"] for m in models.json()["models"]]
    assert "models/gemini-2.5-pro" in names


def test_quota_error_moves_to_the_next_google_bucket(s: Stack) -> None:
    first, second = s.login_google("gemini", "a"), s.login_google("gemini", "b")
    s.configure('[providers.gemini]\nstrategy = "failover"\nbuckets = ["a", "b"]\n')
    s.api.rate_limit("gemini", token=first, hint="body", seconds=90)
    with s.proxy() as proxy, http_client(proxy) as client:
        resp = client.post(
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-pro:generateContent",
            headers={"x-goog-api-key": "oauth:gemini"},
            json={"contents": [{"role": "user", "parts": [{"text": "x"}]}]},
        )
        assert resp.status_code == 200, resp.text
        used = [c.headers["authorization"] for c in s.api.calls if c.provider == "gemini"]
        assert used[-2:] == [f"Bearer {first}", f"Bearer {second}"]
        s.api.rate_limit("gemini", token=second, hint="body", seconds=30)
        both = client.post(
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-pro:generateContent",
            headers={"x-goog-api-key": "oauth:gemini"},
            json={"contents": []},
        )
    assert both.status_code == 429
    assert both.json()["error"]["status"] == "RESOURCE_EXHAUSTED", "Google's error shape"
    assert 20 <= int(both.headers["retry-after"]) <= 31


def test_bad_body_is_a_google_error_and_nothing_is_sent(s: Stack) -> None:
    s.login_google("gemini")
    before = len(s.api.calls)
    with s.proxy() as proxy, http_client(proxy) as client:
        resp = client.post(
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-pro:generateContent",
            headers={"x-goog-api-key": "oauth:gemini", "content-type": "application/json"},
            content=b"{not json",
        )
    assert resp.status_code == 400
    assert resp.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert len(s.api.calls) == before


def test_plain_key_gemini_untouched(s: Stack) -> None:
    with s.proxy() as proxy, http_client(proxy) as client:
        resp = client.post(
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-pro:generateContent",
            headers={"x-goog-api-key": "AIzaRealKey"},
            json={"contents": []},
        )
    assert resp.status_code == 200
    assert s.api.calls[-1].headers["x-goog-api-key"] == "AIzaRealKey"
    assert isinstance(httpx, object)
