"""`enabled = true`: the first request that needs a provider starts its login inside the proxy."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import User
from tests.e2e import Stack, stack
from tests.test_addon import http_client

CHAT = "https://api.githubcopilot.com/chat/completions"
BODY = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "x"}]}


@pytest.fixture
def s(user: User, tmp_path: Path) -> Iterator[Stack]:
    with stack(user, tmp_path) as st:
        st.oauth.device_interval = 0.05
        yield st


def ask(proxy) -> tuple[int, str]:
    with http_client(proxy) as client:
        resp = client.post(CHAT, headers={"Authorization": "Bearer oauth:copilot"}, json=BODY)
        return resp.status_code, resp.text


def test_waiting_requests_share_one_login_and_are_served(s: Stack) -> None:
    s.configure("[providers.copilot]\nenabled = true\n")
    with s.proxy() as proxy, ThreadPoolExecutor(3) as pool:
        waiting = [pool.submit(ask, proxy) for _ in range(3)]
        code = s.oauth.github_approve(timeout=20)
        results = [w.result(timeout=30) for w in waiting]
        line = proxy.wait_for("a request needs GitHub Copilot")
    assert code in line, "the code is printed on the proxy's console"
    assert [status for status, _ in results] == [200, 200, 200], results
    assert s.oauth.count("copilot", "device_code") == 1, "one flow for all three"
    token = s.token("copilot", "default")
    assert [c.headers["authorization"] for c in s.api.calls] == [f"Bearer {token}"] * 3


def test_the_wait_times_out_cleanly(s: Stack) -> None:
    s.configure("[providers.copilot]\nenabled = true\n[proxy]\nlogin_wait = 1\n")
    with s.proxy() as proxy:
        status, text = ask(proxy)
    assert status == 401
    assert "did not complete within 1 s" in text and "keyswap page" in text
    assert s.api.calls == []


def test_disabled_provider_is_refused_without_any_login(s: Stack) -> None:
    s.configure("[providers.copilot]\nenabled = false\n")
    with s.proxy() as proxy:
        status, text = ask(proxy)
    assert status == 401 and "oauth for copilot is disabled" in text
    assert s.oauth.calls == [] and s.api.calls == []


def test_without_enable_there_is_no_login_in_the_proxy(s: Stack) -> None:
    with s.proxy() as proxy:
        status, text = ask(proxy)
    assert status == 401 and "keyswap login copilot" in text
    assert s.oauth.count("copilot", "device_code") == 0
