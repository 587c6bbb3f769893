"""Refreshing a rotating, single-use refresh token from many callers and two processes at once
must refresh exactly once and never burn the token."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap

from tests.conftest import ROOT, User
from tests.fakes.oauth import FakeOAuth
from tests.scripted_login import expire_stored
from tests.test_login import login_anthropic, status

CALLERS = textwrap.dedent(
    """
    import asyncio, hashlib, os, sys, time
    from login.config import load_config
    from login.tokens import TokenService

    async def main() -> None:
        go = sys.argv[1]
        while not os.path.exists(go):
            time.sleep(0.005)
        svc = TokenService(load_config())
        try:
            n = int(sys.argv[2]) if len(sys.argv) > 2 else 50
            got = await asyncio.gather(*(svc.access("anthropic", "default") for _ in range(n)))
        finally:
            await svc.aclose()
        print(" ".join(sorted({hashlib.sha256(a.token.encode()).hexdigest() for a in got})))

    asyncio.run(main())
    """
)


def test_two_processes_refresh_a_rotating_token_once(user: User, fake: FakeOAuth, tmp_path) -> None:
    # A login whose access token has expired; refreshed tokens live the usual 8 hours.
    user.write_config(fake.config_toml("anthropic"))
    login_anthropic(user, fake)
    expire_stored(user, "anthropic", "default")
    assert fake.count("anthropic", "refresh") == 0
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CALLERS, str(go)],
            env=user.env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    go.touch()
    outs = [p.communicate(timeout=60) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    # 100 callers in two processes: one refresh, and everyone got its result.
    assert fake.count("anthropic", "refresh") == 1
    [token] = fake.valid_access_tokens("anthropic")
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert [out.strip() for out, _ in outs] == [digest, digest]
    assert token not in "".join(out + err for out, err in outs)
    assert status(user)[0]["state"] != "needs-login"
