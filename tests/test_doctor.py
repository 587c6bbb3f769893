"""`keyswap login doctor`, run as a user would: without a proxy, against a real mitmdump with
keyswap loaded (offline: mitmproxy's lazy strategy does TLS without dialing upstream), and
over stored logins in every state."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import trustme

from tests.conftest import Result, User, free_port
from tests.fakes.oauth import FakeOAuth
from tests.proxy import Mitmdump, base_env
from tests.scripted_login import expire_stored
from tests.test_login import login_anthropic

LINUX = sys.platform.startswith("linux")


def doctor(user: User, *args: str) -> tuple[Result, dict[str, str]]:
    """Run the doctor; its lines keyed by what they are about."""
    res = user.run("doctor", "--timeout", "5", *args)
    assert "Traceback" not in res.err, res.err
    lines = res.out.splitlines()
    assert lines and all(line[:2] in ("✔ ", "✘ ", "? ") for line in lines), res.out
    prefixes = {
        "proxy": ("proxy reachable", "proxy not reachable", "something listens"),
        "bundle": ("CA bundle", "no CA bundle", "the CA bundle", "mitmproxy's CA", "the proxy on"),
        "tls": ("TLS through the proxy",),
        "upstream": ("api.githubcopilot.com ",),
        "config": ("config:",),
        "store": ("token store", "KEYSWAP_STORE"),
        "logins": ("no stored logins", "stored logins"),
        "proxy-env": ("the proxy (pid", "the proxy process's"),
    }
    found: dict[str, str] = {}
    for line in lines:
        text = line[2:]
        if text.startswith("login "):  # one per stored login: "login provider:bucket: …"
            found[text.split(": ")[0].removeprefix("login ")] = line
            continue
        [key] = [key for key, starts in prefixes.items() if text.startswith(starts)]
        assert key not in found, (key, res.out)
        found[key] = line
    return res, found


def test_without_a_proxy_says_how_to_start_it(user: User, tmp_path: Path) -> None:
    port = free_port()  # nothing listens here
    res, lines = doctor(user, "--port", str(port), "--confdir", str(tmp_path / "none"))
    assert res.code == 1
    assert res.out.splitlines()[0] == lines["proxy"]
    assert lines["proxy"].startswith(f"✘ proxy not reachable at 127.0.0.1:{port}")
    assert f"keyswap proxy --listen-port {port}" in lines["proxy"]
    assert lines["bundle"].startswith("✘") and "does not exist" in lines["bundle"]
    assert lines["tls"].startswith("? ") and "not checked" in lines["tls"]
    assert lines["proxy-env"].startswith("? ") and "could not be checked" in lines["proxy-env"]
    assert lines["store"] == (
        f"✔ token store: encrypted files in {user.data_dir / 'tokens'} (KEYSWAP_STORE=file)"
    )
    assert lines["logins"].startswith("✘ no stored logins") and "keyswap login" in res.out


def test_against_a_running_proxy(user: User, tmp_path: Path) -> None:
    with Mitmdump(tmp_path, base_env(user.env)) as proxy:
        port, confdir = str(proxy.port), str(proxy.confdir)
        assert user.run("env", "--port", port, "--confdir", confdir).code == 0
        res, lines = doctor(user, "--port", port, "--confdir", confdir)

        assert (
            lines["proxy"]
            == f"✔ proxy reachable at 127.0.0.1:{port} (it forwarded an HTTP request)"
        )
        bundle = user.data_dir / "ca-bundle.pem"
        assert lines["bundle"].startswith(f"✔ CA bundle {bundle} holds mitmproxy's current CA")
        # Offline, the lazy strategy lets mitmproxy finish the handshake itself.
        assert lines["tls"] == (
            f"✔ TLS through the proxy to api.githubcopilot.com verifies with the bundle {bundle} "
            "(certificate by commonName=mitmproxy, organizationName=mitmproxy)"
        )
        # Whether the provider answers is reported on its own line, either way.
        assert lines["upstream"].startswith(
            ("✔ api.githubcopilot.com reachable", "✘ api.githubcopilot")
        )
        # ...and the doctor said it would ask that host before it did.
        assert "… asking https://api.githubcopilot.com/ through the proxy" in res.err
        assert "no credentials" in res.err
        if LINUX:
            assert lines["proxy-env"].startswith("✔ the proxy (pid ")
            assert "does not point at itself (no proxy variables)" in lines["proxy-env"]
            # Without --confdir the doctor reads the running proxy's.
            _, again = doctor(user, "--port", port)
            assert (
                again["bundle"].startswith("✔ CA bundle") and str(proxy.confdir) in again["bundle"]
            )
    # Nothing is logged in, so the run as a whole fails, and says why.
    assert res.code == 1 and lines["logins"].startswith("✘ no stored logins")


@pytest.mark.skipif(not LINUX, reason="reads the proxy's environment from /proc")
def test_stale_bundle_and_a_proxy_that_points_at_itself(user: User, tmp_path: Path) -> None:
    # A bundle written for another CA, as after the CA was rotated.
    old = tmp_path / "old-confdir"
    old.mkdir()
    trustme.CA().cert_pem.write_to_path(str(old / "mitmproxy-ca-cert.pem"))
    assert user.run("env", "--confdir", str(old)).code == 0

    port = free_port()
    env = {**base_env(user.env), "HTTPS_PROXY": f"http://127.0.0.1:{port}"}
    with Mitmdump(tmp_path, env, "--listen-port", str(port)) as proxy:
        assert proxy.port == port
        # The proxy brought the exported bundle up to date with its CA when it started...
        deadline = time.monotonic() + 10
        while doctor(user, "--port", str(port))[1]["bundle"].startswith("✘"):
            assert time.monotonic() < deadline, "the proxy did not refresh the bundle"
            time.sleep(0.2)
        # ...so make it stale again behind the proxy's back.
        assert user.run("env", "--confdir", str(old)).code == 0
        res, lines = doctor(user, "--port", str(port))
        assert res.code == 1
        assert lines["proxy"].startswith("✔ proxy reachable")
        fix = f'eval "$(keyswap env --port {port} --confdir {proxy.confdir})"'
        assert lines["bundle"].startswith("✘ the CA bundle") and lines["bundle"].endswith(fix)
        assert lines["tls"].startswith(
            "✘ TLS through the proxy to api.githubcopilot.com: the "
            "certificate does not verify with the bundle"
        )
        assert lines["proxy-env"].startswith("✘ the proxy (pid ")
        assert f"HTTPS_PROXY=http://127.0.0.1:{port}: that is itself" in lines["proxy-env"]
        assert "env -u HTTPS_PROXY" in lines["proxy-env"]

        # Pointing the doctor at another confdir than the proxy's is named as such.
        _, lines = doctor(user, "--port", str(port), "--confdir", str(old))
        assert lines["bundle"].startswith("✘ the proxy on port") and str(old) in lines["bundle"]

        # Rewriting the bundle (same path, so exported shells need nothing else) fixes both.
        assert user.run("env", "--port", str(port), "--confdir", str(proxy.confdir)).code == 0
        _, lines = doctor(user, "--port", str(port))
        assert lines["bundle"].startswith("✔ CA bundle")
        assert lines["tls"].startswith("✔ TLS through the proxy")


def test_logins_show_their_states_and_no_token(user: User, fake: FakeOAuth) -> None:
    user.write_config(fake.config_toml("anthropic"))
    login_anthropic(user, fake, "dead")
    fake.revoke_refresh_tokens("anthropic")
    assert user.run("refresh", "anthropic", "dead").code == 1  # now marked needs-login
    login_anthropic(user, fake, "old")
    expire_stored(user, "anthropic", "old")
    login_anthropic(user, fake, "ok")
    login_anthropic(user, fake, "bad")
    (user.data_dir / "tokens" / "anthropic" / "bad.tok").write_bytes(b"garbage")

    res, lines = doctor(user, "--port", str(free_port()), "--config", str(user.config))
    assert res.code == 1
    assert lines["config"] == f"✔ config: {user.config}"
    by_bucket = {
        name.removeprefix("anthropic:"): line
        for name, line in lines.items()
        if name.startswith("anthropic:")
    }
    assert sorted(by_bucket) == ["bad", "dead", "ok", "old"]
    assert by_bucket["ok"].startswith("✔ login anthropic:ok: valid (user@example.com, expires in")
    assert by_bucket["old"].startswith("✔ login anthropic:old: expired-refreshable")
    assert by_bucket["dead"].startswith("✘ login anthropic:dead: needs-login")
    assert by_bucket["dead"].endswith("— fix: keyswap login anthropic dead")
    assert by_bucket["bad"].startswith("✘ login anthropic:bad: corrupt — fix: ")
    assert "bad.tok does not decrypt" in by_bucket["bad"]
    assert by_bucket["bad"].endswith("`keyswap logout anthropic bad`")
    issued = [*fake._tokens.access, *fake._tokens.refresh]
    assert issued and not any(token in res.out + res.err for token in issued)
