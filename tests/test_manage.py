"""The management API at http://keyswap.local/, served by the addon in a real mitmdump,
against the fake OAuth server and fake provider APIs."""

from __future__ import annotations

import json
import re
import ssl
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from login.page import mint
from login.providers import PROVIDERS
from tests.conftest import User
from tests.e2e import Stack, stack
from tests.proxy import Mitmdump, base_env

BASE = "http://keyswap.local"
_CODE = re.compile(r'<code id="auth-code">([^<]+)</code>')
_CSRF = re.compile(r'name="keyswap-csrf" content="([^"]+)"')


@pytest.fixture
def s(user: User, tmp_path: Path) -> Iterator[Stack]:
    with stack(user, tmp_path) as st:
        st.oauth.device_interval = 0.05
        yield st


def client(proxy: Mitmdump, user: User | None = None) -> httpx.Client:
    """A client of the proxy; with `user`, one that sends that user's management secret."""
    verify = ssl.create_default_context(cafile=proxy.ca)
    headers = auth(user) if user is not None else None
    return httpx.Client(proxy=proxy.url, verify=verify, timeout=30, headers=headers)


def secret(user: User) -> str:
    """The per-install secret the proxy writes at start (0600 in the data dir)."""
    path = user.data_dir / "manage.secret"
    deadline = time.monotonic() + 10
    while not path.exists():
        assert time.monotonic() < deadline, "the proxy wrote no manage.secret"
        time.sleep(0.05)
    return path.read_text().strip()


def auth(user: User) -> dict[str, str]:
    return {"X-Keyswap-Secret": secret(user)}


def page_link(user: User) -> str:
    """A one-time link to the page, as `keyswap page` prints it."""
    secret(user)  # the proxy has written the secret the CLI signs with
    res = user.run("page", "--no-browser")
    assert res.code == 0, res.err
    return res.out.strip()


def page_session(c: httpx.Client, user: User) -> tuple[dict[str, str], str]:
    """What a browser holds after opening the link: the session cookie (as a header) and the
    page's CSRF token."""
    opened = c.get(page_link(user))
    assert opened.status_code == 303, opened.text
    c.cookies.clear()  # sent explicitly, so that a test can also leave it out
    jar = {"Cookie": opened.headers["set-cookie"].split(";", 1)[0]}
    page = c.get(f"{BASE}/", headers=jar).text
    return jar, _CSRF.search(page).group(1)  # type: ignore[union-attr]


def wait_until(check: Callable[[], Any], timeout: float = 15, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def bucket(c: httpx.Client, provider: str, name: str) -> dict[str, Any] | None:
    resp = c.get(f"{BASE}/api/auth/status/{provider}")
    assert resp.status_code == 200, resp.text
    found = [b for b in resp.json()["buckets"] if b["bucket"] == name]
    return found[0] if found else None


def copilot_chat(proxy: Mitmdump, placeholder: str) -> httpx.Response:
    with client(proxy) as c:
        return c.post(
            "https://api.githubcopilot.com/chat/completions",
            headers={"Authorization": f"Bearer {placeholder}"},
            json={"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]},
        )


# -- reading ----------------------------------------------------------------------------------


def test_providers_lists_everything_and_never_a_token(s: Stack) -> None:
    s.login_copilot()
    s.login_anthropic("work")
    secrets = [*s.stored("copilot", "default").values(), *s.stored("anthropic", "work").values()]
    assert s.token("copilot", "default") in secrets
    with s.proxy() as proxy, client(proxy, s.user) as c:
        listing = c.get(f"{BASE}/api/auth/providers")
        status = c.get(f"{BASE}/api/auth/status/copilot")
        models = c.get(f"{BASE}/api/auth/models/copilot")
        page = c.get(f"{BASE}/")
        ok = copilot_chat(proxy, "oauth:copilot")
        after = c.get(f"{BASE}/api/auth/providers")
    assert listing.status_code == 200 and listing.headers["cache-control"] == "no-store"
    providers = {p["name"]: p for p in listing.json()["providers"]}
    assert set(providers) == set(PROVIDERS)
    copilot = providers["copilot"]
    assert copilot["title"] == "GitHub Copilot" and copilot["flow"] == "device"
    [default] = copilot["buckets"]
    assert default["bucket"] == "default" and default["account"] == "octocat"
    assert default["state"] == "valid" and default["expires_at"] > time.time()
    assert default["cooling_until"] is None and default["served"] == 0
    assert [b["bucket"] for b in providers["anthropic"]["buckets"]] == ["work"]
    assert providers["codex"]["buckets"] == []
    assert status.json()["buckets"][0]["account"] == "octocat"
    assert ok.status_code == 200
    served = {b["bucket"]: b for b in after.json()["providers"][0]["buckets"]}
    assert served["default"]["served"] == 1 and sum(served["default"]["history"]["served"]) == 1
    # No answer carries a token: neither the access tokens nor what mints them.
    for resp in (listing, status, models, page, after):
        for value in secrets:
            assert value and value not in resp.text
    for value in secrets:
        assert value not in proxy.output


def test_https_keyswap_local_works_too(s: Stack) -> None:
    with s.proxy() as proxy, client(proxy, s.user) as c:
        api = c.get("https://keyswap.local/api/auth/providers")
        page = c.get("https://keyswap.local/")
        opened = c.get(f"https://keyswap.local/auth?t={mint(secret(s.user))}")
    assert api.status_code == 200 and len(api.json()["providers"]) == len(PROVIDERS)
    assert opened.status_code == 303 and "; Secure" in opened.headers["set-cookie"]
    assert page.status_code == 200 and "<title>keyswap</title>" in page.text
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "Name or service not known" not in proxy.output, "keyswap.local was never dialled"


def test_https_with_eager_connections(s: Stack) -> None:
    """mitmproxy's default strategy dials the CONNECT target first; not for keyswap.local."""
    proxy = Mitmdump(
        s.workdir,
        base_env(s.user.env),
        "--set",
        f"keyswap_config={s.user.config}",
        upstream_ca=s.ca_pem,
    )
    proxy.argv[proxy.argv.index("connection_strategy=lazy")] = "connection_strategy=eager"
    with proxy, client(proxy, s.user) as c:
        resp = c.get("https://keyswap.local/api/auth/status/copilot")
    assert resp.status_code == 200 and resp.json()["name"] == "copilot"
    assert "establishing server connection" not in proxy.output


def test_models(s: Stack) -> None:
    s.login_copilot()
    with s.proxy() as proxy, client(proxy, s.user) as c:
        copilot = c.get(f"{BASE}/api/auth/models/copilot")
        gemini = c.get(f"{BASE}/api/auth/models/gemini")
        anthropic = c.get(f"{BASE}/api/auth/models/anthropic")
        nobody = c.get(f"{BASE}/api/auth/models/copilot?bucket=nobody")
        unknown = c.get(f"{BASE}/api/auth/models/nope")
    assert copilot.status_code == 200, copilot.text
    ids = [m["id"] for m in copilot.json()["models"]]
    assert ids == ["gpt-4.1", "gpt-5-codex", "claude-sonnet-4.5"]
    assert copilot.json()["source"].endswith("/models")
    listed = list(getattr(PROVIDERS["gemini"], "models"))
    assert [m["id"] for m in gemini.json()["models"]] == listed and listed
    assert anthropic.json()["models"] is None and "does not list" in anthropic.json()["detail"]
    assert nobody.status_code == 409 and "keyswap login copilot nobody" in nobody.text
    assert unknown.status_code == 404 and "unknown provider" in unknown.text


# -- logging in and out -----------------------------------------------------------------------


def test_device_login_through_the_api(s: Stack) -> None:
    with s.proxy() as proxy, client(proxy, s.user) as c:
        resp = c.post(f"{BASE}/api/auth/login/copilot?bucket=work", headers=auth(s.user))
        assert resp.status_code == 200, resp.text
        login = resp.json()["login"]
        assert login["state"] == "waiting" and login["flow"] == "device"
        assert login["verification_uri"].startswith(s.oauth.base_url)
        assert bucket(c, "copilot", "work") is None
        s.oauth.github_approve(login["user_code"])
        work = wait_until(
            lambda: (b := bucket(c, "copilot", "work")) and b["state"] == "valid" and b,
            what="copilot/work to become valid",
        )
        assert work["account"] == "octocat"
        logins = c.get(f"{BASE}/api/auth/status/copilot").json()["logins"]
        assert [(x["id"], x["state"]) for x in logins] == [(login["id"], "done")]
        # The proxy uses the new login at once.
        assert copilot_chat(proxy, "oauth:copilot:work").status_code == 200
        assert copilot_chat(proxy, "oauth:copilot").status_code == 200
    status = s.user.run("status", "--json")
    assert [(e["provider"], e["bucket"]) for e in json.loads(status.out)] == [("copilot", "work")]


def test_logout(s: Stack) -> None:
    s.login_copilot()
    s.login_copilot("second")
    with s.proxy() as proxy, client(proxy, s.user) as c:
        resp = c.post(f"{BASE}/api/auth/logout/copilot?bucket=second", headers=auth(s.user))
        assert resp.status_code == 200 and resp.json()["removed"] == ["second"]
        names = [b["bucket"] for b in c.get(f"{BASE}/api/auth/status/copilot").json()["buckets"]]
        assert names == ["default"]
        again = c.post(f"{BASE}/api/auth/logout/copilot?bucket=second", headers=auth(s.user))
        assert again.status_code == 404 and "not logged in" in again.text
        every = c.post(f"{BASE}/api/auth/logout/copilot?all=1", headers=auth(s.user))
        assert every.json()["removed"] == ["default"]
        assert copilot_chat(proxy, "oauth:copilot").status_code == 401
    assert json.loads(s.user.run("status", "--json").out) == []


def test_paste_login_through_the_api(s: Stack) -> None:
    """Anthropic shows a code#state to paste: the page's paste box feeds it to the flow."""
    with s.proxy() as proxy, client(proxy, s.user) as c:
        resp = c.post(f"{BASE}/api/auth/login/anthropic", headers=auth(s.user))
        assert resp.status_code == 200, resp.text
        login = resp.json()["login"]
        assert login["authorize_url"].startswith(s.oauth.base_url) and login["accepts_paste"]
        location = httpx.get(login["authorize_url"], follow_redirects=False).headers["location"]
        code = _CODE.search(httpx.get(location).text).group(1)
        bad = c.post(
            f"{BASE}/api/auth/paste/anthropic", headers=auth(s.user), json={"code": "?"}
        ).json()["login"]
        assert bad["state"] == "waiting" and "not a code" in bad["steps"][-1]
        c.post(f"{BASE}/api/auth/paste/anthropic", headers=auth(s.user), json={"code": code})
        wait_until(
            lambda: (b := bucket(c, "anthropic", "default")) and b["state"] == "valid",
            what="anthropic/default to become valid",
        )
    assert code not in proxy.output, "the pasted code is kept out of the flow log"


def test_loopback_callback_runs_in_the_addon(s: Stack) -> None:
    """Codex's browser sign-in comes back to a loopback listener inside the proxy."""
    with s.proxy() as proxy, client(proxy, s.user) as c:
        resp = c.post(f"{BASE}/api/auth/login/codex?bucket=me", headers=auth(s.user))
        login = resp.json()["login"]
        assert login["listening"] is True, resp.text
        location = httpx.get(login["authorize_url"], follow_redirects=False).headers["location"]
        assert location.startswith(f"http://localhost:{s.codex_port}/")
        assert "Signed in" in httpx.get(location).text
        me = wait_until(
            lambda: (b := bucket(c, "codex", "me")) and b["state"] == "valid" and b,
            what="codex/me to become valid",
        )
    assert me["account"] == s.oauth.codex_email
    assert proxy.output


def test_a_new_login_replaces_a_running_one_and_cancel_stops_it(s: Stack) -> None:
    with s.proxy() as proxy, client(proxy, s.user) as c:
        first = c.post(f"{BASE}/api/auth/login/codex", headers=auth(s.user)).json()["login"]
        second = c.post(f"{BASE}/api/auth/login/codex", headers=auth(s.user)).json()["login"]
        assert second["listening"], "the first login freed the callback port"
        states = {
            x["id"]: x["state"] for x in c.get(f"{BASE}/api/auth/status/codex").json()["logins"]
        }
        assert states == {second["id"]: "waiting"} and first["id"] != second["id"]
        stop = c.post(f"{BASE}/api/auth/cancel/codex", headers=auth(s.user))
        assert stop.status_code == 200 and stop.json()["login"]["state"] == "cancelled"
        again = c.post(f"{BASE}/api/auth/cancel/codex", headers=auth(s.user))
        assert again.status_code == 409
    assert proxy.output


# -- cooldowns --------------------------------------------------------------------------------


def test_reset_clears_a_cooldown(s: Stack) -> None:
    token = s.login_copilot()
    s.api.rate_limit("copilot", token=token, seconds=120)
    with s.proxy() as proxy, client(proxy, s.user) as c:
        assert copilot_chat(proxy, "oauth:copilot").status_code == 429
        resting = bucket(c, "copilot", "default")
        assert resting is not None
        assert 100 < resting["cooling_until"] - time.time() <= 121
        assert resting["limited"] == 1 and sum(resting["history"]["limited"]) == 1
        assert copilot_chat(proxy, "oauth:copilot").status_code == 429, "still resting"
        reset = c.post(f"{BASE}/api/buckets/copilot/default/reset", headers=auth(s.user))
        assert reset.status_code == 200 and reset.json()["was_cooling_until"]
        assert bucket(c, "copilot", "default")["cooling_until"] is None  # type: ignore[index]
        assert copilot_chat(proxy, "oauth:copilot").status_code == 200


# -- protection -------------------------------------------------------------------------------


def test_cross_site_and_unauthenticated_calls_are_refused(s: Stack) -> None:
    s.login_copilot()
    with s.proxy() as proxy, client(proxy) as c:
        jar, csrf = page_session(c, s.user)
        page = c.get(f"{BASE}/", headers=jar).text
        logout = f"{BASE}/api/auth/logout/copilot"
        evil = {"Origin": "https://evil.example", **jar}
        refused = {
            "cross-site": c.post(logout, headers=evil),
            "cross-site form": c.post(
                logout,
                headers={**evil, "content-type": "application/x-www-form-urlencoded"},
                content=b"bucket=default",
            ),
            "cross-site with the page token": c.post(
                logout, headers={**evil, "X-Keyswap-CSRF": csrf}
            ),
            "cross-site with the secret": c.post(logout, headers={**evil, **auth(s.user)}),
            "cross-site login": c.post(f"{BASE}/api/auth/login/copilot", headers=evil),
            "cross-site reset": c.post(f"{BASE}/api/buckets/copilot/default/reset", headers=evil),
            "session without its token": c.post(logout, headers=jar),
            "sec-fetch-site": c.post(
                logout, headers={**auth(s.user), "Sec-Fetch-Site": "cross-site"}
            ),
            "cross-site read": c.get(f"{BASE}/api/auth/providers", headers=evil),
        }
        unauthenticated = {
            "no credentials": c.post(logout),
            "wrong secret": c.post(logout, headers={"X-Keyswap-Secret": "x" * 43}),
            "page token without the session": c.post(logout, headers={"X-Keyswap-CSRF": csrf}),
            "a session the proxy never made": c.post(
                logout, headers={"Cookie": "keyswap_session=x", "X-Keyswap-CSRF": csrf}
            ),
        }
        for what, resp in [*refused.items(), *unauthenticated.items()]:
            assert resp.status_code == (403 if what in refused else 401), what
            assert "access-control-allow-origin" not in resp.headers, what
        preflight = c.request("OPTIONS", logout, headers=evil)
        assert "access-control-allow-origin" not in preflight.headers
        with client(proxy, s.user) as owner:
            assert bucket(owner, "copilot", "default") is not None, "still logged in"
        wrong_method = c.get(f"{BASE}/api/auth/logout/copilot")
        assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
        # The page itself: its session plus its token.
        same = c.post(logout, headers={**jar, "Origin": BASE, "X-Keyswap-CSRF": csrf})
        assert same.status_code == 200, same.text
    assert secret(s.user) not in proxy.output
    assert secret(s.user) not in page


def test_secret_file_is_private_and_survives_restarts(s: Stack) -> None:
    with s.proxy():
        first = secret(s.user)
    path = s.user.data_dir / "manage.secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    with s.proxy() as proxy, client(proxy) as c:
        assert secret(s.user) == first
        resp = c.post(
            f"{BASE}/api/buckets/copilot/default/reset", headers={"X-Keyswap-Secret": first}
        )
    assert resp.status_code == 200


def test_enabled_is_shown_as_configured(s: Stack) -> None:
    """on, off or not set, with what each does: no config is not "on" (no login on first use)."""
    s.configure("[providers.copilot]\nenabled = true\n[providers.codex]\nenabled = false\n")
    with s.proxy() as proxy, client(proxy, s.user) as c:
        listing = c.get(f"{BASE}/api/auth/providers").json()
        one = c.get(f"{BASE}/api/auth/status/anthropic").json()
    providers = {p["name"]: p for p in listing["providers"]}
    assert providers["copilot"]["enabled"] == "on"
    assert "starts the login in the proxy" in providers["copilot"]["enabled_means"]
    assert providers["codex"]["enabled"] == "off"
    assert "refused" in providers["codex"]["enabled_means"]
    assert providers["anthropic"]["enabled"] == "not set" == one["enabled"]
    assert one["enabled_means"] == (
        "served with the logins made by `keyswap login anthropic`; no login on first use "
        "(`keyswap enable anthropic` turns that on)"
    )


def test_only_clients_on_this_machine(s: Stack) -> None:
    from tests.test_addon import remote_address

    addr = remote_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback address")
    with s.proxy("--listen-host", "0.0.0.0") as proxy:
        verify = ssl.create_default_context(cafile=proxy.ca)
        with httpx.Client(proxy=f"http://{addr}:{proxy.port}", verify=verify) as remote:
            # Without allow_remote another machine cannot use the proxy at all.
            with pytest.raises(httpx.TransportError):
                remote.get(f"{BASE}/api/auth/providers")
    # With it, other machines may use the proxy, but not its page.
    s.configure("[proxy]\nallow_remote = true\n")
    with s.proxy("--listen-host", "0.0.0.0") as proxy:
        verify = ssl.create_default_context(cafile=proxy.ca)
        with httpx.Client(proxy=f"http://{addr}:{proxy.port}", verify=verify) as remote:
            plain = remote.get(f"{BASE}/api/auth/providers")
            with pytest.raises(httpx.ProxyError, match="403"):
                remote.get("https://keyswap.local/api/auth/providers")
    assert plain.status_code == 403 and "only clients on this machine" in plain.text


def test_load_secret_agrees_across_concurrent_starts(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from addon.manage import load_secret

    directory = tmp_path / "keyswap"
    with ThreadPoolExecutor(8) as pool:
        found = set(pool.map(lambda _: load_secret(directory), range(16)))
    assert len(found) == 1
    [value] = found
    assert len(value) >= 40 and value == load_secret(directory)
    assert stat.S_IMODE((directory / "manage.secret").stat().st_mode) == 0o600
    assert [p.name for p in directory.iterdir()] == ["manage.secret"], "no temp files left"
    (directory / "manage.secret").write_text("short\n")
    replaced = load_secret(directory)
    assert replaced != value and len(replaced) >= 40


# -- who may do what: nothing a local program can fetch grants control ------------------------


def test_a_scraped_page_with_a_forged_origin_changes_nothing(s: Stack) -> None:
    """Any program on this machine can fetch the page and set any Origin: neither may grant
    it anything. Without the secret, a page session or a client secret, the API says 401."""
    token = s.login_copilot()
    s.api.rate_limit("copilot", token=token, seconds=120)
    with s.proxy() as proxy, client(proxy) as c:
        assert copilot_chat(proxy, "oauth:copilot").status_code == 429  # copilot/default rests
        page = c.get(f"{BASE}/")
        found = _CSRF.search(page.text)
        forged = {"Origin": BASE, "X-Keyswap-CSRF": found.group(1) if found else "0" * 64}
        attempts = {
            "logout": c.post(f"{BASE}/api/auth/logout/copilot", headers=forged),
            "login": c.post(f"{BASE}/api/auth/login/codex", headers=forged),
            "paste": c.post(
                f"{BASE}/api/auth/paste/anthropic", headers=forged, json={"code": "a#b"}
            ),
            "cancel": c.post(f"{BASE}/api/auth/cancel/codex", headers=forged),
            "reset": c.post(f"{BASE}/api/buckets/copilot/default/reset", headers=forged),
            "read": c.get(f"{BASE}/api/auth/providers", headers=forged),
        }
        for what, resp in attempts.items():
            assert resp.status_code == 401, (what, resp.text)
            assert "keyswap page" in resp.json()["error"], what
        view = c.get(f"{BASE}/api/auth/status/copilot", headers=auth(s.user)).json()
        codex = c.get(f"{BASE}/api/auth/status/codex", headers=auth(s.user)).json()
    # The page without a session says what to do and carries nothing that grants anything.
    assert page.status_code == 200 and "keyswap page" in page.text
    assert found is None and "set-cookie" not in page.headers
    [default] = view["buckets"]
    assert default["state"] == "valid", "still logged in"
    assert default["cooling_until"], "still resting"
    assert codex["logins"] == [], "no login was started"


def test_the_one_time_link_opens_a_session_once(s: Stack) -> None:
    s.login_copilot()
    with s.proxy("--set", "flow_detail=2") as proxy, client(proxy) as c:
        url = page_link(s.user)
        assert url.startswith(f"{BASE}/auth?t=")
        opened = c.get(url)
        assert opened.status_code == 303 and opened.headers["location"] == "/"
        cookie = opened.headers["set-cookie"]
        c.cookies.clear()  # sent explicitly below, so that it can also be left out
        value = cookie.split(";", 1)[0].split("=", 1)[1]
        flags = {f.strip().lower() for f in cookie.split(";")[1:]}
        assert {"httponly", "samesite=strict", "path=/"} <= flags
        assert "secure" not in flags, "plain http: a Secure cookie would never come back"
        jar = {"Cookie": f"keyswap_session={value}"}
        page = c.get(f"{BASE}/", headers=jar)
        csrf = _CSRF.search(page.text).group(1)  # type: ignore[union-attr]
        view = c.get(f"{BASE}/api/auth/status/copilot", headers=jar)
        assert view.status_code == 200 and view.json()["buckets"][0]["account"] == "octocat"
        reset = f"{BASE}/api/buckets/copilot/default/reset"
        # State changes need the session and the CSRF token bound to it, together.
        assert c.post(reset, headers=jar).status_code == 403
        assert c.post(reset, headers={**jar, "X-Keyswap-CSRF": "0" * len(csrf)}).status_code == 403
        assert c.post(reset, headers={"Origin": BASE, "X-Keyswap-CSRF": csrf}).status_code == 401
        same = c.post(reset, headers={**jar, "Origin": BASE, "X-Keyswap-CSRF": csrf})
        assert same.status_code == 200, same.text
        # A second use is refused, and closes the session the first one opened: one of the
        # two was not the user.
        again = c.get(url)
        assert again.status_code == 403 and "already used" in again.text
        assert "set-cookie" not in again.headers
        assert c.get(f"{BASE}/api/auth/providers", headers=jar).status_code == 401
    token = url.split("t=", 1)[1]
    assert token not in proxy.output and csrf not in proxy.output
    assert "keyswap.local/auth?t=(redacted)" in proxy.output
    # mitmproxy shows what it sends, so the one answer that sets the cookie shows it at
    # flow_detail 2; every request that carries it is redacted.
    assert proxy.output.count(value) <= 1


def test_expired_tampered_and_foreign_links_are_refused(s: Stack) -> None:
    from login.page import link_url

    with s.proxy() as proxy, client(proxy) as c:
        key = secret(s.user)
        good = mint(key)
        expires, nonce, mac = good.split(".")
        other = "B" if nonce[-1] == "A" else "A"
        cases = {
            "expired": mint(key, now=time.time() - 600),
            "tampered expiry": f"{int(expires) + 60}.{nonce}.{mac}",
            "tampered nonce": f"{expires}.{nonce[:-1]}{other}.{mac}",
            "another install's": mint("y" * 43),
            "too long-lived": mint(key, ttl=86_400),
            "garbage": "not-a-link",
            "empty": "",
        }
        for what, token in cases.items():
            resp = c.get(link_url(token))
            assert resp.status_code == 403, what
            assert "set-cookie" not in resp.headers, what
            assert "keyswap page" in resp.text, what
        assert c.get(link_url(good)).status_code == 303, "a good link still works"
    assert proxy.output


def test_a_client_sees_and_resets_only_what_its_allow_admits(s: Stack) -> None:
    agent, other = "agent-secret-0123456789", "other-secret-0123456789"
    s.configure(
        f'[clients.agent]\nsecret = "{agent}"\nallow = ["copilot:work"]\n\n'
        f'[clients.other]\nsecret = "{other}"\nallow = ["copilot:home"]\n'
    )
    s.oauth.anthropic_email = "owner@private.example"
    s.login_copilot("work")
    home = s.login_copilot("home")
    s.login_anthropic("me")
    s.api.rate_limit("copilot", token=home, seconds=120)
    with s.proxy("--set", "flow_detail=2") as proxy, client(proxy) as c:
        assert copilot_chat(proxy, f"oauth:copilot#{other}").status_code == 429  # home rests
        # A login is running: its code is the user's, never a client's to see.
        started = c.post(f"{BASE}/api/auth/login/copilot?bucket=new", headers=auth(s.user))
        user_code = started.json()["login"]["user_code"]
        me = {"X-Keyswap-Client": agent}
        listing = c.get(f"{BASE}/api/auth/providers", headers=me)
        status = c.get(f"{BASE}/api/auth/status/copilot", headers=me)
        hidden = c.get(f"{BASE}/api/auth/status/anthropic", headers=me)
        foreign_reset = c.post(f"{BASE}/api/buckets/copilot/home/reset", headers=me)
        own_reset = c.post(f"{BASE}/api/buckets/copilot/work/reset", headers=me)
        users_own = {
            "login": c.post(f"{BASE}/api/auth/login/copilot?bucket=work", headers=me),
            "logout": c.post(f"{BASE}/api/auth/logout/copilot?bucket=work", headers=me),
            "paste": c.post(f"{BASE}/api/auth/paste/copilot", headers=me, json={"code": "x"}),
            "cancel": c.post(f"{BASE}/api/auth/cancel/copilot?bucket=new", headers=me),
        }
        stranger = c.get(f"{BASE}/api/auth/providers", headers={"X-Keyswap-Client": "x" * 24})
        # The secret still sees everything.
        full = c.get(f"{BASE}/api/auth/providers", headers=auth(s.user))
    assert listing.status_code == 200, listing.text
    [copilot] = listing.json()["providers"]
    assert copilot["name"] == "copilot" and [b["bucket"] for b in copilot["buckets"]] == ["work"]
    assert copilot["buckets"][0]["state"] == "valid" and copilot["logins"] == []
    for resp in (listing, status):
        assert "owner@private.example" not in resp.text and "octocat" not in resp.text
        assert user_code not in resp.text and "home" not in resp.text
    assert [b["bucket"] for b in status.json()["buckets"]] == ["work"]
    assert hidden.status_code == 403 and "may not use anthropic" in hidden.text
    assert foreign_reset.status_code == 403 and own_reset.status_code == 200
    for what, resp in users_own.items():
        assert resp.status_code == 403 and "user's" in resp.json()["error"], what
    everyone = {p["name"]: p for p in full.json()["providers"]}
    assert stranger.status_code == 401 and "unknown client secret" in stranger.text
    assert [b["account"] for b in everyone["anthropic"]["buckets"]] == ["owner@private.example"]
    assert {b["bucket"] for b in everyone["copilot"]["buckets"]} == {"home", "work"}
    copilot_home = [b for b in everyone["copilot"]["buckets"] if b["bucket"] == "home"]
    assert copilot_home[0]["cooling_until"], "the foreign bucket still rests"
    assert agent not in proxy.output and other not in proxy.output


def test_page_link_needs_the_secret_the_proxy_writes(user: User) -> None:
    res = user.run("page", "--no-browser")
    assert res.code == 1 and res.out == ""
    assert "no management secret" in res.err and "start the proxy once" in res.err


def test_a_login_that_names_a_foreign_api_host_gets_no_token_anywhere(s: Stack) -> None:
    """The Copilot token exchange names the API host; one outside githubcopilot.com is
    refused by the one delivery gate, with the same 502 and message on every path."""
    s.oauth.copilot_api = "https://api.evil.example"
    s.login_copilot()
    refusal = (
        "refusing to send a copilot token to https://api.evil.example: "
        "it is not one of copilot's API hosts"
    )
    with s.proxy() as proxy, client(proxy, s.user) as c:
        chat = copilot_chat(proxy, "oauth:copilot")
        models = c.get(f"{BASE}/api/auth/models/copilot")
    assert chat.status_code == 502 and refusal in chat.json()["error"]["message"], chat.text
    assert models.status_code == 502 and refusal in models.json()["error"], models.text


# -- usage ------------------------------------------------------------------------------------


def save_state(user: User, buckets: dict[str, Any]) -> None:
    """What an earlier run of the proxy saved; the proxy restores it when it starts."""
    path = user.data_dir / "state.json"
    path.write_text(json.dumps({"version": 1, "saved": time.time(), "buckets": buckets}))
    path.chmod(0o600)


def usage_of(resp: httpx.Response) -> dict[tuple[str, str], dict[str, Any]]:
    assert resp.status_code == 200, resp.text
    return {(p["name"], b["bucket"]): b for p in resp.json()["providers"] for b in p["buckets"]}


def test_usage_shows_windows_cooldowns_traffic_and_conversations(s: Stack) -> None:
    agent, owner = "agent-secret-0123456789", "owner-secret-0123456789"
    s.configure(
        f'[clients.agent]\nsecret = "{agent}"\nallow = ["copilot:work"]\n\n'
        f'[clients.owner]\nsecret = "{owner}"\n'
    )
    tokens = [s.login_copilot("work"), s.login_copilot("home")]
    now = time.time()
    premium = {"name": "premium", "resets_at": now + 7200, "minutes": None, "status": None}
    save_state(
        s.user,
        {
            "copilot:work": {
                "windows": [{**premium, "used": 0.3}],
                "updated": now - 60,
                "last_error": "HTTP 503",
            },
            "copilot:home": {
                "windows": [{**premium, "used": 0.96}],
                "updated": now - 60,
                "last_429": now - 30,
                "last_error": "HTTP 429",
                "cooling_until": now + 600,
                "served": 7,
                "limited": 2,
            },
        },
    )
    topics = ("the tides of the Severn", "moths at the window")
    with s.proxy() as proxy, client(proxy) as c:

        def restored() -> bool:
            home = usage_of(c.get(f"{BASE}/api/usage", headers=auth(s.user))).get(
                ("copilot", "home")
            )
            return home is not None and home["limited"] == 2

        wait_until(restored, what="the proxy to restore the saved state")
        for topic in topics:  # two new conversations: both go where the headroom is
            with client(proxy) as api:
                chat = api.post(
                    "https://api.githubcopilot.com/chat/completions",
                    headers={"Authorization": f"Bearer oauth:copilot#{owner}"},
                    json={"model": "gpt-4.1", "messages": [{"role": "user", "content": topic}]},
                )
            assert chat.status_code == 200, chat.text
        full = c.get(f"{BASE}/api/usage", headers=auth(s.user))
        scoped = c.get(f"{BASE}/api/usage", headers={"X-Keyswap-Client": agent})
        jar, _ = page_session(c, s.user)
        page = c.get(f"{BASE}/api/usage", headers=jar)
        url, evil = f"{BASE}/api/usage", {"Origin": "https://evil.example", **auth(s.user)}
        refused = {
            "no credentials": (c.get(url), 401),
            "wrong secret": (c.get(url, headers={"X-Keyswap-Secret": "x" * 43}), 401),
            "unknown client": (c.get(url, headers={"X-Keyswap-Client": "y" * 24}), 401),
            "cross-site": (c.get(url, headers=evil), 403),
            "a change": (c.post(url, headers=auth(s.user)), 405),
        }
    shown = usage_of(full)
    assert {p["name"] for p in full.json()["providers"]} == set(PROVIDERS)
    assert [k for k in shown if k[0] == "copilot"] == [("copilot", "home"), ("copilot", "work")]
    work, home = shown["copilot", "work"], shown["copilot", "home"]
    assert set(work) == {
        *("bucket", "windows", "cooling_until", "requests", "limited", "last_429", "last_error"),
        *("usage_updated", "conversations"),
    }
    # The saved window, beside the premium allowance the proxy polls for Copilot itself.
    [window] = [w for w in work["windows"] if w["name"] == "premium"]
    assert (window["name"], window["used"], window["resets_at"]) == ("premium", 0.3, now + 7200)
    assert 7100 < window["resets_in"] <= 7200 and window["minutes"] is None
    assert (work["requests"], work["limited"], work["conversations"]) == (2, 0, 2)
    assert work["cooling_until"] is None and work["usage_updated"] >= now - 60
    assert work["last_error"] == "HTTP 503" and work["last_429"] is None
    assert 500 < home["cooling_until"] - time.time() <= 600
    assert (home["requests"], home["limited"], home["conversations"]) == (7, 2, 0)
    assert (home["last_error"], home["last_429"]) == ("HTTP 429", now - 30)
    assert [w["used"] for w in home["windows"] if w["name"] == "premium"] == [0.96]
    assert set(usage_of(page)) == set(shown), "the page's session reads it all"
    # A client sees its own buckets only, and not the proxy's words about them.
    assert [p["name"] for p in scoped.json()["providers"]] == ["copilot"]
    assert list(usage_of(scoped)) == [("copilot", "work")]
    assert usage_of(scoped)["copilot", "work"]["conversations"] == 2
    assert usage_of(scoped)["copilot", "work"]["last_error"] is None
    for what, (resp, status) in refused.items():
        assert resp.status_code == status, (what, resp.text)
    # Counts, never content; never a token.
    for resp in (full, scoped, page):
        assert not any(t in resp.text for t in (*topics, *tokens, agent, owner))
