"""`python -m login status` shows each bucket's quota windows, cooldown and traffic from the
state file the proxy keeps, whether or not the proxy runs (issue 15.5)."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
from pydantic import SecretStr

from addon import quota
from login import usage
from login.credential import Credential
from login.store import FileStore
from tests.conftest import User
from tests.scripted_login import as_user

H, D = 3600, 86400


@pytest.fixture
def logged_in(user: User, monkeypatch: pytest.MonkeyPatch) -> User:
    """Three stored logins with known accounts and expiries (no provider needed to list them)."""
    as_user(monkeypatch, user)
    store, now = FileStore(), time.time()
    for provider, bucket, account, hours in (
        ("anthropic", "work", "me@example.com", 5),
        ("anthropic", "spare", "you@example.com", 5),
        ("copilot", "default", "octocat", None),
    ):
        store.save(
            Credential(
                provider=provider,
                bucket=bucket,
                access_token=SecretStr(f"token-{provider}-{bucket}"),
                expires_at=now + hours * H + 30 if hours else None,
                account=account,
            )
        )
    return user


def write_state(user: User, buckets: dict[str, Any], saved: float | None = None) -> None:
    path = usage.state_path(user.data_dir)
    data = {"version": 1, "saved": time.time() if saved is None else saved, "buckets": buckets}
    path.write_text(json.dumps(data))
    path.chmod(0o600)


def window(name: str, used: float, resets_in: float | None, minutes: float) -> dict[str, Any]:
    resets_at = None if resets_in is None else time.time() + resets_in
    return {"name": name, "used": used, "resets_at": resets_at, "minutes": minutes, "status": None}


def two_accounts(user: User) -> None:
    """anthropic/work is fresh; anthropic/spare is nearly spent and resting after a 429."""
    now = time.time()
    write_state(
        user,
        {
            "anthropic:work": {
                "windows": [
                    window("5h", 0.42, 3 * H + 12 * 60 + 30, 300),
                    window("7d", 0.09, 5 * D + 2 * H + 30, 10080),
                ],
                "updated": now - 5,
                "last_429": None,
                "last_error": None,
                "cooling_until": None,
                "served": 12,
                "limited": 0,
            },
            "anthropic:spare": {
                "windows": [
                    window("5h", 0.97, H + 2 * 60 + 30, 300),
                    window("7d", 0.4, 2 * D + 4 * H + 30, 10080),
                ],
                "updated": now - 60,
                "last_429": now - 60,
                "last_error": "HTTP 429",
                "cooling_until": now + H + 2 * 60 + 30,
                "served": 1,
                "limited": 1,
            },
            "codex:gone": {"windows": [], "served": 3, "limited": 0},  # no longer logged in
        },
        saved=now - 125,
    )


PLAIN = [
    "anthropic  spare    you@example.com  valid  expires in 5 h",
    "anthropic  work     me@example.com   valid  expires in 5 h",
    "copilot    default  octocat          valid  no expiry",
    "(store: file)",
]


def test_status_shows_windows_cooldown_and_traffic(logged_in: User) -> None:
    two_accounts(logged_in)
    res = logged_in.run("status")
    assert res.code == 0 and res.err == ""
    assert res.out.splitlines() == [
        "anthropic  spare    you@example.com  valid  expires in 5 h"
        "  5h 97% (resets in 1h02m)  7d 40% (resets in 2d4h)"
        "  1 request    1 × 429  cooldown 1h02m",
        "anthropic  work     me@example.com   valid  expires in 5 h"
        "  5h 42% (resets in 3h12m)  7d 9% (resets in 5d2h) "
        "  12 requests  0 × 429",
        "copilot    default  octocat          valid  no expiry",
        "(store: file)",
        "(usage: saved by the proxy 2m ago)",
    ]
    only = logged_in.run("status", "copilot")
    lines = ["copilot  default  octocat  valid  no expiry", "(store: file)"]
    assert only.out.splitlines() == lines, "no usage, no usage columns"


def test_status_json_documents_the_usage_fields(logged_in: User) -> None:
    two_accounts(logged_in)
    res = logged_in.run("status", "--json")
    assert res.code == 0 and res.err == ""
    entries = {e["bucket"]: e for e in json.loads(res.out)}
    now = time.time()
    spare, work, copilot = entries["spare"], entries["work"], entries["default"]
    assert set(spare) == {
        *("provider", "bucket", "account", "email", "state", "expires_at", "expires_in"),
        *("store", "detail", "models", "exclude_models", "imported_from"),
        *("windows", "cooling_until", "requests", "limited", "last_429", "last_error"),
        "usage_updated",
    }
    five, seven = spare["windows"]
    assert set(five) == {"name", "used", "resets_at", "resets_in", "minutes", "status"}
    assert (five["name"], five["used"], five["minutes"]) == ("5h", 0.97, 300)
    assert 3740 <= five["resets_in"] <= 3750 and abs(five["resets_at"] - now - 3750) < 10
    assert seven["name"] == "7d" and seven["used"] == 0.4
    assert 3740 <= spare["cooling_until"] - now <= 3750
    assert (spare["requests"], spare["limited"], spare["last_error"]) == (1, 1, "HTTP 429")
    assert 55 <= now - spare["usage_updated"] <= 70
    assert (work["requests"], work["limited"], work["cooling_until"]) == (12, 0, None)
    assert [w["used"] for w in work["windows"]] == [0.42, 0.09]
    # A login the proxy has no record of.
    assert copilot["windows"] == [] and copilot["requests"] is None
    assert copilot["cooling_until"] is None and copilot["usage_updated"] is None
    assert copilot["account"] == "octocat" and copilot["store"] == "file"


def test_status_without_a_state_file_is_as_before(logged_in: User) -> None:
    assert not usage.state_path(logged_in.data_dir).exists()
    res = logged_in.run("status")
    assert (res.code, res.err, res.out.splitlines()) == (0, "", PLAIN)
    listed = json.loads(logged_in.run("status", "--json").out)
    assert [(e["windows"], e["requests"]) for e in listed] == [([], None)] * 3


def test_a_damaged_state_file_is_said_once(logged_in: User) -> None:
    path = usage.state_path(logged_in.data_dir)
    for damage in (b"{not json", b"[]", b'{"buckets": {"anthropic:work": 3}}'):
        path.write_bytes(damage)
        for args in (("status",), ("status", "--json")):
            res = logged_in.run(*args)
            assert res.code == 0, (damage, args)
            [line] = res.err.splitlines()
            assert line.startswith(f"! the usage state {path} is unreadable"), line
            assert line.endswith("; showing no usage") and "Traceback" not in res.err
        assert res.out and json.loads(res.out)[0]["windows"] == []
        assert logged_in.run("status").out.splitlines() == PLAIN
    # Open to others: refused like any private file, and the fix is named.
    two_accounts(logged_in)
    path.chmod(0o644)
    res = logged_in.run("status")
    assert res.code == 0 and res.out.splitlines() == PLAIN
    assert "unreadable" in res.err and f"chmod 600 {path}" in res.err


def test_a_bad_login_still_fails_status_with_usage_shown(logged_in: User) -> None:
    two_accounts(logged_in)
    (logged_in.data_dir / "tokens" / "anthropic" / "work.tok").write_bytes(b"garbage")
    res = logged_in.run("status")
    assert res.code == 1
    assert "5h 97% (resets in 1h02m)" in res.out and "corrupt" in res.out


def test_a_window_that_reset_since_shows_nothing_used(logged_in: User) -> None:
    write_state(
        logged_in,
        {"anthropic:work": {"windows": [window("5h", 0.99, -60, 300), {"name": "x"}], "served": 2}},
    )
    res = logged_in.run("status", "anthropic")
    assert res.out.splitlines()[1] == (
        "anthropic  work   me@example.com   valid  expires in 5 h"
        "  5h 0% (reset)  2 requests  0 × 429"
    )
    listed = json.loads(logged_in.run("status", "--json").out)
    [entry] = [e for e in listed if e["bucket"] == "work"]
    assert entry["windows"][0]["used"] == 0.0 and entry["windows"][0]["resets_in"] == 0
    assert len(entry["windows"]) == 1, "a window without a used fraction is left out"


def test_the_cli_reads_the_file_the_proxy_writes(tmp_path: Any) -> None:
    from addon.rotation import Rotation
    from login.providers.usage import Window

    q, rotation = quota.Quota(), Rotation()
    q.observe("anthropic", "a", [Window("5h", 0.5, time.time() + 600, 300, "allowed")])
    rotation.cool("anthropic", "a", 120)
    rotation.served["anthropic", "a"] += 4
    quota.save(usage.state_path(tmp_path), q, rotation)
    saved, records = usage.read_state(usage.state_path(tmp_path))
    assert saved is not None and abs(saved - time.time()) < 5
    shown = usage.view(records["anthropic:a"], time.time())
    assert shown["windows"][0]["status"] == "allowed" and shown["windows"][0]["used"] == 0.5
    assert (shown["requests"], shown["limited"]) == (4, 1) and shown["cooling_until"]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        *((0, "0s"), (59.9, "59s"), (60, "1m"), (3599, "59m"), (3600, "1h00m")),
        *((11_550, "3h12m"), (86_399, "23h59m"), (86_400, "1d"), (5 * D + 2 * H + 59, "5d2h")),
        (-5, "0s"),
    ],
)
def test_span(seconds: float, text: str) -> None:
    assert usage.span(seconds) == text


def test_status_reads_what_a_running_proxy_saved_and_keeps_it_after(
    user: User, tmp_path: Any
) -> None:
    from tests.e2e import stack
    from tests.test_manage import copilot_chat, wait_until

    with stack(user, tmp_path) as s:
        token = s.login_copilot()
        s.api.rate_limit("copilot", token=token, seconds=600)
        with s.proxy() as proxy:
            assert copilot_chat(proxy, "oauth:copilot").status_code == 429
            # Saved within a second of the rest beginning: no need to stop the proxy.
            running = wait_until(
                lambda: (r := user.run("status")) and "cooldown" in r.out and r,
                what="the proxy to save the rest",
            )
        stopped = user.run("status")
    for res in (running, stopped):
        [row] = [line for line in res.out.splitlines() if line.startswith("copilot")]
        assert re.fullmatch(
            r"copilot  default  octocat  valid  expires in \d+ min"
            # The premium allowance the proxy polls from Copilot's usage endpoint.
            r"(  premium_interactions 17% \(resets in \d+d\d+h\))?"
            r"  0 requests  1 × 429  cooldown 9m",
            row,
        ), row
        assert res.err == ""
