"""Per-bucket model rules: rotation only picks buckets whose rules admit the model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import User
from tests.e2e import Stack, stack
from tests.test_addon import http_client

CHAT = "https://api.githubcopilot.com/chat/completions"
RULES = (
    '[providers.copilot.bucket.gpt]\nmodels = ["gpt-*"]\n'
    '[providers.copilot.bucket.claude]\nmodels = ["claude-*"]\nexclude_models = ["claude-opus-*"]\n'
)


@pytest.fixture
def s(user: User, tmp_path: Path) -> Iterator[Stack]:
    with stack(user, tmp_path) as st:
        yield st


def test_models_go_to_the_buckets_that_serve_them(s: Stack) -> None:
    gpt, claude = s.login_copilot("gpt"), s.login_copilot("claude")
    s.configure(RULES)

    def ask(client, model: str):
        body = {"model": model, "messages": [{"role": "user", "content": "x"}]}
        return client.post(CHAT, headers={"Authorization": "Bearer oauth:copilot"}, json=body)

    with s.proxy() as proxy, http_client(proxy) as client:
        for model in ("gpt-4.1", "claude-sonnet-4.5", "gpt-5", "claude-sonnet-4.5"):
            assert ask(client, model).status_code == 200
        refused = ask(client, "claude-opus-4.6")
        unknown = ask(client, "o3")
    used = [c.headers["authorization"].split()[-1] for c in s.api.calls]
    assert used == [gpt, claude, gpt, claude]
    for resp, model in ((refused, "claude-opus-4.6"), (unknown, "o3")):
        assert resp.status_code == 404
        message = resp.json()["error"]["message"]
        assert f"model '{model}'" in message
        assert (
            "gpt (models gpt-*)" in message
            and "claude (models claude-*; not claude-opus-*)" in message
        )
    assert len(s.api.calls) == 4, "refused requests never left"

    listed = {e["bucket"]: e for e in json.loads(s.user.run("status", "--json").out)}
    assert listed["gpt"]["models"] == ["gpt-*"]
    assert listed["claude"]["exclude_models"] == ["claude-opus-*"]
    assert "copilot:claude serves models claude-*; not claude-opus-*" in s.user.run("status").out
