"""The shared store in a real redis-server (issue 18): entries encrypted with a key Redis
never sees, a wrong or missing key refused, one refresh across processes that share nothing
but Redis, a lease that outlives a killed holder, a stale holder that cannot overwrite its
successor, and a bounded wait when Redis is down."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from pydantic import SecretStr

from login.credential import Credential
from login.errors import CorruptEntry, StoreError
from login.store import redis_store
from login.store.redis_store import RedisStore, new_key
from tests.conftest import ROOT, User
from tests.fakes.oauth import FakeOAuth
from tests.redis_server import RedisServer
from tests.test_login import login_anthropic, status
from tests.test_refresh_race import CALLERS

TOKEN = "sk-ant-oat01-" + "t" * 40
REFRESH = "sk-ant-ort01-" + "r" * 40


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path) as s:
        yield s


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    value = new_key()
    monkeypatch.setenv("KEYSWAP_STORE_KEY", value)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setattr(redis_store, "_keyring_secret", lambda _user: None)
    return value


def cred(token: str = TOKEN, updated: float = 1.0) -> Credential:
    return Credential(
        provider="anthropic",
        bucket="work",
        access_token=SecretStr(token),
        refresh_token=SecretStr(REFRESH),
        expires_at=time.time() + 3600,
        account="someone@example.com",
        updated_at=updated,
    )


def everything_in(url: str) -> bytes:
    r = redis.Redis.from_url(url)
    out = b""
    for k in r.scan_iter("*"):
        kind = r.type(k)
        out += k + b"="
        if kind == b"string":
            out += r.get(k) or b""
        elif kind == b"set":
            out += b",".join(sorted(r.smembers(k)))
    return out


def test_entries_are_encrypted_and_listed(server: RedisServer, key: str) -> None:
    store = RedisStore(server.url)
    assert store.names() == []
    mark = store.changes()
    store.save(cred())
    assert store.changes() != mark
    assert store.names() == ["anthropic:work"]
    loaded = store.load("anthropic", "work")
    assert loaded is not None and loaded.token == TOKEN and loaded.refresh == REFRESH
    dump = everything_in(server.url)
    for secret in (TOKEN, REFRESH, "someone@example.com", key):
        assert secret.encode() not in dump
    assert store.delete("anthropic", "work") and store.names() == []
    assert store.load("anthropic", "work") is None


def test_a_wrong_or_missing_key_is_refused_never_plaintext(
    server: RedisServer, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    RedisStore(server.url).save(cred())
    monkeypatch.setenv("KEYSWAP_STORE_KEY", new_key())
    wrong = RedisStore(server.url)  # opening it waits for nothing; its first use says why
    with pytest.raises(StoreError, match="not the one the logins in Redis"):
        wrong.names()
    with pytest.raises(StoreError, match="not the one the logins in Redis"):
        wrong.load("anthropic", "work")
    monkeypatch.setenv("KEYSWAP_STORE_KEY", "short")
    with pytest.raises(StoreError, match="not a store key"):
        RedisStore(server.url)
    monkeypatch.delenv("KEYSWAP_STORE_KEY")
    with pytest.raises(StoreError, match="KEYSWAP_STORE_KEY"):
        RedisStore(server.url)


def test_redis_password_from_the_environment_never_in_messages(
    tmp_path: Path, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    password = "redis-pass-" + "p" * 20
    with RedisServer(tmp_path, "--requirepass", password) as locked:
        with pytest.raises(StoreError) as err:
            RedisStore(locked.url).names()
        assert "Redis at redis://127.0.0.1" in str(err.value)
        monkeypatch.setenv("KEYSWAP_REDIS_PASSWORD", password)
        store = RedisStore(locked.url)
        store.save(cred())
        assert store.names() == ["anthropic:work"]
        monkeypatch.delenv("KEYSWAP_REDIS_PASSWORD")
        in_url = locked.url.replace("redis://", f"redis://:{password}@")
        with_url = RedisStore(in_url)
        assert with_url.names() == ["anthropic:work"] and password not in with_url.where
        assert password not in str(err.value)


def test_a_damaged_entry_is_that_entrys_problem(server: RedisServer, key: str) -> None:
    store = RedisStore(server.url)
    store.save(cred())
    redis.Redis.from_url(server.url).set("keyswap:tok:anthropic:work", b"x" * 40)
    with pytest.raises(CorruptEntry, match="does not decrypt"):
        store.load("anthropic", "work")


def test_a_stale_lease_holder_cannot_overwrite_its_successor(server: RedisServer, key: str) -> None:
    first, second = RedisStore(server.url), RedisStore(server.url)  # two proxies

    async def go() -> None:
        async with first.lock("anthropic:work"):
            # The first holder stalls past its lease (it ran out; Redis let it go) ...
            redis.Redis.from_url(server.url).delete("keyswap:lock:anthropic:work")
            async with second.lock("anthropic:work"):
                second.save(cred("sk-ant-oat01-successor-" + "s" * 20, updated=3.0))
            # ... and wakes up with its older result: refused, the successor's stays.
            with pytest.raises(StoreError, match="a later refresh"):
                first.save(cred("sk-ant-oat01-stale-" + "o" * 20, updated=2.0))

    asyncio.run(go())
    kept = first.load("anthropic", "work")
    assert kept is not None and kept.token.startswith("sk-ant-oat01-successor-")


def test_the_lease_is_exclusive_and_waits_bounded_when_redis_is_down(
    server: RedisServer, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_store, "LOCK_WAIT", 1.0)
    a, b = RedisStore(server.url), RedisStore(server.url)

    async def held() -> None:
        async with a.lock("anthropic:work"):
            with pytest.raises(StoreError, match="another proxy holds it"):
                async with b.lock("anthropic:work"):
                    pass

    asyncio.run(held())
    server.stop()

    async def down() -> None:
        started = time.monotonic()
        with pytest.raises(StoreError, match="does not answer"):
            async with b.lock("anthropic:work"):
                pass
        assert time.monotonic() - started < 5

    asyncio.run(down())


# -- processes that share nothing but Redis ---------------------------------------------------


def machine(user: User, tmp_path: Path, name: str) -> dict[str, str]:
    """The environment of another machine: its own home and data dir (no file lock in
    common), the same Redis and store key."""
    home = tmp_path / name
    return {
        **user.env,
        "HOME": str(home),
        "XDG_DATA_HOME": str(home / "data"),
        "XDG_CACHE_HOME": str(home / "cache"),
    }


@pytest.fixture
def shared(user: User, server: RedisServer) -> User:
    user.env["KEYSWAP_STORE"] = server.url
    user.env["KEYSWAP_STORE_KEY"] = new_key()
    return user


def expire(user: User) -> None:
    code = (
        "import time; from login.store import open_store; s = open_store(); "
        "c = s.load('anthropic', 'default'); "
        "s.save(c.model_copy(update={'expires_at': time.time() - 1}))"
    )
    subprocess.run([sys.executable, "-c", code], env=user.env, cwd=ROOT, check=True)


def test_three_processes_refresh_a_rotating_token_once(
    shared: User, fake: FakeOAuth, tmp_path: Path
) -> None:
    shared.write_config(fake.config_toml("anthropic"))
    login_anthropic(shared, fake)
    [entry] = status(shared)
    assert entry["store"] == "redis" and entry["state"] == "valid", entry
    expire(shared)
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CALLERS, str(go), "100"],
            env=machine(shared, tmp_path, f"m{i}"),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    go.touch()
    outs = [p.communicate(timeout=90) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    assert fake.count("anthropic", "refresh") == 1
    [token] = fake.valid_access_tokens("anthropic")
    assert {out.strip() for out, _ in outs} == {hashlib.sha256(token.encode()).hexdigest()}


def test_a_killed_lease_holder_is_replaced_after_its_lease(
    shared: User, fake: FakeOAuth, tmp_path: Path
) -> None:
    shared.write_config(fake.config_toml("anthropic"))
    login_anthropic(shared, fake)
    expire(shared)
    token_path = urlsplit(fake.endpoints("anthropic")["token"]).path
    fake.stalls[token_path] = 30.0  # the holder's refresh hangs at the token endpoint
    go = tmp_path / "go"
    go.touch()
    holder = subprocess.Popen(
        [sys.executable, "-c", CALLERS, str(go), "100"],
        env=machine(shared, tmp_path, "holder"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    r = redis.Redis.from_url(shared.env["KEYSWAP_STORE"])
    deadline = time.monotonic() + 20
    while not r.exists("keyswap:lock:anthropic:default"):
        assert time.monotonic() < deadline, "the holder never took the lease"
        time.sleep(0.05)
    holder.kill()  # kill -9 mid-refresh: its request never reached the token endpoint
    holder.wait()
    del fake.stalls[token_path]
    started = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-c", CALLERS, str(go), "100"],
        env=machine(shared, tmp_path, "successor"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    waited = time.monotonic() - started
    assert waited < redis_store.LEASE + 10, waited  # after the lease, not forever
    assert fake.count("anthropic", "refresh") == 1  # the killed one was never handled
    [token] = fake.valid_access_tokens("anthropic")
    assert res.stdout.strip() == hashlib.sha256(token.encode()).hexdigest()


def test_logins_move_between_the_file_store_and_redis(
    user: User, fake: FakeOAuth, server: RedisServer
) -> None:
    user.write_config(fake.config_toml("anthropic"))
    login_anthropic(user, fake)
    login_anthropic(user, fake, "work")
    key = user.run("migrate", "--new-key")
    assert key.code == 0 and len(key.out.strip()) == 44
    user.env["KEYSWAP_STORE_KEY"] = key.out.strip()
    moved = user.run("migrate", "--to", server.url)
    assert moved.code == 0 and "moved 2 of 2 logins" in moved.err, moved.err
    assert [e["bucket"] for e in status(user)] == []  # gone from the file store
    user.env["KEYSWAP_STORE"] = server.url
    listed = status(user)
    assert [(e["bucket"], e["store"], e["state"]) for e in listed] == [
        ("default", "redis", "valid"),
        ("work", "redis", "valid"),
    ]
    again = user.run("migrate", "--to", server.url)
    assert again.code == 1 and "already" in again.err
    back = user.run("migrate", "--to", "file")
    assert back.code == 0 and "moved 2 of 2" in back.err
    assert status(user) == []
    user.env["KEYSWAP_STORE"] = "file"
    assert len(status(user)) == 2


def test_a_proxy_keeps_serving_while_redis_is_down_and_recovers(user: User, tmp_path: Path) -> None:
    """Valid tokens in memory keep working without Redis; a refresh, which needs the lease,
    fails with a clear 503 instead of refreshing unlocked; Redis back, service is back."""
    from tests.e2e import stack
    from tests.test_addon import http_client

    with RedisServer(tmp_path) as server, stack(user, tmp_path) as s:
        user.env["KEYSWAP_STORE"] = server.url
        user.env["KEYSWAP_STORE_KEY"] = new_key()
        s.login_anthropic("a")
        s.login_anthropic("b")
        expire_code = (
            "import time; from login.store import open_store; s = open_store(); "
            "c = s.load('anthropic', 'b'); "
            "s.save(c.model_copy(update={'expires_at': time.time() - 1}))"
        )
        subprocess.run([sys.executable, "-c", expire_code], env=user.env, cwd=ROOT, check=True)
        body = {"model": "m", "max_tokens": 5, "messages": []}
        url = "https://api.anthropic.com/v1/messages"
        with s.proxy() as proxy, http_client(proxy) as client:

            def ask(bucket: str) -> int:
                headers = {"x-api-key": f"oauth:anthropic:{bucket}"}
                return client.post(url, headers=headers, json=body).status_code

            assert ask("a") == 200
            server.stop()
            assert [ask("a") for _ in range(3)] == [200, 200, 200]
            failed = client.post(
                url, headers={"x-api-key": "oauth:anthropic:b"}, json=body, timeout=60
            )
            assert failed.status_code == 503, failed.text
            assert "no refresh lease" in failed.text and "does not answer" in failed.text
            assert failed.json()["type"] == "error"  # Anthropic's error shape
            assert s.oauth.count("anthropic", "refresh") == 0  # never without the lease
            proxy.wait_for("cannot read the token store: Redis at")
            server.start()
            assert ask("b") == 200
        assert s.oauth.count("anthropic", "refresh") == 1
        assert proxy.output.count("cannot read the token store") == 1  # one line, not one a second


def test_doctor_checks_the_redis_store(shared: User, server: RedisServer) -> None:
    res = shared.run("doctor", "--port", "9")  # no proxy there: the store is checked anyway
    assert f"token store: Redis at {server.url}, 0 logins" in res.out, res.out
    server.stop()
    res = shared.run("doctor", "--port", "9")
    assert "✘ token store: Redis at" in res.out and "start Redis at" in res.out, res.out
