"""Each door of the threat model (SECURITY.md), tried in the real proxy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import User
from tests.e2e import Stack, stack
from tests.test_addon import http_client

MESSAGES = "https://api.anthropic.com/v1/messages"
BODY = {"model": "m", "max_tokens": 5, "messages": []}

# What Chromium sends for a page's cross-site fetch, and for an <img> on another site.
CROSS_SITE_FETCH = {
    "origin": "https://evil.example",
    "sec-fetch-site": "cross-site",
    "sec-fetch-mode": "cors",
    "sec-fetch-dest": "empty",
    "referer": "https://evil.example/",
}
IMAGE_LOAD = {
    "sec-fetch-site": "cross-site",
    "sec-fetch-mode": "no-cors",
    "sec-fetch-dest": "image",
    "referer": "https://evil.example/page.html",
}
TYPED_URL = {"sec-fetch-site": "none", "sec-fetch-mode": "navigate", "sec-fetch-dest": "document"}


@pytest.fixture
def s(user: User, tmp_path: Path) -> Iterator[Stack]:
    with stack(user, tmp_path) as st:
        yield st


def test_web_pages_get_no_token(s: Stack) -> None:
    s.login_anthropic()
    s.login_google("gemini")
    before = len(s.api.calls)
    image = (
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-pro:generateContent"
        "?key=oauth:gemini"
    )
    with s.proxy() as proxy, http_client(proxy) as client:
        fetch = client.post(
            MESSAGES, headers={"x-api-key": "oauth:anthropic", **CROSS_SITE_FETCH}, json=BODY
        )
        img = client.get(image, headers=IMAGE_LOAD)
        form = client.post(
            MESSAGES,
            headers={"x-api-key": "oauth:anthropic", "origin": "null"},
            content=b"a=b",
        )
    assert fetch.status_code == 403 and "evil.example" in fetch.text
    assert img.status_code == 403 and img.json()["error"]["status"] == "PERMISSION_DENIED"
    assert form.status_code == 403
    assert len(s.api.calls) == before, "nothing reached the provider"


def test_allowed_origin_and_typed_urls_are_served(s: Stack) -> None:
    token = s.login_anthropic()
    s.configure('[proxy]\nallow_origins = ["https://my.app"]\n')
    with s.proxy() as proxy, http_client(proxy) as client:
        mine = client.post(
            MESSAGES,
            headers={
                **CROSS_SITE_FETCH,
                "origin": "https://my.app",
                "x-api-key": "oauth:anthropic",
            },
            json=BODY,
        )
        typed = client.post(
            MESSAGES, headers={**TYPED_URL, "x-api-key": "oauth:anthropic"}, json=BODY
        )
    assert mine.status_code == 200 and typed.status_code == 200
    assert s.api.calls[-1].headers["authorization"] == f"Bearer {token}"


def test_clients_of_a_shared_proxy_need_their_own_secret(s: Stack, tmp_path: Path) -> None:
    token_a, token_b = s.login_anthropic("a"), s.login_anthropic("b")
    secret_a, secret_b = "sandbox-a-" + "x" * 16, "sandbox-b-" + "y" * 16
    s.configure(
        f'[clients.a]\nsecret = "{secret_a}"\nallow = ["anthropic:a"]\n'
        f'[clients.b]\nsecret = "{secret_b}"\nallow = ["anthropic:b"]\n'
    )
    dump = tmp_path / "flows.mitm"

    def ask(client, key: str):
        return client.post(MESSAGES, headers={"x-api-key": key}, json=BODY)

    with s.proxy("-w", str(dump), "--set", "flow_detail=4") as proxy, http_client(proxy) as c:
        none = ask(c, "oauth:anthropic")
        wrong = ask(c, "oauth:anthropic#not-a-known-secret")
        a = ask(c, f"oauth:anthropic#{secret_a}")
        b = ask(c, f"oauth:anthropic#{secret_b}")
        a_on_b = ask(c, f"oauth:anthropic:b#{secret_a}")
        proxy.wait_for("<redacted>")
    assert none.status_code == 401 and "client secret" in none.text
    assert wrong.status_code == 401
    assert a.status_code == 200 and b.status_code == 200
    assert a_on_b.status_code == 403
    used = [c.headers["authorization"].split()[-1] for c in s.api.calls]
    assert used == [token_a, token_b], "each client only on its own bucket"
    for secret in (secret_a, secret_b):
        assert secret not in proxy.output
        assert secret.encode() not in dump.read_bytes()
