"""Copilot's answers carry no usage: keyswap polls its usage endpoint (with the GitHub token,
never sent anywhere else) and keeps the premium allowance as a window."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import pytest

from login.providers import PROVIDERS
from tests.conftest import User
from tests.fakes.oauth import FakeOAuth
from tests.scripted_login import as_user, log_in, service


def test_copilot_usage_is_polled_into_a_premium_window(
    user: User, fake: FakeOAuth, monkeypatch: pytest.MonkeyPatch
) -> None:
    as_user(monkeypatch, user)
    user.write_config(fake.config_toml("copilot"))

    async def go() -> list[Any]:
        svc = service(fake, user)
        await log_in(svc, fake, "copilot", "default")
        windows = await svc.usage("copilot", "default")
        assert await svc.usage("copilot", "nobody") == []
        assert await svc.usage("anthropic", "default") == []  # no usage endpoint
        await svc.aclose()
        return windows

    windows = asyncio.run(go())
    assert [w.name for w in windows] == ["premium_interactions"]  # chat, completions unlimited
    premium = windows[0]
    assert abs(premium.used - 0.167) < 0.001
    reset = datetime.datetime(2099, 1, 1, tzinfo=datetime.UTC).timestamp()
    assert premium.resets_at == reset
    assert PROVIDERS["copilot"].usage_poll == 300.0
