"""A running proxy picks up new logins and config edits, and keeps the last good config."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, User
from tests.e2e import Stack, stack
from tests.proxy import _LISTENING, MITMDUMP
from tests.test_addon import http_client

MESSAGES = "https://api.anthropic.com/v1/messages"
BODY = {"model": "m", "max_tokens": 5, "messages": []}


@pytest.fixture
def s(user: User, tmp_path: Path) -> Iterator[Stack]:
    with stack(user, tmp_path) as st:
        yield st


def eventually(check, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "did not happen in time"
        time.sleep(0.1)


def test_new_login_and_config_edits_while_running(s: Stack) -> None:
    headers = {"x-api-key": "oauth:anthropic"}
    with s.proxy() as proxy, http_client(proxy) as client:
        assert client.post(MESSAGES, headers=headers, json=BODY).status_code == 401
        token = s.login_anthropic("fresh")
        eventually(lambda: client.post(MESSAGES, headers=headers, json=BODY).status_code == 200)
        assert s.api.calls[-1].headers["authorization"] == f"Bearer {token}"

        good = s.user.config.read_text()
        s.user.write_config(good + '\n[proxy]\nstrategy = "sometimes"\n')
        proxy.wait_for("keeping the last good config")
        line = proxy.wait_for("proxy.strategy")
        assert str(s.user.config) in line
        assert client.post(MESSAGES, headers=headers, json=BODY).status_code == 200

        s.user.write_config(good + "\n[providers.anthropic]\nenabled = false\n")
        eventually(lambda: client.post(MESSAGES, headers=headers, json=BODY).status_code == 401)
        assert "disabled" in client.post(MESSAGES, headers=headers, json=BODY).text


def test_invalid_config_at_start_is_refused_with_file_key_and_reason(s: Stack) -> None:
    s.user.write_config('[proxy]\ncooldown = "soon"\n')
    done = subprocess.run(
        [
            MITMDUMP,
            "-s",
            str(ROOT / "addon/inject.py"),
            "--listen-port",
            "0",
            "--set",
            f"keyswap_config={s.user.config}",
            "--set",
            f"confdir={s.workdir}",
        ],
        env=s.user.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    [line] = [ln for ln in done.stdout.splitlines() if "keyswap:" in ln]
    assert str(s.user.config) in line and "proxy.cooldown" in line and "number" in line
    assert "Traceback" not in done.stdout


def test_python_m_addon_starts_mitmdump_with_keyswap(user: User, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "addon", "--listen-port", "0", "--set", f"confdir={tmp_path}"],
        env={**user.env, "PYTHONUNBUFFERED": "1"},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if _LISTENING.search(line):
                break
        text = "".join(seen)
        assert "Loading script" in text and "inject.py" in text
        assert "127.0.0.1:" in text, "listens on loopback only by default"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert (
        "--listen-host"
        in subprocess.run(
            [sys.executable, "-m", "addon", "--help"], capture_output=True, text=True, cwd=ROOT
        ).stdout
        + "--listen-host"
    )


def test_a_logout_elsewhere_stops_the_proxy_using_the_login(s: Stack) -> None:
    s.login_anthropic("work")
    headers = {"x-api-key": "oauth:anthropic:work"}
    with s.proxy() as proxy, http_client(proxy) as client:
        assert client.post(MESSAGES, headers=headers, json=BODY).status_code == 200
        assert s.user.run("logout", "anthropic", "work").code == 0
        eventually(lambda: client.post(MESSAGES, headers=headers, json=BODY).status_code == 401)


def test_a_new_login_into_a_held_bucket_is_used_within_a_second(s: Stack) -> None:
    """Logging in to a bucket the proxy holds (maybe as another account) replaces the token
    it has in memory, and what it knew of the old login's limits (issue 16.4)."""
    first = s.login_anthropic("work")
    headers = {"x-api-key": "oauth:anthropic:work"}
    with s.proxy() as proxy, http_client(proxy) as client:
        assert client.post(MESSAGES, headers=headers, json=BODY).status_code == 200
        s.api.rate_limit("anthropic", hint="retry-after", seconds=3600)
        assert client.post(MESSAGES, headers=headers, json=BODY).status_code == 429
        second = s.login_anthropic("work")
        assert second != first
        proxy.wait_for("anthropic/work: a new login, in use now", timeout=3)
        assert client.post(MESSAGES, headers=headers, json=BODY).status_code == 200
    used = [c.headers["authorization"] for c in s.api.calls if c.endpoint == "messages"]
    assert used[0] == used[1] == f"Bearer {first}" and used[-1] == f"Bearer {second}", used
