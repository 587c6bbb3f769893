"""Three real mitmdump proxies, each with its own home and data dir, sharing one Redis store
(issue 18.3): a 429 one of them saw keeps the others off that bucket, and a conversation
keeps its account whichever proxy serves its next turn."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from login.store.redis_store import new_key
from tests.conftest import User
from tests.e2e import Stack, stack
from tests.proxy import Mitmdump, base_env
from tests.redis_server import RedisServer
from tests.test_addon import http_client

MESSAGES = "https://api.anthropic.com/v1/messages"


@pytest.fixture
def s(user: User, tmp_path: Path) -> Iterator[Stack]:
    with RedisServer(tmp_path) as server, stack(user, tmp_path) as st:
        user.env["KEYSWAP_STORE"] = server.url
        user.env["KEYSWAP_STORE_KEY"] = new_key()
        yield st


@contextmanager
def proxies(s: Stack, tmp_path: Path, count: int) -> Iterator[list[Mitmdump]]:
    """`count` proxies as on as many machines: nothing in common but Redis and the config."""
    with ExitStack() as started:
        out = []
        for i in range(count):
            home = tmp_path / f"machine{i}"
            env = {**base_env(s.user.env), "HOME": str(home)}
            env["XDG_DATA_HOME"] = str(home / "data")
            proxy = Mitmdump(
                home, env, "--set", f"keyswap_config={s.user.config}", upstream_ca=s.ca_pem
            )
            out.append(started.enter_context(proxy))
        for proxy in out:
            proxy.wait_for("sharing rests, quotas and conversations through", timeout=15)
        yield out


def ask(proxy: Mitmdump, session: str | None = None, turn: int = 0) -> int:
    body: dict[str, object] = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": f"turn {turn}"}],
    }
    if session:
        body["metadata"] = {"user_id": f"user_{'ab' * 32}_account__session_{session}"}
    with http_client(proxy) as client:
        resp = client.post(MESSAGES, headers={"x-api-key": "oauth:anthropic"}, json=body)
        return resp.status_code


def test_a_429_one_proxy_saw_keeps_the_others_off_that_bucket(s: Stack, tmp_path: Path) -> None:
    s.configure('[proxy]\nstrategy = "failover"\n[providers.anthropic]\nbuckets = ["a", "b"]\n')
    a, b = s.login_anthropic("a"), s.login_anthropic("b")
    with proxies(s, tmp_path, 3) as (one, two, three):
        s.api.rate_limit("anthropic", token=a, seconds=3600)
        assert ask(one) == 200  # a answered 429, b served
        seen = len(s.api.calls)
        time.sleep(1.0)
        assert [ask(two), ask(three), ask(two), ask(three)] == [200] * 4
    later = [c.headers.get("authorization") for c in s.api.calls[seen:]]
    assert later == [f"Bearer {b}"] * 4, "the other proxies tried the resting bucket"


def test_a_conversation_keeps_its_account_across_proxies(s: Stack, tmp_path: Path) -> None:
    s.configure('[providers.anthropic]\nbuckets = ["a", "b"]\n')  # sticky, the default
    tokens = {s.login_anthropic(name): name for name in ("a", "b")}
    sessions = [str(uuid.uuid4()) for _ in range(4)]
    with proxies(s, tmp_path, 3) as trio:
        for turn, proxy in enumerate(trio):
            # Each proxy sees the conversations in another order than the one before, so one
            # that did not know where they are would place some elsewhere.
            order = sessions if turn % 2 == 0 else sessions[::-1]
            for session in order:
                assert ask(proxy, session, turn) == 200
            time.sleep(0.5)
    placed = {session: {tokens[t] for t in s.api.accounts(session)} for session in sessions}
    assert all(len(buckets) == 1 for buckets in placed.values()), placed
    assert {b for buckets in placed.values() for b in buckets} == {"a", "b"}, "spread"
    assert all(len(s.api.accounts(session)) == 3 for session in sessions)


def test_three_proxies_refresh_an_expired_rotating_token_once(s: Stack, tmp_path: Path) -> None:
    """3 proxies × 100 concurrent requests on an expired, rotating token: one refresh at the
    provider between them, every request answered, and no token in Redis in plaintext."""
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    import redis

    from tests.conftest import ROOT

    s.login_anthropic()
    expire = (
        "import time; from login.store import open_store; s = open_store(); "
        "c = s.load('anthropic', 'default'); "
        "s.save(c.model_copy(update={'expires_at': time.time() - 1}))"
    )
    subprocess.run([sys.executable, "-c", expire], env=s.user.env, cwd=ROOT, check=True)
    before = s.oauth.count("anthropic", "refresh")
    with proxies(s, tmp_path, 3) as trio, ThreadPoolExecutor(60) as pool:
        statuses = list(pool.map(lambda i: ask(trio[i % 3]), range(300)))
    assert statuses == [200] * 300
    assert s.oauth.count("anthropic", "refresh") - before == 1
    everything = b""
    r = redis.Redis.from_url(s.user.env["KEYSWAP_STORE"])
    for key in r.scan_iter("*"):
        value = r.get(key) if r.type(key) == b"string" else b",".join(r.smembers(key))
        everything += key + b"=" + (value or b"")
    for secret in s.oauth.issued_secrets():
        assert secret.encode() not in everything
