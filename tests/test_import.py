"""`keyswap import`: logins other tools already hold, read from files laid out as
those tools write them, checked against the fake OAuth servers and stored (issue 16.1)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Result, User
from tests.fakes.oauth import CLIENTS, FakeOAuth

APP = "Iv1.b507a08c87ecfe98"  # the Copilot app keyswap signs in with


def status(user: User) -> list[dict[str, Any]]:
    res = user.run("status", "--json")
    assert res.code == 0, res.err
    return list(json.loads(res.out))


def write(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data, indent=2))
    path.chmod(0o600)
    return path


def no_secrets(res: Result, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in res.out + res.err


def one_line(res: Result) -> str:
    lines = res.err.strip().splitlines()
    assert len(lines) == 1, res.err
    assert "Traceback" not in res.err
    return lines[0]


# -- the tools' files, as they write them ------------------------------------------------


def codex_auth(user: User, fake: FakeOAuth, home: Path | None = None) -> tuple[Path, dict]:
    """`$CODEX_HOME/auth.json` as codex-rs `login/src/auth/storage.rs` writes it."""
    tokens = fake.mint("codex")
    auth = {
        "OPENAI_API_KEY": None,
        "tokens": {
            "id_token": tokens["id_token"],
            "access_token": tokens["access_token"],
            "refresh_token": tokens["refresh_token"],
            "account_id": "acct_123",
        },
        "last_refresh": "2026-11-30T09:15:02.123456Z",
    }
    return write((home or user.home / ".codex") / "auth.json", auth), tokens


def claude_credentials(fake: FakeOAuth, config_dir: Path, *, expired: bool) -> dict:
    """`.credentials.json` as Claude Code writes it, and `.claude.json` beside it."""
    tokens = fake.mint("anthropic")
    expires = time.time() + (-3 * 3600 if expired else 28800)
    oauth = {
        "accessToken": tokens["access_token"],
        "refreshToken": tokens["refresh_token"],
        "expiresAt": int(expires * 1000),
        "scopes": ["user:inference", "user:profile", "user:sessions:claude_code"],
        "subscriptionType": "max",
    }
    write(config_dir / ".credentials.json", {"claudeAiOauth": oauth})
    write(config_dir / ".claude.json", {"oauthAccount": {"emailAddress": "claude@example.com"}})
    return tokens


def gemini_creds(user: User, fake: FakeOAuth) -> tuple[Path, dict]:
    """`~/.gemini/oauth_creds.json` as google-auth-library (Gemini CLI) writes it."""
    tokens = fake.mint("gemini")
    creds = {
        "access_token": tokens["access_token"],
        "scope": "https://www.googleapis.com/auth/cloud-platform openid",
        "token_type": "Bearer",
        "id_token": tokens["id_token"],
        "expiry_date": int((time.time() + 3599) * 1000),
        "refresh_token": tokens["refresh_token"],
    }
    return write(user.home / ".gemini" / "oauth_creds.json", creds), tokens


# -- codex: a rotating login changes owner -------------------------------------------------


def test_codex_import_takes_the_login_over(user: User, fake: FakeOAuth) -> None:
    user.write_config(fake.config_toml("codex"))
    path, tokens = codex_auth(user, fake)
    res = user.run("import", "codex", "--yes")
    assert res.code == 0, res.err
    no_secrets(res, tokens["access_token"], tokens["refresh_token"], tokens["id_token"])
    # The ownership was said before anything was done.
    assert f"from:     {path}" in res.out
    assert "owner:    keyswap alone" in res.out
    assert "Codex CLI will have to log in again at its next refresh (`codex login`)" in res.out
    assert "✓ Imported ChatGPT (Codex) as user@example.com" in res.err
    # Validated by one refresh, which spent the file's refresh token.
    assert fake.count("codex", "refresh") == 1
    assert tokens["refresh_token"] not in fake.unused_refresh_tokens("codex")
    [entry] = status(user)
    assert (entry["provider"], entry["bucket"], entry["state"]) == ("codex", "default", "valid")
    assert entry["account"] == "user@example.com"
    assert entry["imported_from"] == str(path)
    table = user.run("status")
    assert table.code == 0 and "imported" in table.out.splitlines()[0]
    # The rotated refresh token was stored: keyswap can refresh on its own.
    again = user.run("refresh", "codex")
    assert again.code == 0, again.err
    assert fake.count("codex", "refresh") == 2


def test_codex_home_is_honoured(user: User, fake: FakeOAuth) -> None:
    user.write_config(fake.config_toml("codex"))
    elsewhere = user.home / "work-codex"
    path, _ = codex_auth(user, fake, home=elsewhere)
    res = user.run("import", "codex", "work", "--yes", CODEX_HOME=str(elsewhere))
    assert res.code == 0, res.err
    assert str(path) in res.out
    assert [e["bucket"] for e in status(user)] == ["work"]


def test_dry_run_stores_nothing_and_contacts_nothing(user: User, fake: FakeOAuth) -> None:
    user.write_config(fake.config_toml("codex"))
    path, tokens = codex_auth(user, fake)
    res = user.run("import", "codex", "--dry-run")
    assert res.code == 0, res.err
    no_secrets(res, tokens["access_token"], tokens["refresh_token"])
    assert "ChatGPT (Codex)" in res.out and str(path) in res.out
    assert "into:     codex:default" in res.out
    assert "account:  user@example.com" in res.out
    assert "plan:     ChatGPT plus" in res.out
    assert "access:   expires in" in res.out
    assert "owner:    keyswap alone" in res.out
    assert "Dry run: nothing was stored and nothing was contacted." in res.out
    assert fake.calls == []
    assert status(user) == []
    assert tokens["refresh_token"] in fake.unused_refresh_tokens("codex")


def test_rotating_import_without_a_terminal_needs_yes(user: User, fake: FakeOAuth) -> None:
    user.write_config(fake.config_toml("codex"))
    codex_auth(user, fake)
    res = user.run("import", "codex")
    assert res.code == 1
    assert "owner:    keyswap alone" in res.out, "said before refusing"
    assert "--yes" in one_line(res)
    assert fake.calls == []
    assert status(user) == []


def test_dead_refresh_token_stores_nothing(user: User, fake: FakeOAuth) -> None:
    user.write_config(fake.config_toml("codex"))
    dead = "rt_" + "d" * 40
    path = write(
        user.home / ".codex" / "auth.json",
        {"OPENAI_API_KEY": None, "tokens": {"refresh_token": dead, "account_id": "acct_1"}},
    )
    res = user.run("import", "codex", "--yes")
    assert res.code == 1
    line = one_line(res)
    assert f"the Codex CLI login in {path} no longer works" in line
    assert "`codex login`" in line and "`keyswap login codex`" in line
    assert "nothing was stored" in line
    no_secrets(res, dead)
    assert status(user) == []


# -- what cannot be imported: one line each -------------------------------------------------


def test_missing_file_is_one_line(user: User, fake: FakeOAuth) -> None:
    user.write_config(fake.config_toml("codex"))
    res = user.run("import", "codex", "--yes")
    assert res.code == 1
    path = user.home / ".codex" / "auth.json"
    assert one_line(res) == (
        f"✘ no Codex CLI login found at {path} (log in with `codex login` or use "
        "`keyswap login codex`)"
    )


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"tokens": {"refresh_token": "rt_abcdefgh12345678",', "not valid JSON (line 1,"),
        (b"\xff\xfe\x00garbage", "not UTF-8 text"),
        ("[1, 2, 3]", "the file is not a JSON object"),
        ('{"tokens": {"access_token": "x"}}', "tokens.refresh_token is missing"),
        (
            '{"OPENAI_API_KEY": "sk-proj-abcdefgh12345678"}',
            "it holds an OpenAI API key, not a ChatGPT login",
        ),
    ],
)
def test_damaged_or_foreign_file_is_one_line(
    user: User, fake: FakeOAuth, content: str | bytes, problem: str
) -> None:
    user.write_config(fake.config_toml("codex"))
    path = user.home / ".codex" / "auth.json"
    path.parent.mkdir(parents=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    res = user.run("import", "codex", "--yes")
    assert res.code == 1
    line = one_line(res)
    assert str(path) in line and problem in line, line
    no_secrets(res, "rt_abcdefgh12345678", "sk-proj-abcdefgh12345678")
    assert fake.calls == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_is_one_line(user: User, fake: FakeOAuth) -> None:
    user.write_config(fake.config_toml("codex"))
    path, _ = codex_auth(user, fake)
    path.chmod(0)
    res = user.run("import", "codex", "--yes")
    assert res.code == 1
    assert one_line(res) == f"✘ cannot read {path}: permission denied"


def test_from_reads_another_file(user: User, fake: FakeOAuth) -> None:
    user.write_config(fake.config_toml("codex"))
    path, _ = codex_auth(user, fake, home=user.home / "backup")
    res = user.run("import", "codex", "--from", str(path), "--yes")
    assert res.code == 0, res.err
    assert status(user)[0]["imported_from"] == str(path)
    missing = user.run("import", "codex", "--from", str(user.home / "nope.json"))
    assert missing.code == 1 and f"at {user.home / 'nope.json'} (" in one_line(missing)


def test_a_provider_without_a_source_says_so(user: User) -> None:
    res = user.run("import", "antigravity")
    assert res.code == 1
    assert "knows no other tool's" in one_line(res)


# -- anthropic (Claude Code) -------------------------------------------------------------


def test_anthropic_import_with_an_expired_access_token(user: User, fake: FakeOAuth) -> None:
    user.write_config(fake.config_toml("anthropic"))
    config_dir = user.home / "claude-config"
    tokens = claude_credentials(fake, config_dir, expired=True)
    env = {"CLAUDE_CONFIG_DIR": str(config_dir)}
    dry = user.run("import", "anthropic", "--dry-run", **env)
    assert dry.code == 0, dry.err
    assert "access:   expired 3 h ago (keyswap refreshes it on import)" in dry.out
    assert "account:  claude@example.com" in dry.out and "plan:     Claude max" in dry.out
    assert "Claude Code will have to log in again" in dry.out
    res = user.run("import", "anthropic", "--yes", **env)
    assert res.code == 0, res.err
    no_secrets(res, tokens["access_token"], tokens["refresh_token"])
    [entry] = status(user)
    assert entry["state"] == "valid" and entry["account"] == "claude@example.com"
    assert entry["expires_in"] > 3600, "the refresh made it fresh"
    assert entry["imported_from"] == str(config_dir / ".credentials.json")
    assert fake.count("anthropic", "refresh") == 1


# -- gemini (Gemini CLI): not rotating, shared ------------------------------------------------


def test_gemini_import_is_shared(user: User, fake: FakeOAuth) -> None:
    user.write_config(fake.config_toml("gemini"))
    path, tokens = gemini_creds(user, fake)
    # Nothing changes hands and the bucket is free: no confirmation needed, even without --yes.
    res = user.run("import", "gemini")
    assert res.code == 0, res.err
    no_secrets(res, tokens["access_token"], tokens["refresh_token"], tokens["id_token"])
    assert "owner:    shared" in res.out
    assert "Gemini CLI and keyswap can both keep using this login" in res.out
    assert "✓ Code Assist project: proj-existing" in res.err
    [entry] = status(user)
    assert entry["provider"] == "gemini" and entry["account"] == "user@example.com"
    assert entry["state"] == "valid" and entry["imported_from"] == str(path)
    assert tokens["refresh_token"] in fake.unused_refresh_tokens("gemini"), "still the CLI's"


def test_replacing_a_stored_login_needs_yes(user: User, fake: FakeOAuth) -> None:
    user.write_config(fake.config_toml("gemini"))
    gemini_creds(user, fake)
    assert user.run("import", "gemini").code == 0
    fake.google_email = "other@example.com"
    gemini_creds(user, fake)  # the CLI logged in to another account since
    again = user.run("import", "gemini")
    assert again.code == 1
    assert "replaces: the login of user@example.com, stored as gemini:default now" in again.out
    assert "--yes" in one_line(again)
    assert status(user)[0]["account"] == "user@example.com", "not replaced"
    assert user.run("import", "gemini", "--yes").code == 0
    assert status(user)[0]["account"] == "other@example.com"


# -- copilot (editor plugins' apps.json / hosts.json) ------------------------------------------


def test_copilot_import_from_apps_json(user: User, fake: FakeOAuth) -> None:
    user.write_config(fake.config_toml("copilot"))
    mine = fake.mint("copilot", login="alice")["access_token"]
    other = fake.mint("copilot", login="bob")["access_token"]
    path = write(
        user.home / ".config" / "github-copilot" / "apps.json",
        {
            f"github.com:{APP}": {"user": "alice", "oauth_token": mine, "githubAppId": APP},
            "github.com:Iv1.0000000000000000": {
                "user": "bob",
                "oauth_token": other,
                "githubAppId": "Iv1.0000000000000000",
            },
        },
    )
    res = user.run("import", "copilot")
    assert res.code == 0, res.err
    no_secrets(res, mine, other)
    assert "owner:    shared" in res.out and f"from:     {path}" in res.out
    [entry] = status(user)
    assert (entry["account"], entry["state"]) == ("alice", "valid")
    assert fake.count("copilot", "copilot_token") == 1
    call = next(c for c in fake.calls if c.endpoint == "copilot_token")
    assert call.headers["authorization"] == f"token {mine}"


def test_copilot_several_accounts_ask_for_one(user: User, fake: FakeOAuth) -> None:
    user.write_config(fake.config_toml("copilot"))
    base = Path(user.env["XDG_CONFIG_HOME"]) / "github-copilot"
    alice = fake.mint("copilot", login="alice")["access_token"]
    bob = fake.mint("copilot", login="bob")["access_token"]
    write(base / "apps.json", {f"github.com:{APP}": {"user": "alice", "oauth_token": alice}})
    write(base / "hosts.json", {"github.com": {"user": "bob", "oauth_token": bob}})
    res = user.run("import", "copilot")
    assert res.code == 1
    line = one_line(res)
    assert "(alice, bob)" in line and "--account USER" in line
    picked = user.run("import", "copilot", "--account", "bob")
    assert picked.code == 0, picked.err
    assert status(user)[0]["account"] == "bob"
    assert status(user)[0]["imported_from"] == str(base / "hosts.json")


def test_copilot_file_without_keyswaps_app(user: User, fake: FakeOAuth) -> None:
    user.write_config(fake.config_toml("copilot"))
    path = write(
        user.home / ".config" / "github-copilot" / "apps.json",
        {"github.com:Iv1.0000000000000000": {"user": "bob", "oauth_token": "ghu_" + "b" * 36}},
    )
    res = user.run("import", "copilot")
    assert res.code == 1
    line = one_line(res)
    assert str(path) in line and APP in line
    assert "ghu_" not in line


# -- the original tool used the login again after the import -------------------------------


def codex_cli_refreshes(fake: FakeOAuth, path: Path, refresh_token: str) -> None:
    """What the Codex CLI does at its next refresh: redeem a refresh token at the token
    endpoint and write the answer to its auth.json."""
    resp = httpx.post(
        fake.endpoints("codex")["token"],
        json={
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": CLIENTS["codex"].client_id,
        },
    )
    assert resp.status_code == 200, resp.text
    tokens = resp.json()
    auth = json.loads(path.read_text())
    auth["tokens"] |= {k: tokens[k] for k in ("id_token", "access_token", "refresh_token")}
    write(path, auth)


def test_tool_refreshing_after_import_is_named(user: User, fake: FakeOAuth) -> None:
    user.write_config(fake.config_toml("codex"))
    path, _ = codex_auth(user, fake)
    assert user.run("import", "codex", "--yes").code == 0
    # The CLI refreshes the chain keyswap now holds: keyswap's refresh token becomes reused.
    [keyswaps] = fake.unused_refresh_tokens("codex")
    codex_cli_refreshes(fake, path, keyswaps)
    res = user.run("refresh", "codex")
    assert res.code == 1
    line = one_line(res)
    assert f"Codex CLI refreshed this login after it was imported ({path} changed)" in line
    assert "the login now belongs to it" in line
    assert "run `keyswap import codex` again or log in" in line
    [entry] = status(user)
    assert entry["state"] == "needs-login" and str(path) in entry["detail"]


def test_refused_refresh_with_an_unchanged_file_is_plain(user: User, fake: FakeOAuth) -> None:
    user.write_config(fake.config_toml("codex"))
    codex_auth(user, fake)
    assert user.run("import", "codex", "--yes").code == 0
    fake.revoke_refresh_tokens("codex")
    res = user.run("refresh", "codex")
    assert res.code == 1
    line = one_line(res)
    assert "refresh refused" in line and "after it was imported" not in line


def test_import_help_explains_sources_and_ownership(user: User) -> None:
    res = user.run("import", "--help")
    assert res.code == 0
    text = " ".join(res.out.split())
    for needed in ("auth.json", ".credentials.json", "oauth_creds.json", "apps.json"):
        assert needed in text
    for option in ("--from", "--dry-run", "--yes", "--account"):
        assert option in text
    assert "keyswap takes it over" in text and "(shared)" in text


def test_importing_the_same_file_again_does_nothing(user: User, fake: FakeOAuth) -> None:
    user.write_config(fake.config_toml("codex"))
    codex_auth(user, fake)
    assert user.run("import", "codex", "--yes").code == 0
    res = user.run("import", "codex", "--yes")
    assert res.code == 0, res.err
    assert "already holds this login" in res.err
    assert fake.count("codex", "refresh") == 1, "the spent token was not sent again"
    assert status(user)[0]["state"] == "valid"


@pytest.mark.parametrize(("answer", "imported"), [("n\n", False), ("y\n", True)])
def test_a_terminal_is_asked(user: User, fake: FakeOAuth, answer: str, imported: bool) -> None:
    import subprocess
    import sys

    from tests.conftest import OUTPUTS, ROOT

    user.write_config(fake.config_toml("codex"))
    codex_auth(user, fake)
    leader, follower = os.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "login", "import", "codex"],
            env=user.env,
            cwd=ROOT,
            stdin=follower,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        os.write(leader, answer.encode())
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(leader)
        os.close(follower)
    OUTPUTS.append(out + err)
    assert "owner:    keyswap alone" in out
    assert "Import it? [y/N]" in err
    assert proc.returncode == (0 if imported else 1), err
    assert len(status(user)) == (1 if imported else 0)
    assert fake.count("codex", "refresh") == (1 if imported else 0)


def test_imported_logins_serve_through_the_proxy_without_a_browser(
    user: User, tmp_path: Path
) -> None:
    """Issue 16's "done when": a machine where the Codex CLI and Claude Code are logged in;
    `import codex` and `import anthropic` (no browser), then both serve through a real
    mitmdump with the imported accounts."""
    from tests.e2e import stack
    from tests.test_addon import http_client

    with stack(user, tmp_path) as s:
        _, codex = codex_auth(user, s.oauth)
        claude = claude_credentials(s.oauth, user.home / ".claude", expired=False)
        for provider in ("codex", "anthropic"):
            res = user.run("import", provider, "--yes")
            assert res.code == 0, res.err
            assert "http" not in res.out + res.err.replace("https://", "")  # no browser step
        assert {e["provider"] for e in status(user)} == {"codex", "anthropic"}
        with s.proxy() as proxy, http_client(proxy) as client:
            claude_answer = client.post(
                "https://api.anthropic.com/v1/messages",
                headers={"x-api-key": "oauth:anthropic"},
                json={"model": "m", "max_tokens": 5, "messages": []},
            )
            codex_answer = client.post(
                "https://api.openai.com/v1/responses",
                headers={"Authorization": "Bearer oauth:codex"},
                json={"model": "gpt-5.4", "input": "hi"},
            )
        assert claude_answer.status_code == 200, claude_answer.text
        assert codex_answer.status_code == 200, codex_answer.text
        # The imported accounts served, with keyswap's own tokens (each import refreshed).
        used = {c.headers.get("authorization") for c in s.api.calls}
        assert f"Bearer {s.token('anthropic', 'default')}" in used
        assert f"Bearer {s.token('codex', 'default')}" in used
        for spent in (codex["refresh_token"], claude["refresh_token"]):
            assert spent not in s.stored("codex", "default").values()
