"""The state a proxy keeps across restarts: cooldowns, quota windows and counters, in a
0600 file that `python -m login status` reads too."""

from __future__ import annotations

import stat
import time
from pathlib import Path

from addon import quota
from addon.quota import Quota
from addon.rotation import Rotation
from login import usage
from login.providers.usage import Window


def test_cooldowns_quotas_and_counters_survive_a_restart(tmp_path: Path) -> None:
    path = usage.state_path(tmp_path / "keyswap")
    q, rotation = Quota(), Rotation()
    resets = time.time() + 3600
    q.observe("anthropic", "a", [Window("5h", 0.97, resets, 300, "allowed_warning")])
    q.limited("anthropic", "b", "HTTP 429")
    rotation.cool("anthropic", "b", 600)
    rotation.cool("codex", "gone", -5)  # already over: not kept as a rest
    rotation.served["anthropic", "a"] += 12
    quota.save(path, q, rotation)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700

    again, later = Quota(), Rotation()
    quota.restore(path, again, later)
    assert again.used("anthropic", "a") == 0.97
    assert again.account("anthropic", "a").windows["5h"].resets_at == resets
    assert again.account("anthropic", "b").last_error == "HTTP 429"
    until = later.cooling_until("anthropic", "b")
    assert until is not None and 590 < until - time.time() <= 600
    assert later.cooling_until("codex", "gone") is None
    assert later.served["anthropic", "a"] == 12 and later.limited["anthropic", "b"] == 1
    # A restored rest is not probed at once: a restart does not hammer the account.
    assert not later.probe("anthropic", "b")


def test_a_damaged_or_foreign_state_file_is_ignored(tmp_path: Path) -> None:
    path = usage.state_path(tmp_path / "keyswap")
    path.parent.mkdir(mode=0o700)
    for text in (b"{not json", b"[]", b'{"buckets": {"x:y": {"windows": [{"bad": 1}]}}}'):
        path.write_bytes(text)
        path.chmod(0o600)
        q, rotation = Quota(), Rotation()
        quota.restore(path, q, rotation)
        assert q.accounts == {} and rotation.cooling() == []
    quota.restore(tmp_path / "missing" / "state.json", Quota(), Rotation())
    # A file others could have written is refused as `login status` refuses it, not a crash.
    q, rotation = Quota(), Rotation()
    quota.save(path, q, rotation)
    path.chmod(0o644)
    rotation.cool("anthropic", "a", 60)
    quota.save(path.with_name("good.json"), q, rotation)
    path.write_bytes(path.with_name("good.json").read_bytes())
    path.chmod(0o644)
    quota.restore(path, q, later := Rotation())
    assert later.cooling() == []
