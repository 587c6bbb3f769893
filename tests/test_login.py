"""`python -m login` against fake providers, driven as a subprocess like a user would."""

from __future__ import annotations

import json
import re
import socket
import stat
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import ROOT, User, free_port
from tests.fakes.oauth import FakeOAuth

URL = re.compile(r"https?://\S+")


def status(user: User) -> list[dict[str, object]]:
    res = user.run("status", "--json")
    assert res.code == 0, res.err
    return list(json.loads(res.out))


def visit(url: str) -> str:
    """What a browser does at the authorize page: the fake approves and redirects."""
    resp = httpx.get(url, follow_redirects=False)
    assert resp.status_code == 302, resp.text
    return resp.headers["location"]


def authorize_url(proc, fake: FakeOAuth) -> str:
    line = proc.wait_for(fake.base_url)
    return URL.search(line).group(0)


# -- Copilot: device code ------------------------------------------------------------------


def test_copilot_device_login(user: User, fake: FakeOAuth) -> None:
    fake.device_interval = 0.2
    user.write_config(fake.config_toml("copilot"))
    proc = user.start("copilot")
    line = proc.wait_for("one-time code")
    code = line.rsplit(" ", 1)[-1]
    assert re.fullmatch(r"[A-Z0-9]{4}-[A-Z0-9]{4}", code)
    proc.wait_for("Waiting for authorization")
    fake.github_approve(code, login="octocat")
    res = proc.finish()
    assert res.code == 0, res.err
    assert "Logged in to GitHub Copilot as octocat" in res.err
    [entry] = status(user)
    assert (entry["provider"], entry["bucket"], entry["account"], entry["state"]) == (
        "copilot",
        "default",
        "octocat",
        "valid",
    )
    assert fake.count("copilot", "copilot_token") == 1
    # The GitHub token was sent as `token <gho>` with editor headers, and never printed.
    call = next(c for c in fake.calls if c.endpoint == "copilot_token")
    gho = call.headers["authorization"].split()[-1]
    assert gho not in res.err + res.out


def test_device_slow_down_adds_five_seconds(user: User, fake: FakeOAuth) -> None:
    fake.device_interval = 0.2
    fake.slow_down_once = True
    user.write_config(fake.config_toml("copilot"))
    proc = user.start("copilot", "work")
    code = proc.wait_for("one-time code").rsplit(" ", 1)[-1]
    # Approve only after the client has been told to slow down.
    deadline = time.monotonic() + 10
    while fake.count("copilot", "token") < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    first = time.monotonic()
    fake.github_approve(code)
    res = proc.finish(timeout=30)
    assert res.code == 0, res.err
    polls = [c for c in fake.calls if c.provider == "copilot" and c.endpoint == "token"]
    assert len(polls) == 2, "one slow_down answer, then success on the next poll"
    assert time.monotonic() - first >= 5.0, "the next poll waited interval + 5 s"
    assert [e["bucket"] for e in status(user)] == ["work"]


@pytest.mark.parametrize(
    ("action", "message"),
    [("github_deny", "denied"), ("github_expire", "expired")],
)
def test_device_denied_or_expired_stores_nothing(
    user: User, fake: FakeOAuth, action: str, message: str
) -> None:
    fake.device_interval = 0.2
    user.write_config(fake.config_toml("copilot"))
    proc = user.start("copilot")
    code = proc.wait_for("one-time code").rsplit(" ", 1)[-1]
    getattr(fake, action)(code)
    res = proc.finish()
    assert res.code == 1
    last = res.err.strip().splitlines()[-1]
    assert last.startswith("✘") and message in last
    assert "Traceback" not in res.err
    assert status(user) == []


# -- Codex: auth code + PKCE on a loopback callback ---------------------------------------


def codex_config(user: User, fake: FakeOAuth, port: int) -> None:
    user.write_config(
        fake.config_toml("codex") + f'redirect_uri = "http://localhost:{port}/auth/callback"\n'
    )


def test_codex_login_via_callback(user: User, fake: FakeOAuth) -> None:
    port = free_port()
    codex_config(user, fake, port)
    proc = user.start("codex", "--no-browser")
    url = authorize_url(proc, fake)
    params = httpx.URL(url).params
    assert params["code_challenge_method"] == "S256"
    assert params["redirect_uri"] == f"http://localhost:{port}/auth/callback"
    # A forged callback with the wrong state is refused; the real one still works after it.
    forged = httpx.get(f"http://127.0.0.1:{port}/auth/callback?code=evil&state=wrong")
    assert forged.status_code == 400
    callback = visit(url).replace("localhost", "127.0.0.1")
    assert httpx.get(callback).status_code == 200
    res = proc.finish()
    assert res.code == 0, res.err
    with pytest.raises(httpx.ConnectError):
        httpx.get(callback)  # a replayed callback finds nothing listening
    assert "as user@example.com" in res.err
    [entry] = status(user)
    assert entry["state"] == "valid" and entry["account"] == "user@example.com"


def test_codex_login_via_pasted_redirect(user: User, fake: FakeOAuth) -> None:
    port = free_port()
    codex_config(user, fake, port)
    proc = user.start("codex", "--no-browser")
    callback = visit(authorize_url(proc, fake))
    proc.send("not a code\n")
    proc.send(callback + "\n")
    res = proc.finish()
    assert res.code == 0, res.err
    assert "not a code or redirect URL" in res.err
    assert status(user)[0]["account"] == "user@example.com"


def test_codex_consent_denied(user: User, fake: FakeOAuth) -> None:
    fake.deny_consent = True
    port = free_port()
    codex_config(user, fake, port)
    proc = user.start("codex", "--no-browser")
    callback = visit(authorize_url(proc, fake))
    httpx.get(callback.replace("localhost", "127.0.0.1"))
    res = proc.finish()
    assert res.code == 1 and "denied" in res.err.splitlines()[-1]
    assert status(user) == []


def busy_port() -> socket.socket:
    """A listening socket on a loopback port, as another program holding it would."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    return busy


def test_callback_port_in_use_is_a_clear_error(user: User, fake: FakeOAuth) -> None:
    # Without --no-browser nothing says a code will be pasted: the login stops and says how.
    with busy_port() as busy:
        port = busy.getsockname()[1]
        user.write_config(
            fake.config_toml("gemini")
            + f'redirect_uri = "http://127.0.0.1:{port}/oauth2callback"\n'
        )
        res = user.run("gemini", timeout=20)
    assert res.code == 1
    [line] = res.err.strip().splitlines()
    assert f"port {port}" in line and "in use" in line and "--no-browser" in line
    assert "Traceback" not in res.err


def test_callback_port_in_use_with_no_browser_goes_on_by_paste(user: User, fake: FakeOAuth) -> None:
    with busy_port() as busy:
        port = busy.getsockname()[1]
        codex_config(user, fake, port)
        proc = user.start("codex", "--no-browser")
        line = proc.wait_for("in use")
        assert f"port {port}" in line and "paste" in line
        callback = visit(authorize_url(proc, fake))
        assert callback.startswith(f"http://localhost:{port}/auth/callback?")
        proc.send(callback + "\n")
        res = proc.finish()
    assert res.code == 0, res.err
    assert "run with --no-browser" not in res.err
    assert status(user)[0]["account"] == "user@example.com"


# -- Codex: device code (docs/providers.md §2.1) -------------------------------------------


def stored_extra(user: User, provider: str, bucket: str = "default") -> dict[str, str]:
    """What the stored login keeps beside its tokens (account id, plan)."""
    code = (
        "import json, sys; from login.config import load_config; "
        "from login.tokens import TokenService; "
        "c = TokenService(load_config()).store.load(sys.argv[1], sys.argv[2]); "
        "print(json.dumps(c.extra))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, provider, bucket],
        env=user.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    extra: dict[str, str] = json.loads(done.stdout)
    return extra


def device_secrets(fake: FakeOAuth) -> set[str]:
    """The device-flow values that must never be printed: every device id asked for, and
    every authorization code and verifier handed out."""
    sent = {c.body["device_auth_id"] for c in fake.calls if c.endpoint == "device_token"}
    handed = {v for a in fake.codex_device_answers for v in a.values()}
    return {str(v) for v in sent | handed}


@pytest.mark.parametrize(("pending", "args"), [(403, ["--device"]), (404, [])])
def test_codex_device_login(user: User, fake: FakeOAuth, pending: int, args: list[str]) -> None:
    """--device, or (without it) no browser and a stdin that is no terminal: the code is
    shown, polls get 403 or 404 until it is approved, then the code is exchanged."""
    fake.codex_device_pending = pending
    user.write_config(fake.config_toml("codex"))
    proc = user.start("codex", *args)
    if not args:
        proc.wait_for("signing in with a device code")
    code = proc.wait_for("one-time code").rsplit(" ", 1)[-1]
    proc.wait_for(fake.endpoints("codex")["device_verification"])
    deadline = time.monotonic() + 10
    while fake.count("codex", "device_token") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    fake.codex_device_approve(code)
    res = proc.finish()
    assert res.code == 0, res.err
    assert "Logged in to ChatGPT (Codex) as user@example.com" in res.err
    [entry] = status(user)
    assert (entry["provider"], entry["account"], entry["state"]) == (
        "codex",
        "user@example.com",
        "valid",
    )
    assert stored_extra(user, "codex")["account_id"] == "acct_123"
    [ask] = [c for c in fake.calls if c.endpoint == "device_usercode"]
    assert ask.body == {"client_id": "app_EMoamEEZ73f0CkXaXp7hrann"}
    polls = [c for c in fake.calls if c.endpoint == "device_token"]
    assert len(polls) >= 3 and set(polls[0].body or {}) == {"device_auth_id", "user_code"}
    [exchange] = [c for c in fake.calls if c.provider == "codex" and c.endpoint == "token"]
    assert exchange.body is not None
    assert exchange.body["redirect_uri"] == fake.endpoints("codex")["device_redirect_uri"]
    assert exchange.body["grant_type"] == "authorization_code"
    assert not [s for s in device_secrets(fake) if s in res.err + res.out]


def test_codex_device_login_not_enabled(user: User, fake: FakeOAuth) -> None:
    fake.codex_device_enabled = False
    user.write_config(fake.config_toml("codex"))
    res = user.run("codex", "--device", timeout=20)
    assert res.code == 1
    [line] = res.err.strip().splitlines()
    assert line.startswith("✘ device code sign-in is not enabled")
    assert "device code authorization for Codex" in line and "Settings → Security" in line
    assert status(user) == []


def test_codex_device_code_not_approved_in_time(user: User, fake: FakeOAuth) -> None:
    # The fake forgets the code after 1 s (its polls then get 404, still "not yet" to the
    # client); the client's own limit, here --timeout 3 instead of 15 minutes, ends it.
    fake.codex_device_expires_in = 1
    user.write_config(fake.config_toml("codex"))
    res = user.run("codex", "--device", "--timeout", "3", timeout=30)
    assert res.code == 1
    last = res.err.strip().splitlines()[-1]
    assert last == "✘ the device code was not approved within 3 s; run the login again"
    assert "Traceback" not in res.err
    assert fake.count("codex", "device_token") >= 2
    assert not [s for s in device_secrets(fake) if s in res.err + res.out]
    assert status(user) == []


def test_codex_device_poll_error_is_one_line_without_secrets(user: User, fake: FakeOAuth) -> None:
    user.write_config(fake.config_toml("codex"))
    proc = user.start("codex", "--device")
    proc.wait_for("one-time code")
    # The server breaks down, quoting what it was sent.
    fake.codex_device_reply = lambda body: (
        500,
        {"error": {"message": f"no device {body['device_auth_id']}", "code": "server_error"}},
    )
    res = proc.finish()
    assert res.code == 1
    last = res.err.strip().splitlines()[-1]
    assert last == "✘ device code sign-in failed: server_error: no device (redacted)"
    assert not [s for s in device_secrets(fake) if s in res.err + res.out]


def test_login_times_out(user: User, fake: FakeOAuth) -> None:
    codex_config(user, fake, free_port())
    res = user.run("codex", "--no-browser", "--timeout", "1", timeout=20)
    assert res.code == 1 and "within 1 s" in res.err


# -- Anthropic: manual code#state paste ---------------------------------------------------


def test_anthropic_manual_paste(user: User, fake: FakeOAuth) -> None:
    user.write_config(fake.config_toml("anthropic"))
    proc = user.start("anthropic", "--no-browser")
    url = authorize_url(proc, fake)
    proc.wait_for("paste the code")
    page = httpx.get(visit(url))
    pasted = re.search(r'<code id="auth-code">([^<]+)</code>', page.text).group(1)
    assert "#" in pasted
    proc.send(pasted + "\n")
    res = proc.finish()
    assert res.code == 0, res.err
    [entry] = status(user)
    assert entry["provider"] == "anthropic" and entry["state"] == "valid"
    exchange = next(c for c in fake.calls if c.provider == "anthropic" and c.endpoint == "token")
    assert exchange.headers["content-type"].startswith("application/json")


# -- Google: loopback + Code Assist project discovery -------------------------------------


@pytest.mark.parametrize("provider", ["gemini", "antigravity"])
@pytest.mark.parametrize("mode", ["existing", "onboard"])
def test_google_login_discovers_project(
    user: User, fake: FakeOAuth, provider: str, mode: str
) -> None:
    fake.code_assist_mode[provider] = mode
    port = free_port()
    user.write_config(
        fake.config_toml(provider) + f'redirect_uri = "http://127.0.0.1:{port}/oauth2callback"\n'
    )
    proc = user.start(provider, "--no-browser")
    httpx.get(visit(authorize_url(proc, fake)))
    res = proc.finish(timeout=60)
    assert res.code == 0, res.err
    expected = "proj-existing" if mode == "existing" else "proj-onboarded"
    assert f"Code Assist project: {expected}" in res.err
    if mode == "onboard":
        onboard = next(c for c in fake.calls if c.endpoint == "onboardUser")
        assert onboard.body["tierId"] == "standard-tier"
    [entry] = status(user)
    assert entry["provider"] == provider and entry["state"] == "valid"


def test_gemini_ineligible_account(user: User, fake: FakeOAuth) -> None:
    fake.code_assist_mode["gemini"] = "ineligible"
    user.write_config(fake.config_toml("gemini"))
    proc = user.start("gemini", "--no-browser")
    httpx.get(visit(authorize_url(proc, fake)))
    res = proc.finish()
    assert res.code == 1
    assert "no longer supported" in res.err.splitlines()[-1]
    assert status(user) == []


# -- store, status, logout, refresh ------------------------------------------------------


def login_anthropic(user: User, fake: FakeOAuth, bucket: str = "default") -> None:
    proc = user.start("anthropic", bucket, "--no-browser")
    page = httpx.get(visit(authorize_url(proc, fake)))
    proc.send(re.search(r'<code id="auth-code">([^<]+)</code>', page.text).group(1) + "\n")
    res = proc.finish()
    assert res.code == 0, res.err


def test_file_store_is_private_and_encrypted(user: User, fake: FakeOAuth) -> None:
    user.write_config(fake.config_toml("anthropic"))
    login_anthropic(user, fake)
    [token] = fake.valid_access_tokens("anthropic")
    files = [p for p in user.data_dir.rglob("*") if p.is_file()]
    assert files
    for path in [user.data_dir, *user.data_dir.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
        if path.is_file():
            assert token.encode() not in path.read_bytes()


def test_corrupt_entry_is_named_and_others_survive(user: User, fake: FakeOAuth) -> None:
    user.write_config(fake.config_toml("anthropic"))
    login_anthropic(user, fake, "one")
    login_anthropic(user, fake, "two")
    broken = user.data_dir / "tokens" / "anthropic" / "one.tok"
    broken.write_bytes(b"garbage")
    listed = user.run("status", "--json")
    assert listed.code == 1, "a bad entry makes status fail, after listing everything"
    entries = {e["bucket"]: e for e in json.loads(listed.out)}
    assert entries["one"]["state"] == "corrupt" and "anthropic:one" in entries["one"]["detail"]
    assert entries["two"]["state"] == "valid"
    assert user.run("refresh", "anthropic", "two").code == 0


def test_world_readable_store_is_refused(user: User, fake: FakeOAuth) -> None:
    user.write_config(fake.config_toml("anthropic"))
    login_anthropic(user, fake)
    user.data_dir.chmod(0o755)
    res = user.run("status")
    assert res.code == 1 and "chmod 700" in res.err


def test_refresh_rotates_and_logout(user: User, fake: FakeOAuth) -> None:
    user.write_config(fake.config_toml("anthropic"))
    login_anthropic(user, fake)
    [before] = fake.valid_access_tokens("anthropic")
    res = user.run("refresh", "anthropic")
    assert res.code == 0, res.err
    [after] = fake.valid_access_tokens("anthropic")
    assert after != before
    assert user.run("refresh", "anthropic").code == 0, "the rotated refresh token was stored"
    assert fake.count("anthropic", "refresh") == 2
    assert user.run("logout", "anthropic").code == 0
    assert status(user) == []
    res = user.run("logout", "anthropic")
    assert res.code == 1 and "no stored login" in res.err


def test_revoked_refresh_token_means_needs_login(user: User, fake: FakeOAuth) -> None:
    user.write_config(fake.config_toml("anthropic"))
    login_anthropic(user, fake)
    fake.revoke_refresh_tokens("anthropic")
    res = user.run("refresh", "anthropic")
    assert res.code == 1 and "keyswap login anthropic" in res.err
    assert status(user)[0]["state"] == "needs-login"


def test_invalid_config_names_file_key_and_reason(user: User) -> None:
    user.write_config('[proxy]\nstrategy = "random"\n')
    res = user.run("status")
    assert res.code == 1
    assert str(user.config) in res.err and "proxy.strategy" in res.err
    user.write_config('[providers.copilot.endpoints]\ndevice_code = "http://example.com/x"\n')
    res = user.run("status")
    assert "providers.copilot.endpoints" in res.err and "https" in res.err
    user.write_config('[providers.copilot.endpoints]\nnope = "https://example.com/x"\n')
    res = user.run("status")
    assert "providers.copilot.endpoints.nope" in res.err and "unknown endpoint" in res.err


def test_no_network_is_one_clear_line(user: User) -> None:
    port = free_port()  # nothing listens here
    user.write_config(
        f'[providers.copilot.endpoints]\ndevice_code = "http://127.0.0.1:{port}/device"\n'
    )
    res = user.run("copilot")
    assert res.code == 1
    assert res.err.strip().splitlines() == [
        "✘ requesting a device code: cannot reach 127.0.0.1 (ConnectError)"
    ]


def test_unknown_provider_is_one_line(user: User) -> None:
    res = user.run("nope")
    assert res.code == 2
    [line] = res.err.strip().splitlines()
    assert line.startswith("✘ unknown provider or command 'nope' (choose from 'anthropic'")
    assert line.endswith("(see `python -m login --help`)")


def test_every_help_reads(user: User) -> None:
    for args in (
        ["--help"],
        ["copilot", "--help"],
        ["codex", "--help"],
        ["status", "--help"],
        ["logout", "--help"],
        ["refresh", "--help"],
        ["env", "--help"],
        ["page", "--help"],
    ):
        res = user.run(*args)
        assert res.code == 0 and res.out.startswith("usage: python -m login"), args
    # Only a provider with a device code beside its browser sign-in offers --device.
    assert "--device" in user.run("codex", "--help").out
    assert "--device" not in user.run("anthropic", "--help").out


def test_enable_and_disable_edit_the_config_in_place(user: User) -> None:
    user.write_config('# my settings\n[providers.copilot]  # work\nstrategy = "failover"\n')
    assert user.run("enable", "copilot").code == 0
    assert user.run("disable", "codex").code == 0
    assert user.run("disable", "copilot").code == 0
    text = user.config.read_text()
    assert text.startswith("# my settings\n[providers.copilot]  # work\n")
    assert text.count("enabled = false") == 2 and "enabled = true" not in text
    assert 'strategy = "failover"' in text
    user.write_config("[providers.copilot]\nenabled = 3\n")
    res = user.run("enable", "codex")
    assert res.code == 1 and "providers.copilot.enabled" in res.err and "not changed" in res.err
