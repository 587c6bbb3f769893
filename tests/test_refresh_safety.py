"""A rotated refresh token is never thrown away, odd expiries are clamped, and what a provider
echoes back of keyswap's secrets is redacted (issue 13, items 2, 6 and 9)."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import subprocess
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
import pytest

from login import cli
from login import tokens as tokens_module
from login.errors import KeyswapError, LoginError, NeedsLogin
from login.flows import device
from login.providers import PROVIDERS
from login.providers.base import LoginContext
from login.store import FileStore
from tests.conftest import User
from tests.fakes.oauth import FakeOAuth
from tests.scripted_login import ScriptedUI, as_user, log_in, seed, service

Json = dict[str, Any]
DAY = 86400.0


def run[T](coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 30))


class FullDisk(FileStore):
    """A file store whose writes fail like a full disk while `full` is set."""

    full = False

    def _write(self, name: str, data: bytes) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super()._write(name, data)


@pytest.fixture
def env(user: User, fake: FakeOAuth, monkeypatch: pytest.MonkeyPatch) -> User:
    as_user(monkeypatch, user)
    user.write_config(fake.config_toml())
    return user


def stored_refresh(provider: str = "anthropic", bucket: str = "default") -> str | None:
    cred = FileStore().load(provider, bucket)
    assert cred is not None
    return cred.refresh


def tamper(change: Callable[[Json], None], issued: list[str]) -> Callable[[str, Json], Any]:
    """A refresh answer with `change` applied; the refresh token the fake issued is noted."""

    def reply(_sent: str, answer: Json) -> tuple[int, Json]:
        issued.append(answer["refresh_token"])
        change(answer)
        return 200, answer

    return reply


def setter(key: str, value: object) -> Callable[[Json], None]:
    return lambda answer: answer.__setitem__(key, value)


def dropper(key: str) -> Callable[[Json], None]:
    return lambda answer: answer.pop(key, None)


# -- item 2: the rotated refresh token survives an odd answer ------------------------------


@pytest.mark.parametrize(
    "change",
    [
        setter("expires_in", "abc"),
        setter("expires_in", None),
        setter("expires_in", [3600]),
        setter("expires_in", 10**400),  # a JSON integer no float can hold
        setter("expires_in", True),
    ],
    ids=["abc", "null", "list", "huge-int", "true"],
)
def test_odd_refresh_answer_keeps_the_rotated_token(
    env: User, fake: FakeOAuth, change: Callable[[Json], None]
) -> None:
    async def go() -> None:
        svc = service(fake, env)
        await log_in(svc, fake, "anthropic", "default")
        issued: list[str] = []
        fake.refresh_reply = tamper(change, issued)
        cred = await svc.refresh("anthropic", "default")
        assert stored_refresh() == issued[-1] == cred.refresh
        left = (cred.expires_at or float("inf")) - time.time()
        assert 60 < left <= 30 * DAY, "a usable, bounded expiry whatever the answer said"
        fake.refresh_reply = None
        await svc.refresh("anthropic", "default")  # with the rotated token: it was kept
        await svc.aclose()

    run(go())


@pytest.mark.parametrize(
    ("value", "kept"),
    [(12345678901234567890, "12345678901234567890"), ({"not": "a token"}, None)],
    ids=["number", "object"],
)
def test_non_string_refresh_token_is_kept_or_ignored_never_stored_broken(
    env: User, fake: FakeOAuth, value: object, kept: str | None
) -> None:
    async def go() -> None:
        svc = service(fake, env)
        first = await log_in(svc, fake, "anthropic", "default")
        fake.refresh_reply = tamper(setter("refresh_token", value), [])
        await svc.refresh("anthropic", "default")
        # The store stays readable; a number is the token's text, anything else is no token
        # (the previous one is kept: there is nothing better).
        assert stored_refresh() == (kept or first.refresh)
        await svc.aclose()

    run(go())


def test_answer_without_access_token_still_keeps_the_new_refresh_token(
    env: User, fake: FakeOAuth
) -> None:
    async def go() -> None:
        svc = service(fake, env)
        await log_in(svc, fake, "anthropic", "default")
        issued: list[str] = []
        fake.refresh_reply = tamper(dropper("access_token"), issued)
        with pytest.raises(KeyswapError, match="no access token"):
            await svc.refresh("anthropic", "default")
        assert stored_refresh() == issued[-1]
        fake.refresh_reply = None
        access = await svc.access("anthropic", "default")  # refreshes again with the new one
        assert access.token in fake.valid_access_tokens("anthropic")
        # A 200 answer with neither token is a refusal (GitHub answers errors with 200).
        fake.refresh_reply = lambda _sent, _answer: (200, {"error": "invalid_grant"})
        with pytest.raises(NeedsLogin, match="invalid_grant"):
            await svc.refresh("anthropic", "default")
        await svc.aclose()

    run(go())


# -- item 2: a save that fails holds the new tokens and retries ---------------------------


def warnings_about_saving(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and "could not be saved" in r.getMessage()
    ]


def test_save_failure_keeps_serving_and_retries(
    env: User, fake: FakeOAuth, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tokens_module, "SAVE_RETRY", 0.0)
    store = FullDisk()

    async def go() -> None:
        svc = service(fake, env, store)
        first = await log_in(svc, fake, "anthropic", "default")
        store.full = True
        fresh = await svc.refresh("anthropic", "default")  # the disk is full: no exception
        assert fresh.refresh != first.refresh
        assert stored_refresh() == first.refresh, "nothing reached the disk"
        [line] = warnings_about_saving(caplog)
        assert "anthropic/default" in line and "No space left on device" in line
        # The API refuses the new access token: the refresh uses the held refresh token,
        # never the spent one on disk (the fake would call that reuse and end the login).
        again = await svc.refresh("anthropic", "default", force=False, rejected=fresh.token)
        assert again.token in fake.valid_access_tokens("anthropic")
        assert (await svc.access("anthropic", "default")).token == again.token
        assert len(warnings_about_saving(caplog)) == 1, "one line per problem, not per try"
        store.full = False
        await svc.access("anthropic", "default")  # the next access retries the save
        assert stored_refresh() == again.refresh
        await svc.aclose()
        # Another process (the CLI) now refreshes with what was saved.
        other = service(fake, env)
        await other.refresh("anthropic", "default")
        await other.aclose()

    run(go())


def test_held_tokens_are_saved_on_the_timer(
    env: User, fake: FakeOAuth, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tokens_module, "SAVE_RETRY", 0.0)
    store = FullDisk()

    async def go() -> None:
        svc = service(fake, env, store)
        await log_in(svc, fake, "anthropic", "default")
        store.full = True
        fresh = await svc.refresh("anthropic", "default")
        assert [e.state for e in svc.entries()] == ["valid"]
        assert "No space left on device" in (svc.entries()[0].detail or "")
        store.full = False
        await svc.save_held()  # what the proxy's maintenance loop calls every second
        assert stored_refresh() == fresh.refresh
        assert svc.entries()[0].detail is None
        await svc.aclose()

    run(go())


def test_a_newer_login_elsewhere_wins_over_held_tokens(
    env: User, fake: FakeOAuth, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tokens_module, "SAVE_RETRY", 0.0)
    store = FullDisk()

    async def go() -> None:
        svc = service(fake, env, store)
        await log_in(svc, fake, "anthropic", "default")
        store.full = True
        await svc.refresh("anthropic", "default")
        other = service(fake, env)
        newer = await log_in(other, fake, "anthropic", "default")  # `python -m login` again
        await other.aclose()
        store.full = False
        await svc.save_held()
        assert stored_refresh() == newer.refresh
        assert (await svc.access("anthropic", "default")).token == newer.token
        await svc.aclose()

    run(go())


def test_cli_names_the_login_and_the_reason_when_saving_fails(
    env: User,
    fake: FakeOAuth,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(tokens_module, "SETTLE_PAUSE", 0.0)
    seed(fake, env, ("anthropic", "default"))

    def full(self: FileStore, name: str, data: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(FileStore, "_write", full)
    code = cli.main(["refresh", "anthropic"])
    err = capsys.readouterr().err
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("✘ anthropic/default") and "No space left on device" in last
    assert "Traceback" not in err


def _mount_tmpfs(where: Path) -> bool:
    where.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(where)],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def test_a_really_full_disk(
    tmp_path: Path,
    user: User,
    fake: FakeOAuth,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk):
        pytest.skip("cannot mount a tmpfs here (needs root outside a restricted container)")
    try:
        monkeypatch.setattr(tokens_module, "SAVE_RETRY", 0.0)
        as_user(monkeypatch, user)
        monkeypatch.setenv("XDG_DATA_HOME", str(disk))
        user.write_config(fake.config_toml())

        async def go() -> None:
            svc = service(fake, user)
            await log_in(svc, fake, "anthropic", "default")
            filler = disk / "filler"
            with filler.open("wb") as fh:
                try:
                    while True:
                        fh.write(b"x" * 4096)
                        fh.flush()
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
            fresh = await svc.refresh("anthropic", "default")
            [line] = warnings_about_saving(caplog)
            assert "anthropic/default" in line and "No space left on device" in line
            filler.unlink()
            await svc.save_held()
            assert stored_refresh() == fresh.refresh
            await svc.aclose()

        run(go())
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False, timeout=10)


# -- item 6: odd expiries are clamped ------------------------------------------------------

# Per value: the lifetime keyswap should use, as a function of the provider.
FLOOR = "floor"  # refresh skew + one minute
DEFAULT = "default"  # the provider's documented default lifetime
CEILING = "ceiling"  # 30 days


def expected(provider: str, kind: str) -> float:
    p = PROVIDERS[provider]
    return {FLOOR: p.refresh_skew + 60, DEFAULT: p.default_lifetime, CEILING: 30 * DAY}[kind]


@pytest.mark.parametrize(
    ("value", "kind"),
    [(-30, FLOOR), (0, FLOOR), (None, DEFAULT), ("abc", DEFAULT), (1e12, CEILING)],
    ids=["-30", "0", "missing", "abc", "1e12"],
)
def test_odd_expires_in_is_clamped(env: User, fake: FakeOAuth, value: object, kind: str) -> None:
    change = dropper("expires_in") if value is None else setter("expires_in", value)

    async def go() -> None:
        svc = service(fake, env)
        await log_in(svc, fake, "anthropic", "default")
        fake.refresh_reply = tamper(change, [])
        cred = await svc.refresh("anthropic", "default")
        assert cred.expires_at is not None
        assert cred.expires_at - time.time() == pytest.approx(expected("anthropic", kind), abs=5)
        # Usable at once: the next requests do not refresh again.
        for _ in range(3):
            await svc.access("anthropic", "default")
        assert fake.count("anthropic", "refresh") == 1
        await svc.aclose()

    run(go())


@pytest.mark.parametrize(
    ("value", "kind"),
    [("-30", FLOOR), (0, FLOOR), (None, DEFAULT), ("abc", DEFAULT), (1e12, CEILING)],
    ids=["30s-ago", "0", "missing", "abc", "1e12"],
)
def test_odd_copilot_expires_at_is_clamped(
    env: User, fake: FakeOAuth, value: object, kind: str
) -> None:
    def change(answer: Json) -> None:
        if value is None:
            del answer["expires_at"]
        else:
            answer["expires_at"] = time.time() - 30 if value == "-30" else value

    async def go() -> None:
        svc = service(fake, env)
        fake.copilot_reply = lambda _sent, answer: (change(answer), (200, answer))[1]
        cred = await log_in(svc, fake, "copilot", "default")
        assert cred.expires_at is not None
        assert cred.expires_at - time.time() == pytest.approx(expected("copilot", kind), abs=5)
        for _ in range(3):
            await svc.access("copilot", "default")
        assert fake.count("copilot", "copilot_token") == 1
        await svc.aclose()

    run(go())


# -- item 9: what a provider echoes of keyswap's secrets is redacted -----------------------


def echo_refresh_token(sent: str, _answer: Json) -> tuple[int, Json]:
    return 400, {"error": "invalid_grant", "error_description": f"refresh token {sent} is invalid"}


def test_echoed_refresh_token_reaches_no_error_status_or_store(env: User, fake: FakeOAuth) -> None:
    seed(fake, env, ("anthropic", "default"))
    sent = stored_refresh()
    assert sent
    fake.refresh_reply = echo_refresh_token
    res = env.run("refresh", "anthropic")
    assert res.code == 1 and "invalid_grant" in res.err
    assert sent not in res.err + res.out
    listed = env.run("status", "--json")
    [entry] = json.loads(listed.out)
    assert (
        entry["state"] == "needs-login" and "refresh token (redacted) is invalid" in entry["detail"]
    )
    assert sent not in listed.out + listed.err
    text = env.run("status")
    assert sent not in text.out + text.err
    cred = FileStore().load("anthropic", "default")
    assert cred is not None and cred.needs_login and sent not in cred.needs_login


def test_status_redacts_a_detail_stored_by_an_older_version(env: User, fake: FakeOAuth) -> None:
    seed(fake, env, ("anthropic", "default"))
    store = FileStore()
    cred = store.load("anthropic", "default")
    assert cred is not None and cred.refresh
    old = f"refresh refused (refresh token {cred.refresh} is invalid: {cred.token})"
    store.save(cred.model_copy(update={"needs_login": old}))
    for args in (("status", "--json"), ("status",), ("refresh", "anthropic")):
        res = env.run(*args)
        shown = res.out + res.err
        assert "(redacted)" in shown, args
        assert cred.refresh not in shown and cred.token not in shown, args


def test_echoed_github_token_is_redacted_from_copilot_refusals(env: User, fake: FakeOAuth) -> None:
    async def go() -> None:
        svc = service(fake, env)
        cred = await log_in(svc, fake, "copilot", "default")
        github = cred.refresh
        assert github
        fake.copilot_reply = lambda sent, _answer: (401, {"message": f"Bad credentials: {sent}"})
        with pytest.raises(NeedsLogin) as caught:
            await svc.refresh("copilot", "default")
        assert "Bad credentials" in str(caught.value) and github not in str(caught.value)
        stored = FileStore().load("copilot", "default")
        assert stored is not None and github not in (stored.needs_login or "")
        await svc.aclose()

    run(go())


def mock_client(answer: Callable[[httpx.Request], httpx.Response]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(answer))


def test_device_flow_errors_do_not_quote_the_device_code() -> None:
    secret = "dc-" + "7" * 30
    code = device.DeviceCode(secret, "ABCD-EFGH", "https://example.com/device", 60, 0)

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            400, json={"error": "bad_code", "error_description": f"device code {secret} is bad"}
        )

    async def go() -> None:
        async with mock_client(answer) as client:
            with pytest.raises(LoginError) as caught:
                await device.poll_token(client, "https://example.com/token", "id", code)
        assert "bad_code" in str(caught.value) and secret not in str(caught.value)

    run(go())


def test_google_setup_errors_do_not_quote_the_token(fake: FakeOAuth) -> None:
    token = "ya29." + "a" * 40

    def answer(request: httpx.Request) -> httpx.Response:
        error = {"code": 403, "status": "PERMISSION_DENIED", "message": f"token {token} denied"}
        return httpx.Response(403, json={"error": error})

    async def go() -> None:
        async with mock_client(answer) as client:
            p = PROVIDERS["gemini"]
            ctx = LoginContext(client, p.endpoints, ScriptedUI(fake), "default")
            with pytest.raises(LoginError) as caught:
                await p.discover_project(ctx, token)  # type: ignore[attr-defined]
        assert "denied" in str(caught.value) and token not in str(caught.value)

    run(go())


def test_a_login_the_provider_revoked_stays_marked_until_a_new_login(
    env: User, fake: FakeOAuth
) -> None:
    """What the dispatch does when a provider's answer means the login is gone: stored as
    needing a new login (for every process, across restarts), unless a login replaced it."""

    async def go() -> None:
        svc = service(fake, env)
        await log_in(svc, fake, "anthropic", "default")
        old = (await svc.access("anthropic", "default")).token
        await svc.revoked("anthropic", "default", "not-the-current-token", "HTTP 403")
        assert (await svc.access("anthropic", "default")).token == old  # untouched
        await svc.revoked("anthropic", "default", old, "HTTP 403")
        with pytest.raises(NeedsLogin):
            await svc.access("anthropic", "default")
        await svc.aclose()
        later = service(fake, env)  # another process, or the proxy restarted
        assert [e.state for e in later.entries()] == ["needs-login"]
        with pytest.raises(NeedsLogin):
            await later.access("anthropic", "default")
        await log_in(later, fake, "anthropic", "default")
        assert (await later.access("anthropic", "default")).token
        await later.aclose()

    run(go())
