"""The keyring store against a real Secret Service (gnome-keyring on a private D-Bus)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT, User
from tests.fakes.oauth import FakeOAuth
from tests.test_login import login_anthropic, status

READ = "import keyring, sys; print(keyring.get_password('keyswap', sys.argv[1]) or '')"


def keyring_entry(env: dict[str, str], name: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", READ, name], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_login_lands_in_the_keyring(user: User, fake: FakeOAuth, secret_service_env) -> None:
    user.env.update(secret_service_env)
    user.env.pop("KEYSWAP_STORE")  # the probe must pick the keyring by itself
    user.write_config(fake.config_toml("anthropic"))
    login_anthropic(user, fake, "work")
    res = user.run("status", "--json")
    assert [e["store"] for e in json.loads(res.out)] == ["keyring"]
    entry = json.loads(keyring_entry(user.env, "anthropic:work"))
    [token] = fake.valid_access_tokens("anthropic")
    assert entry["provider"] == "anthropic" and entry["bucket"] == "work"
    assert entry["access_token"] == token
    # Nothing secret was written next to the keyring.
    for path in user.data_dir.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes()
    assert [e["bucket"] for e in status(user)] == ["work"]
    # A refresh rotates the stored pair in place; logout removes it.
    assert user.run("refresh", "anthropic", "work").code == 0
    assert json.loads(keyring_entry(user.env, "anthropic:work"))["access_token"] != token
    assert user.run("logout", "anthropic", "work").code == 0
    assert keyring_entry(user.env, "anthropic:work") == ""
    assert status(user) == []


def test_without_a_keyring_the_file_store_is_used(user: User, fake: FakeOAuth) -> None:
    user.env.pop("KEYSWAP_STORE")
    user.env["DBUS_SESSION_BUS_ADDRESS"] = "unix:path=/nonexistent/bus"
    user.write_config(fake.config_toml("anthropic"))
    login_anthropic(user, fake)
    assert [e["store"] for e in json.loads(user.run("status", "--json").out)] == ["file"]
    assert (user.data_dir / "tokens" / "anthropic" / "default.tok").is_file()


def test_forcing_a_broken_keyring_is_a_clear_error(user: User) -> None:
    user.env["KEYSWAP_STORE"] = "keyring"
    user.env["DBUS_SESSION_BUS_ADDRESS"] = "unix:path=/nonexistent/bus"
    res = user.run("status")
    assert res.code == 1
    assert "KEYSWAP_STORE=keyring, but the keyring does not work" in res.err
    assert "Traceback" not in res.err
