"""Logins done in-process against the fake, for tests that need a stored login fast (no CLI
subprocess) and then poke at the token service or the store directly."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from login.config import load_config
from login.credential import Credential
from login.store import FileStore, Store
from login.tokens import TokenService
from tests.conftest import User
from tests.fakes.oauth import FakeOAuth


class ScriptedUI:
    """Approves a device code at the fake, or visits the authorize URL and pastes the
    `code#state` the fake's page shows (Anthropic's flow)."""

    def __init__(self, fake: FakeOAuth) -> None:
        self.fake = fake
        self.url = ""

    def step(self, line: str) -> None:
        pass

    async def device_code(self, user_code: str, verification_uri: str) -> None:
        await asyncio.to_thread(self.fake.github_approve, user_code)

    def authorize_url(self, url: str, title: str, listening: bool) -> None:
        self.url = url

    async def pasted(self) -> AsyncIterator[str]:
        async with httpx.AsyncClient() as client:
            redirect = await client.get(self.url)
            page = await client.get(redirect.headers["location"])
        found = re.search(r'<code id="auth-code">([^<]+)</code>', page.text)
        assert found is not None, page.text
        yield found.group(1)


def as_user(monkeypatch: pytest.MonkeyPatch, user: User) -> None:
    """This process sees the same store, locks and config as `user`'s CLI runs."""
    for key in ("HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "KEYSWAP_STORE", "KEYSWAP_CONFIG"):
        monkeypatch.setenv(key, user.env[key])


def service(fake: FakeOAuth, user: User, store: Store | None = None) -> TokenService:
    if not user.config.read_text():
        user.write_config(fake.config_toml())
    return TokenService(load_config(user.config), store=store or FileStore())


async def log_in(svc: TokenService, fake: FakeOAuth, provider: str, bucket: str) -> Credential:
    fake.device_interval = 0.05
    return await svc.login(provider, bucket, ScriptedUI(fake), timeout=20)


def seed(fake: FakeOAuth, user: User, *logins: tuple[str, str]) -> None:
    """Log in to each (provider, bucket) and store it, as `python -m login` would."""

    async def go() -> None:
        svc = service(fake, user)
        try:
            for provider, bucket in logins:
                await log_in(svc, fake, provider, bucket)
        finally:
            await svc.aclose()

    asyncio.run(go())


def token_file(user: User, provider: str, bucket: str) -> Path:
    return user.data_dir / "tokens" / provider / f"{bucket}.tok"


def expire_stored(user: User, provider: str, bucket: str) -> None:
    """Make a stored login's access token expired, as time would (keyswap keeps any fresh
    token for at least a minute past its refresh skew, so a short-lived login cannot)."""
    with pytest.MonkeyPatch.context() as patch:
        as_user(patch, user)
        store = FileStore()
        cred = store.load(provider, bucket)
        assert cred is not None
        store.save(cred.model_copy(update={"expires_at": time.time() - 1}))
