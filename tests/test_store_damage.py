"""One bad store file stops nothing else: `login status` lists every other login, names the bad
one with its fix and exits 1; the token service keeps serving the others (issue 13, item 11)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from login.errors import KeyswapError
from tests.conftest import User
from tests.fakes.oauth import FakeOAuth
from tests.scripted_login import as_user, seed, service, token_file


def loosen(path: Path) -> str:
    path.chmod(0o644)
    return f"chmod 600 {path}"


def loosen_dir(path: Path) -> str:
    path.parent.chmod(0o755)
    return f"chmod 700 {path.parent}"


def make_dir(path: Path) -> str:
    path.unlink()
    path.mkdir()
    return f"{path} is a directory"


def garble(path: Path) -> str:
    path.write_bytes(b"garbage")
    return "does not decrypt"


@pytest.mark.parametrize(
    ("damage", "state"),
    [(loosen, "unsafe"), (make_dir, "corrupt"), (garble, "corrupt")],
    ids=["mode-644", "directory", "undecryptable"],
)
def test_one_bad_file_is_named_and_every_other_login_listed(
    user: User,
    fake: FakeOAuth,
    monkeypatch: pytest.MonkeyPatch,
    damage: Callable[[Path], str],
    state: str,
) -> None:
    as_user(monkeypatch, user)
    seed(fake, user, ("anthropic", "one"), ("anthropic", "two"), ("copilot", "default"))
    fix = damage(token_file(user, "anthropic", "one"))

    res = user.run("status")
    assert res.code == 1, res.err
    assert "Traceback" not in res.err
    rows = {line.split()[1]: line for line in res.out.splitlines() if line.startswith(("a", "c"))}
    assert state in rows["one"].split()
    assert "valid" in rows["two"] and "valid" in rows["default"]
    assert fix in res.out

    listed = user.run("status", "--json")
    assert listed.code == 1, listed.err
    entries = {(e["provider"], e["bucket"]): e for e in json.loads(listed.out)}
    assert entries["anthropic", "one"]["state"] == state
    assert fix in entries["anthropic", "one"]["detail"]
    assert entries["anthropic", "two"]["state"] == "valid"
    assert entries["copilot", "default"]["state"] == "valid"

    # doctor names it with the same fix; logout of it is refused with that fix, no crash.
    checked = user.run("doctor", "--port", "9")
    line = next(x for x in checked.out.splitlines() if "anthropic:one" in x)
    assert line.startswith(f"✘ login anthropic:one: {state} — fix: ") and fix in line
    if state == "corrupt" and "directory" in fix:
        out = user.run("logout", "anthropic", "one")
        assert out.code == 1 and "Traceback" not in out.err and fix in out.err
        assert token_file(user, "anthropic", "one").is_dir()

    # The proxy's token service: the bad login fails cleanly, the others are served.
    async def go() -> None:
        svc = service(fake, user)
        with pytest.raises(KeyswapError):
            await svc.refresh("anthropic", "one")
        await svc.refresh("anthropic", "two")
        await svc.refresh("copilot", "default")
        await svc.aclose()

    asyncio.run(go())


def test_a_loose_provider_directory_is_named_with_its_fix(
    user: User, fake: FakeOAuth, monkeypatch: pytest.MonkeyPatch
) -> None:
    as_user(monkeypatch, user)
    seed(fake, user, ("anthropic", "one"), ("copilot", "default"))
    fix = loosen_dir(token_file(user, "anthropic", "one"))
    listed = user.run("status", "--json")
    assert listed.code == 1
    entries = {e["provider"]: e for e in json.loads(listed.out)}
    assert entries["anthropic"]["state"] == "unsafe" and fix in entries["anthropic"]["detail"]
    assert entries["copilot"]["state"] == "valid"
