"""The private Secret Service test helper really works with the `keyring` package."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.secret_service import (
    REQUIRE_ENV,
    SecretServiceEnv,
    require_secret_service,
    secret_service,
    secret_service_env,
    unavailable,
)

__all__ = ["secret_service_env"]  # the fixture, used by the tests below

SERVICE = "keyswap-test"

_BACKEND_INFO = """
import json, keyring
kr = keyring.get_keyring()
name = lambda b: f"{type(b).__module__}.{type(b).__name__}"
print(json.dumps({"backend": name(kr), "chain": [name(b) for b in getattr(kr, "backends", [])]}))
"""


def _py(code: str, env: dict[str, str], cwd: Path) -> str:
    """Run ``code`` in a fresh interpreter of this venv with ``env`` added."""
    full = {**os.environ, **env}
    full.pop("PYTHON_KEYRING_BACKEND", None)  # let keyring choose as it would for a user
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=full,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout.strip()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def test_env_is_private(secret_service_env: SecretServiceEnv, tmp_path: Path) -> None:
    env = secret_service_env
    assert env["DBUS_SESSION_BUS_ADDRESS"].startswith("unix:path=")
    assert env["DBUS_SESSION_BUS_ADDRESS"] != os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    for var in ("HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME"):
        assert Path(env[var]).is_relative_to(tmp_path), var
    runtime = Path(env["XDG_RUNTIME_DIR"])
    assert runtime.stat().st_mode & 0o777 == 0o700
    # The login keyring was created in the private data dir, not the user's.
    assert (Path(env["XDG_DATA_HOME"]) / "keyrings" / "login.keyring").is_file()
    assert len(env.pids) == 2
    assert all(_alive(pid) for pid in env.pids)


def test_keyring_uses_secret_service_backend(
    secret_service_env: SecretServiceEnv, tmp_path: Path
) -> None:
    info = json.loads(_py(_BACKEND_INFO, secret_service_env, tmp_path))
    secret_service_backend = "keyring.backends.SecretService.Keyring"
    assert info["backend"] == secret_service_backend or secret_service_backend in info["chain"], (
        info
    )
    assert "fail" not in info["backend"].lower(), info
    assert "plaintext" not in info["backend"].lower(), info


def test_password_round_trips_between_processes(
    secret_service_env: SecretServiceEnv, tmp_path: Path
) -> None:
    env = secret_service_env
    _py(f"import keyring; keyring.set_password({SERVICE!r}, 'u', 'v')", env, tmp_path)
    got = _py(f"import keyring; print(keyring.get_password({SERVICE!r}, 'u'))", env, tmp_path)
    assert got == "v"
    # It is really in gnome-keyring's default ("login") collection.
    code = f"""
import secretstorage
conn = secretstorage.dbus_init()
col = secretstorage.get_default_collection(conn)
items = list(col.search_items({{"service": {SERVICE!r}, "username": "u"}}))
print(col.get_label(), col.is_locked(), [(i.item_path, i.get_secret().decode()) for i in items])
"""
    label, locked, items = _py(code, env, tmp_path).split(" ", 2)
    assert (label, locked) == ("Login", "False")
    ((path, secret),) = ast.literal_eval(items)
    assert path.startswith("/org/freedesktop/secrets/collection/login/"), path
    assert secret == "v"
    _py(f"import keyring; keyring.delete_password({SERVICE!r}, 'u')", env, tmp_path)
    got = _py(f"import keyring; print(keyring.get_password({SERVICE!r}, 'u'))", env, tmp_path)
    assert got == "None"


def test_daemons_are_gone_after_exit(tmp_path: Path) -> None:
    require_secret_service()
    with secret_service(tmp_path / "a") as env:
        pids = env.pids
        runtime = env.runtime_dir
        assert pids and all(_alive(pid) for pid in pids)
        _py(f"import keyring; keyring.set_password({SERVICE!r}, 'u', 'v')", env, tmp_path)
    assert not any(_alive(pid) for pid in pids), pids
    assert runtime is not None and not runtime.exists()
    # Clients now fail fast instead of reaching some other keyring.
    code = f"import keyring; print(keyring.get_password({SERVICE!r}, 'u'))"
    full = {**os.environ, **env}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=60
    )
    assert "v" not in proc.stdout.split()


def test_instances_are_isolated(tmp_path: Path) -> None:
    require_secret_service()
    with secret_service(tmp_path / "a") as env_a:
        _py(f"import keyring; keyring.set_password({SERVICE!r}, 'u', 'a')", env_a, tmp_path)
        with secret_service(tmp_path / "b") as env_b:
            assert env_a["DBUS_SESSION_BUS_ADDRESS"] != env_b["DBUS_SESSION_BUS_ADDRESS"]
            code = f"import keyring; print(keyring.get_password({SERVICE!r}, 'u'))"
            assert _py(code, env_b, tmp_path) == "None"
            assert _py(code, env_a, tmp_path) == "a"


@pytest.mark.parametrize("value", ["1", "yes"])
def test_unavailable_fails_when_required(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(REQUIRE_ENV, value)
    with pytest.raises(pytest.fail.Exception, match="no Secret Service: because"):
        unavailable("because")


@pytest.mark.parametrize("value", [None, "", "0"])
def test_unavailable_skips_otherwise(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv(REQUIRE_ENV, raising=False)
    else:
        monkeypatch.setenv(REQUIRE_ENV, value)
    with pytest.raises(pytest.skip.Exception, match="because"):
        unavailable("because")
