"""The relay's answers through a real mitmdump: an answer the provider cuts short, tokens a
provider echoes, and buckets that must get nothing while they rest after a 429."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import User
from tests.e2e import Stack, stack
from tests.fakes.server import Reply, Request
from tests.test_addon import _broken_upstream, http_client, post_messages


@pytest.fixture
def s(user: User, tmp_path: Path) -> Iterator[Stack]:
    with stack(user, tmp_path) as st:
        yield st


def test_an_answer_cut_short_is_a_502_in_the_apis_shape(s: Stack, tmp_path: Path) -> None:
    s.login_anthropic()
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n"
    _broken_upstream(s, tmp_path, head + b'{"id": "msg_1", "content": [' + b" " * 100)
    with s.proxy() as proxy, http_client(proxy) as client:
        resp = post_messages(client)
        proxy.wait_for("stream broke off")
    assert resp.status_code == 502
    error = resp.json()
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    assert "broke off" in error["error"]["message"]


def test_tokens_a_provider_echoes_never_reach_the_client(s: Stack) -> None:
    s.login_anthropic()
    seen: list[str] = []
    with s.proxy() as proxy, http_client(proxy) as client:
        key = {"x-api-key": "oauth:anthropic"}
        for status in (400, 401, 500):
            resp = client.post(f"https://api.anthropic.com/v1/echo/{status}", headers=key, json={})
            assert resp.status_code == status
            assert (
                resp.json()["error"]["message"] == "invalid authorization header: Bearer (redacted)"
            )
            assert resp.headers["x-echo-authorization"] == "Bearer (redacted)"
            seen += [resp.text, str(resp.headers)]
        url = "https://api.anthropic.com/v1/echo/200"
        with client.stream("POST", url, headers=key, json={}) as resp:
            assert resp.status_code == 200
            lines = [line for line in resp.iter_lines() if line]
            seen += [*lines, str(resp.headers)]
    assert lines == [
        "event: echo",
        'data: {"authorization": "Bearer (redacted)"}',
        "event: done",
        "data: {}",
    ]
    echoed = [c for c in s.api.calls if c.endpoint == "echo"]
    assert len(echoed) == 5, "the 401 was retried once on a refreshed token"
    tokens = {c.headers["authorization"].removeprefix("Bearer ") for c in echoed}
    assert len(tokens) == 2
    for token in tokens:
        assert not [text for text in seen if token in text]
        assert token not in proxy.output


def test_no_request_reaches_a_bucket_while_it_rests(
    s: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bucket a's first request gets a 401 and waits a second for its refresh; meanwhile the
    others get 429s (Retry-After: 2) and move to b. The refreshed request must go to b too."""
    s.configure('[providers.anthropic]\nstrategy = "failover"\nbuckets = ["a", "b"]\n')
    token_a, token_b = s.login_anthropic("a"), s.login_anthropic("b")
    s.api.fail_auth("anthropic", token=token_a)
    s.api.rate_limit("anthropic", token=token_a, times=100, seconds=2)
    answer = s.oauth.dispatch

    def slow_refresh(req: Request) -> Reply:
        if req.field("grant_type") == "refresh_token":
            time.sleep(1.0)
        return answer(req)

    monkeypatch.setattr(s.oauth, "dispatch", slow_refresh)
    with s.proxy() as proxy:

        def one(_: int) -> int:
            with http_client(proxy) as client:
                return post_messages(client).status_code

        with ThreadPoolExecutor(24) as pool:
            statuses = list(pool.map(one, range(24)))
    assert statuses == [200] * 24
    on_b = f"Bearer {token_b}"
    on_a = [a for a in s.api.attempts if a.authorization != on_b]
    limited = [a.at for a in on_a if a.status == 429]
    assert limited, "bucket a was never rate limited"
    # Allow for the 429's own trip back to the proxy: a request written before the proxy
    # read it cannot know. Everything later must wait for the rest to end.
    inside = [
        round(a.at - limited[0], 2) for a in on_a if any(t + 0.25 < a.at < t + 1.9 for t in limited)
    ]
    assert not inside, f"requests reached bucket a at these seconds after its first 429: {inside}"
