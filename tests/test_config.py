"""The config file's types are checked strictly: TOML has real types, so a string where a
boolean or number belongs is a mistake to report with the file, key and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from login.config import load_config
from login.errors import ConfigError


@pytest.mark.parametrize(
    ("toml", "key", "reason"),
    [
        ('[proxy]\nallow_remote = "yes"\n', "proxy.allow_remote", "valid boolean"),
        ("[proxy]\nallow_remote = 1\n", "proxy.allow_remote", "valid boolean"),
        ('[proxy]\ncooldown = "60"\n', "proxy.cooldown", "valid number"),
        ("[proxy]\ncooldown = true\n", "proxy.cooldown", "valid number"),
        ('[proxy]\nlogin_wait = "2m"\n', "proxy.login_wait", "valid number"),
        ('[proxy]\nallow_origins = "https://my.app"\n', "proxy.allow_origins", "valid list"),
        ('[providers.copilot]\nenabled = "off"\n', "providers.copilot.enabled", "valid boolean"),
        ("[providers.copilot]\nenabled = 0\n", "providers.copilot.enabled", "valid boolean"),
        ("[providers.copilot]\nbuckets = [1, 2]\n", "providers.copilot.buckets.0", "valid string"),
        ('[resolve]\n"a.example:443" = 9443\n', "resolve.a.example:443", "valid string"),
        (
            '[clients.a]\nsecret = "0123456789abcdef"\nallow = "copilot"\n',
            "clients.a.allow",
            "valid list",
        ),
    ],
)
def test_wrong_types_are_refused_with_file_key_and_reason(
    tmp_path: Path, toml: str, key: str, reason: str
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.path == str(path)
    assert caught.value.key == key
    assert reason in caught.value.reason


def test_numbers_may_be_integers_or_floats(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[proxy]\ncooldown = 60\nlogin_wait = 2.5\nallow_remote = false\n")
    config = load_config(path)
    assert config.proxy.cooldown == 60.0 and config.proxy.login_wait == 2.5
    assert config.proxy.allow_remote is False
