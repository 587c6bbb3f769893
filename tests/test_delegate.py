"""With the proxy running, `python -m login <auth-code provider>` hands the flow to it, so the
CLI and the status page share one callback listener."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import User
from tests.e2e import Stack, stack

URL = re.compile(r"https?://\S+")


@pytest.fixture
def s(user: User, tmp_path: Path) -> Iterator[Stack]:
    with stack(user, tmp_path) as st:
        yield st


def test_cli_login_goes_through_the_running_proxy(s: Stack) -> None:
    with s.proxy() as proxy:
        secret = s.user.data_dir / "manage.secret"
        deadline = time.monotonic() + 10
        while not secret.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        proc = s.user.start("codex", "work", "--no-browser", HTTPS_PROXY=proxy.url)
        proc.wait_for("running keyswap proxy handles this sign-in")
        url = URL.search(proc.wait_for(s.oauth.base_url)).group(0)
        # The redirect goes to the proxy's own listener: the CLI binds no port.
        redirect = httpx.URL(url).params["redirect_uri"]
        assert redirect == f"http://localhost:{s.codex_port}/auth/callback"
        callback = httpx.get(url, follow_redirects=False).headers["location"]
        assert httpx.get(callback.replace("localhost", "127.0.0.1")).status_code == 200
        res = proc.finish()
    assert res.code == 0, res.err
    assert "as user@example.com (through the running proxy)" in res.err
    assert [e["bucket"] for e in json.loads(s.user.run("status", "--json").out)] == ["work"]
