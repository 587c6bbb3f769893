"""Real CLIs through keyswap, configured only with `python -m login env`'s output."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, User
from tests.e2e import Stack, stack
from tests.proxy import Mitmdump

CODEX = ROOT / ".ci" / "npm" / "node_modules" / ".bin" / "codex"
CLAUDE = ROOT / ".ci" / "npm" / "node_modules" / ".bin" / "claude"


def require(binary: Path, package: str) -> None:
    if binary.exists():
        return
    why = f"{package} is not installed (npm install --prefix .ci/npm {package})"
    if os.environ.get("KEYSWAP_REQUIRE_CLIS") == "1":
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture
def s(user: User, tmp_path: Path) -> Iterator[Stack]:
    with stack(user, tmp_path) as st:
        yield st


def env_from_login_env(s: Stack, proxy: Mitmdump) -> dict[str, str]:
    return login_env(s.user, proxy)


def login_env(user: User, proxy: Mitmdump) -> dict[str, str]:
    """The environment a user gets from `eval "$(keyswap env)"`, and nothing else
    from keyswap."""
    res = user.run("env", "--port", str(proxy.port), "--confdir", str(proxy.confdir))
    assert res.code == 0, res.err
    env = {"PATH": os.environ["PATH"], "HOME": user.env["HOME"], "LANG": "C.UTF-8"}
    for line in res.out.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = shlex.split(value)[0]
    return env


def run_cli(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """A real CLI run to its end; it must succeed."""
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_codex_cli_on_a_chatgpt_login(s: Stack, tmp_path: Path) -> None:
    require(CODEX, "@openai/codex")
    token = s.login_codex()
    work = tmp_path / "work"
    work.mkdir()
    with s.proxy() as proxy:
        env = {**env_from_login_env(s, proxy), "CODEX_API_KEY": "oauth:codex"}
        env["CODEX_HOME"] = str(tmp_path / "codex-home")
        Path(env["CODEX_HOME"]).mkdir()
        done = run_cli([str(CODEX), "exec", "--skip-git-repo-check", "say hi"], env, work)
    expected = s.api.text
    assert expected in done.stdout
    answered = [c for c in s.api.calls if c.method == "POST" and c.path.endswith("/responses")]
    assert answered, "the Responses call reached the Codex backend"
    call = answered[-1]
    assert call.headers["authorization"] == f"Bearer {token}"
    assert call.headers["chatgpt-account-id"] == s.oauth.codex_account_id
    assert token not in done.stdout + done.stderr


def test_claude_code_keeps_its_token_out_of_its_environment(s: Stack, tmp_path: Path) -> None:
    require(CLAUDE, "@anthropic-ai/claude-code")
    token = s.login_anthropic()
    with s.proxy() as proxy:
        env = {**env_from_login_env(s, proxy), "ANTHROPIC_API_KEY": "oauth:anthropic"}
        done = run_cli([str(CLAUDE), "-p", "say hi"], env, tmp_path)
    assert s.api.text in done.stdout
    [call] = [c for c in s.api.calls if c.path == "/v1/messages"]
    assert call.headers["authorization"] == f"Bearer {token}"
    assert "oauth-2025-04-20" in call.headers["anthropic-beta"].split(",")
    assert "x-api-key" not in call.headers
    assert token not in done.stdout + done.stderr


def test_claude_code_sessions_each_stay_on_one_account(s: Stack, tmp_path: Path) -> None:
    """Two Claude accounts: every request of a Claude Code session (its first prompt and
    each `--continue`) lands on one account, so its prompt cache is read; a new session may
    go to the other."""
    require(CLAUDE, "@anthropic-ai/claude-code")
    s.configure('[providers.anthropic]\nbuckets = ["a", "b"]\n')
    tokens = {s.login_anthropic(b): b for b in ("a", "b")}
    with s.proxy() as proxy:
        env = {**env_from_login_env(s, proxy), "ANTHROPIC_API_KEY": "oauth:anthropic"}
        for i, args in enumerate(([], ["--continue"], ["--continue"], [])):
            run_cli([str(CLAUDE), "-p", *args, f"prompt {i}"], env, tmp_path)
    sessions: dict[str, set[str]] = {}
    for served in s.api.served:
        if served.provider == "anthropic" and served.conversation:
            sessions.setdefault(served.conversation, set()).add(tokens[served.token])
    assert len(sessions) == 2, sessions  # the continued session, and the last new one
    assert all(len(buckets) == 1 for buckets in sessions.values()), sessions


SDK_SCRIPT = """
import sys, openai, anthropic, requests
from google import genai
openai_text = openai.OpenAI(api_key="oauth:copilot").chat.completions.create(
    model="gpt-4.1", messages=[{"role": "user", "content": "hi"}]
).choices[0].message.content
claude = anthropic.Anthropic(api_key="oauth:anthropic").messages.create(
    model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
)
plain = requests.post(
    "https://api.anthropic.com/v1/messages",
    headers={"x-api-key": "oauth:anthropic"},
    json={"model": "m", "max_tokens": 5, "messages": []},
)
google = genai.Client(api_key="oauth:gemini")  # kept: a dropped client closes its pool
gemini = google.models.generate_content(model="gemini-2.5-pro", contents="hi")
print(openai_text, claude.content[0].text, plain.status_code, gemini.text)
"""


def test_python_clients_and_curl_with_only_login_env(s: Stack) -> None:
    """The SDKs, requests and curl each find the proxy and trust it from `login env` alone."""
    copilot, anthropic_token = s.login_copilot(), s.login_anthropic()
    gemini = s.login_google("gemini")
    before = len(s.api.calls)  # the Google login's own Code Assist calls
    with s.proxy() as proxy:
        env = env_from_login_env(s, proxy)
        sdks = subprocess.run(
            [sys.executable, "-c", SDK_SCRIPT], env=env, capture_output=True, text=True, timeout=60
        )
        curl = subprocess.run(
            [
                "curl",
                "-sS",
                "https://api.githubcopilot.com/chat/completions",
                "-H",
                "Authorization: Bearer oauth:copilot",
                "-H",
                "content-type: application/json",
                "-d",
                '{"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}]}',
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert sdks.returncode == 0, sdks.stderr[-2000:]
    assert sdks.stdout.split() == ["01234", "01234", "200", "01234"]
    assert curl.returncode == 0, curl.stderr
    assert "01234" in curl.stdout
    used = [c.headers["authorization"].split()[-1] for c in s.api.calls[before:]]
    assert used == [copilot, anthropic_token, anthropic_token, gemini, copilot]


_ARCH = "arm64" if platform.machine() in ("aarch64", "arm64") else "x64"
NODE = ROOT / ".ci" / "npm" / "node_modules" / f"node-linux-{_ARCH}" / "bin" / "node"
NODE_FETCH = """
const r = await fetch("https://api.anthropic.com/v1/messages", {
  method: "POST",
  headers: {"x-api-key": "oauth:anthropic", "content-type": "application/json"},
  body: JSON.stringify({model: "m", max_tokens: 5, messages: []}),
});
console.log(r.status, (await r.json()).content[0].text);
"""


def test_node_fetch_with_only_login_env(s: Stack, tmp_path: Path) -> None:
    require(NODE, f"node-linux-{_ARCH}@22.21.1")
    token = s.login_anthropic()
    script = tmp_path / "fetch.mjs"
    script.write_text(NODE_FETCH)
    with s.proxy() as proxy:
        done = subprocess.run(
            [str(NODE), str(script)],
            env=env_from_login_env(s, proxy),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["200", "01234"]
    assert s.api.calls[-1].headers["authorization"] == f"Bearer {token}"
