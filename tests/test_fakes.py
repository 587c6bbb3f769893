"""The fake OAuth server itself, driven with plain httpx (no keyswap code)."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import ssl
import threading
import time
import tomllib
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
import trustme

from tests.fakes import CLIENTS, FakeOAuth

COPILOT_ID = "Iv1.b507a08c87ecfe98"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
JSON = {"Accept": "application/json"}
http = httpx.Client(timeout=10)  # one client: building an SSL context per request is slow
LOOPBACK = "http://127.0.0.1:1455/auth/callback"
GOOGLE_SCOPES = {
    "gemini": "https://www.googleapis.com/auth/cloud-platform "
    "https://www.googleapis.com/auth/userinfo.email",
    "antigravity": "https://www.googleapis.com/auth/cloud-platform "
    "https://www.googleapis.com/auth/cclog https://www.googleapis.com/auth/experimentsandconfigs",
}


@pytest.fixture
def fake() -> Iterator[FakeOAuth]:
    with FakeOAuth() as server:
        server.device_interval = 0.2
        yield server
    assert not server.errors, server.errors[0]


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(64)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def jwt_claims(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    claims: dict[str, object] = json.loads(base64.urlsafe_b64decode(payload + "=" * 4))
    return claims


def query(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


def authorize_params(provider: str, challenge: str | None, redirect_uri: str) -> dict[str, str]:
    params = {
        "client_id": CLIENTS[provider].client_id,
        "response_type": "code",
        "redirect_uri": redirect_uri,
        "state": secrets.token_urlsafe(16),
    }
    if challenge:
        params |= {"code_challenge": challenge, "code_challenge_method": "S256"}
    if provider == "codex":
        params["scope"] = "openid profile email offline_access"
    elif provider == "anthropic":
        params |= {"code": "true", "scope": "org:create_api_key user:profile user:inference"}
    else:
        params |= {"scope": GOOGLE_SCOPES[provider], "access_type": "offline"}
    return params


def authorize(
    fake: FakeOAuth,
    provider: str,
    challenge: str | None,
    redirect_uri: str = LOOPBACK,
    **override: str,
) -> dict[str, str]:
    """Run the authorize step; return the query of the redirect (code/state or error)."""
    params = authorize_params(provider, challenge, redirect_uri) | override
    resp = http.get(fake.endpoints(provider)["authorize"], params=params)
    assert resp.status_code == 302, resp.text
    location = resp.headers["location"]
    assert location.startswith(redirect_uri + "?")
    return query(location)


def token_request(fake: FakeOAuth, provider: str, body: dict[str, str]) -> httpx.Response:
    """POST to the token endpoint in the body encoding that provider's client uses."""
    url = fake.endpoints(provider)["token"]
    if provider == "anthropic":
        return http.post(url, json=body)
    return http.post(url, data=body)


def exchange(
    fake: FakeOAuth, provider: str, code: str, verifier: str | None, **extra: str
) -> httpx.Response:
    client = CLIENTS[provider]
    body = {
        "grant_type": "authorization_code",
        "client_id": client.client_id,
        "code": code,
        "redirect_uri": LOOPBACK,
        **({"code_verifier": verifier} if verifier else {}),
        **({"client_secret": client.secret} if client.secret else {}),
    }
    return token_request(fake, provider, body | extra)


def login(fake: FakeOAuth, provider: str) -> dict[str, str]:
    verifier, challenge = pkce()
    got = authorize(fake, provider, challenge)
    extra = {"state": got["state"]} if provider == "anthropic" else {}
    resp = exchange(fake, provider, got["code"], verifier, **extra)
    assert resp.status_code == 200, resp.text
    tokens: dict[str, str] = resp.json()
    return tokens


def refresh(fake: FakeOAuth, provider: str, token: str, *, as_json: bool = True) -> httpx.Response:
    client = CLIENTS[provider]
    body = {"grant_type": "refresh_token", "refresh_token": token, "client_id": client.client_id}
    if client.secret:
        body["client_secret"] = client.secret
    url = fake.endpoints(provider)["token"]
    return http.post(url, json=body) if as_json else http.post(url, data=body)


# configuration


def test_endpoints_and_config_toml(fake: FakeOAuth) -> None:
    config = tomllib.loads(fake.config_toml(extra="[proxy]\nport = 1\n"))
    assert config["proxy"] == {"port": 1}
    for provider, table in config["providers"].items():
        assert table["endpoints"] == fake.endpoints(provider)
        assert all(url.startswith(fake.base_url + "/") for url in table["endpoints"].values())
    assert set(fake.endpoints("copilot")) == {
        "device_code", "token", "copilot_token", "usage", "user", "api"
    }  # fmt: skip
    assert set(fake.endpoints("codex")) == {
        "authorize", "token", "api",
        "device_usercode", "device_token", "device_verification", "device_redirect_uri",
    }  # fmt: skip
    assert set(fake.endpoints("anthropic")) == {
        "authorize", "token", "redirect_uri", "profile", "api"
    }  # fmt: skip
    for google in ("gemini", "antigravity"):
        assert set(fake.endpoints(google)) == {"authorize", "token", "userinfo", "code_assist"}
    assert list(tomllib.loads(fake.config_toml("codex"))["providers"]) == ["codex"]


# GitHub device flow and Copilot token


def device_code(fake: FakeOAuth, headers: dict[str, str] = JSON) -> httpx.Response:
    url = fake.endpoints("copilot")["device_code"]
    return http.post(url, json={"client_id": COPILOT_ID, "scope": "read:user"}, headers=headers)


def poll(fake: FakeOAuth, code: str, **override: str) -> dict[str, object]:
    body = {"client_id": COPILOT_ID, "device_code": code, "grant_type": DEVICE_GRANT} | override
    resp = http.post(fake.endpoints("copilot")["token"], data=body, headers=JSON)
    assert resp.status_code == 200
    answer: dict[str, object] = resp.json()
    return answer


def test_device_flow_pending_then_approved(fake: FakeOAuth) -> None:
    issued = device_code(fake).json()
    assert issued["interval"] == 0.2
    assert issued["expires_in"] == 900
    assert http.get(issued["verification_uri"]).status_code == 200
    assert poll(fake, issued["device_code"])["error"] == "authorization_pending"
    assert fake.github_approve(login="monalisa") == issued["user_code"]
    time.sleep(0.2)
    token = poll(fake, issued["device_code"])
    assert token["token_type"] == "bearer"
    assert token["scope"] == "read:user"
    assert str(token["access_token"]).startswith("gho_")
    assert fake.count("copilot", "token") == 2
    assert fake.calls[-1].body == {
        "client_id": COPILOT_ID, "device_code": issued["device_code"], "grant_type": DEVICE_GRANT
    }  # fmt: skip
    time.sleep(0.2)
    assert poll(fake, issued["device_code"])["error"] == "incorrect_device_code"  # single use


def test_device_flow_answers_form_unless_json_is_accepted(fake: FakeOAuth) -> None:
    resp = device_code(fake, headers={})
    assert resp.headers["content-type"].startswith("application/x-www-form-urlencoded")
    issued = dict(parse_qsl(resp.text))
    url = fake.endpoints("copilot")["token"]
    body = {"client_id": COPILOT_ID, "device_code": issued["device_code"]}
    pending = http.post(url, data=body | {"grant_type": DEVICE_GRANT})
    assert dict(parse_qsl(pending.text))["error"] == "authorization_pending"


def test_device_poll_errors(fake: FakeOAuth) -> None:
    code = device_code(fake).json()["device_code"]
    assert poll(fake, code, client_id="nope")["error"] == "incorrect_client_credentials"
    assert poll(fake, code, grant_type="password")["error"] == "unsupported_grant_type"
    assert poll(fake, "nope")["error"] == "incorrect_device_code"
    assert device_code(fake, headers=JSON | {"X": "1"}).status_code == 200
    bad = http.post(fake.endpoints("copilot")["device_code"], data={"client_id": "x"})
    assert bad.status_code == 400


def test_polling_too_fast_slows_down(fake: FakeOAuth) -> None:
    code = device_code(fake).json()["device_code"]
    assert poll(fake, code)["error"] == "authorization_pending"
    slow = poll(fake, code)
    assert slow["error"] == "slow_down"
    assert slow["interval"] == 5.2
    assert "error_uri" in slow and "error_description" in slow
    time.sleep(0.2)
    assert poll(fake, code)["interval"] == 10.2  # still too fast for the new interval


def test_slow_down_once(fake: FakeOAuth) -> None:
    fake.slow_down_once = True
    code = device_code(fake).json()["device_code"]
    assert poll(fake, code)["error"] == "slow_down"


def test_device_code_expiry_and_denial(fake: FakeOAuth) -> None:
    fake.device_expires_in = 0.3
    code = device_code(fake).json()["device_code"]
    time.sleep(0.35)
    assert poll(fake, code)["error"] == "expired_token"

    fake.device_expires_in = 900
    code = device_code(fake).json()["device_code"]
    fake.github_expire()
    assert poll(fake, code)["error"] == "expired_token"

    issued = device_code(fake).json()
    fake.github_deny(issued["user_code"])
    assert poll(fake, issued["device_code"])["error"] == "access_denied"
    with pytest.raises(LookupError):
        fake.github_approve(timeout=0.05)  # nothing pending any more


def test_github_approve_waits_for_the_device_code(fake: FakeOAuth) -> None:
    approved: list[str] = []
    waiter = threading.Thread(target=lambda: approved.append(fake.github_approve()))
    waiter.start()
    issued = device_code(fake).json()
    waiter.join(5)
    assert approved == [issued["user_code"]]


def github_token(fake: FakeOAuth, login: str = "octocat") -> str:
    issued = device_code(fake).json()
    fake.github_approve(issued["user_code"], login=login)
    return str(poll(fake, issued["device_code"])["access_token"])


def test_copilot_token_exchange(fake: FakeOAuth) -> None:
    gho = github_token(fake, "monalisa")
    urls = fake.endpoints("copilot")
    for scheme in ("token", "Bearer"):
        resp = http.get(urls["copilot_token"], headers={"Authorization": f"{scheme} {gho}"})
        assert resp.status_code == 200
        body = resp.json()
        assert body["token"].startswith("tid=")
        assert "proxy-ep=proxy.individual.githubcopilot.com" in body["token"]
        assert body["expires_at"] - time.time() == pytest.approx(1800, abs=5)
        assert body["refresh_in"] == 1500
        assert body["endpoints"]["api"] == fake.base_url + "/copilot-api"
        assert body["token"] in fake.valid_copilot_tokens
    assert len(fake.valid_copilot_tokens) == 2
    auth = {"Authorization": f"token {gho}"}
    assert http.get(urls["user"], headers=auth).json()["login"] == "monalisa"
    usage = http.get(urls["usage"], headers=auth).json()
    assert "premium_interactions" in usage["quota_snapshots"]
    assert fake.valid_access_tokens("github") == {gho}

    denied = http.get(urls["copilot_token"], headers={"Authorization": "token gho_nope"})
    assert denied.status_code == 401
    assert denied.json()["message"] == "Bad credentials"
    fake.copilot_api = "http://127.0.0.1:9/elsewhere"
    assert http.get(urls["copilot_token"], headers=auth).json()["endpoints"]["api"] == (
        "http://127.0.0.1:9/elsewhere"
    )


# Codex


def test_codex_pkce(fake: FakeOAuth) -> None:
    verifier, challenge = pkce()
    got = authorize(fake, "codex", challenge)
    assert got["state"] == fake.calls[-1].params["state"]
    wrong = exchange(fake, "codex", got["code"], pkce()[0])
    assert wrong.status_code == 400
    assert wrong.json()["error"] == "invalid_grant"
    assert (
        exchange(fake, "codex", got["code"], verifier, redirect_uri=LOOPBACK + "x").status_code
        == 400
    )
    ok = exchange(fake, "codex", got["code"], verifier)
    assert ok.status_code == 200, ok.text
    tokens = ok.json()
    assert set(tokens) >= {"id_token", "access_token", "refresh_token", "expires_in"}
    for jwt in (tokens["id_token"], tokens["access_token"]):
        claims = jwt_claims(jwt)
        assert claims["email"] == "user@example.com"
        assert claims["https://api.openai.com/auth"] == {
            "chatgpt_account_id": "acct_123",
            "chatgpt_plan_type": "plus",
            "chatgpt_user_id": "user-fake",
        }
        assert int(str(claims["exp"])) - time.time() == pytest.approx(3600, abs=5)
    assert fake.valid_access_tokens("codex") == {tokens["access_token"]}
    assert exchange(fake, "codex", got["code"], verifier).status_code == 400  # single use


@pytest.mark.parametrize(
    "override",
    [
        {"client_id": "app_other"},
        {"code_challenge_method": "plain"},
        {"code_challenge": ""},
        {"state": ""},
        {"scope": "openid profile email"},
        {"response_type": "token"},
        {"redirect_uri": "https://evil.example/cb"},
    ],
)
def test_codex_authorize_rejects(fake: FakeOAuth, override: dict[str, str]) -> None:
    params = authorize_params("codex", pkce()[1], LOOPBACK) | override
    resp = http.get(fake.endpoints("codex")["authorize"], params=params)
    assert resp.status_code == 400
    assert resp.json()["error"] in {"invalid_request", "invalid_client"}


def test_consent_denied(fake: FakeOAuth) -> None:
    fake.deny_consent = True
    got = authorize(fake, "codex", pkce()[1])
    assert got["error"] == "access_denied"
    assert "code" not in got and got["state"]


def test_codex_refresh_rotates_and_rejects_reuse(fake: FakeOAuth) -> None:
    first = login(fake, "codex")
    second = refresh(fake, "codex", first["refresh_token"])
    assert second.status_code == 200, second.text
    new = second.json()
    assert new["refresh_token"] != first["refresh_token"]
    assert {"id_token", "access_token"} <= set(new)
    assert fake.count("codex", "refresh") == 1

    reused = refresh(fake, "codex", first["refresh_token"])
    assert reused.status_code == 401
    assert reused.json()["error"]["code"] == "refresh_token_reused"
    unknown = refresh(fake, "codex", "rt_unknown")
    assert unknown.status_code == 401
    assert unknown.json()["error"]["code"] == "refresh_token_invalidated"
    assert refresh(fake, "codex", new["refresh_token"], as_json=False).status_code == 200


def codex_usercode(fake: FakeOAuth, client_id: str | None = None) -> httpx.Response:
    client_id = client_id or CLIENTS["codex"].client_id
    return http.post(fake.endpoints("codex")["device_usercode"], json={"client_id": client_id})


def codex_device_poll(fake: FakeOAuth, issued: dict[str, str]) -> httpx.Response:
    body = {k: issued[k] for k in ("device_auth_id", "user_code")}
    return http.post(fake.endpoints("codex")["device_token"], json=body)


@pytest.mark.parametrize("pending", [403, 404])
def test_codex_device_code_pending_approved_and_exchanged(fake: FakeOAuth, pending: int) -> None:
    fake.codex_device_pending = pending
    issued = codex_usercode(fake).json()
    assert issued["interval"] == "1", "the interval is a string, as the real server sends it"
    assert issued["device_auth_id"] and issued["user_code"]
    assert http.get(fake.endpoints("codex")["device_verification"]).status_code == 200
    waiting = codex_device_poll(fake, issued)
    assert waiting.status_code == pending
    if pending == 403:
        assert waiting.json()["error"]["code"] == "deviceauth_authorization_pending"
    assert fake.codex_device_approve() == issued["user_code"]
    answer = codex_device_poll(fake, issued).json()
    assert set(answer) == {"authorization_code", "code_challenge", "code_verifier"}
    assert codex_device_poll(fake, issued).status_code == 404, "single use"
    body = {
        "grant_type": "authorization_code",
        "client_id": CLIENTS["codex"].client_id,
        "code": answer["authorization_code"],
        "redirect_uri": fake.endpoints("codex")["device_redirect_uri"],
        "code_verifier": answer["code_verifier"],
    }
    assert token_request(fake, "codex", body | {"redirect_uri": LOOPBACK}).status_code == 400
    tokens = token_request(fake, "codex", body)
    assert tokens.status_code == 200, tokens.text
    claims = jwt_claims(tokens.json()["id_token"])
    assert claims["https://api.openai.com/auth"]["chatgpt_account_id"] == "acct_123"


def test_codex_device_code_disabled_form_and_expiry(fake: FakeOAuth) -> None:
    assert codex_usercode(fake, "app_other").status_code == 400
    url = fake.endpoints("codex")["device_usercode"]
    assert http.post(url, data={"client_id": CLIENTS["codex"].client_id}).status_code == 400
    fake.codex_device_expires_in = 0.2
    issued = codex_usercode(fake).json()
    assert codex_device_poll(fake, issued).status_code == 403
    time.sleep(0.3)
    assert codex_device_poll(fake, issued).status_code == 404, "forgotten after its lifetime"
    with pytest.raises(LookupError):
        fake.codex_device_approve(issued["user_code"], timeout=0.1)
    fake.codex_device_enabled = False
    assert codex_usercode(fake).status_code == 404


def test_concurrent_refreshes_of_one_token_succeed_once(fake: FakeOAuth) -> None:
    token = login(fake, "codex")["refresh_token"]
    barrier = threading.Barrier(8)
    statuses: list[int] = []

    def spend() -> None:
        barrier.wait()
        statuses.append(refresh(fake, "codex", token).status_code)

    threads = [threading.Thread(target=spend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(statuses) == [200] + [401] * 7
    assert fake.wait_for("codex", "refresh", count=8).endpoint == "refresh"
    with pytest.raises(TimeoutError):
        fake.wait_for("codex", "refresh", count=9, timeout=0.05)


# Anthropic


def test_anthropic_manual_paste_and_exchange(fake: FakeOAuth) -> None:
    page = fake.endpoints("anthropic")["redirect_uri"]
    verifier, challenge = pkce()
    params = authorize_params("anthropic", challenge, page)
    resp = http.get(fake.endpoints("anthropic")["authorize"], params=params, follow_redirects=True)
    assert resp.status_code == 200
    pasted = fake.anthropic_last_paste
    assert pasted is not None and f'<code id="auth-code">{pasted}</code>' in resp.text
    code, state = pasted.split("#")
    assert state == params["state"]

    body = {
        "grant_type": "authorization_code",
        "code": code,
        "state": state,
        "client_id": CLIENTS["anthropic"].client_id,
        "redirect_uri": page,
        "code_verifier": verifier,
    }
    url = fake.endpoints("anthropic")["token"]
    form = http.post(url, data=body)
    assert form.status_code == 400
    assert form.json()["error"] == "invalid_request"
    assert http.post(url, json=body | {"state": "other"}).json()["error"] == "invalid_grant"
    tokens = http.post(url, json=body).json()
    assert tokens["access_token"].startswith("sk-ant-oat01-")
    assert tokens["refresh_token"].startswith("sk-ant-ort01-")
    assert tokens["expires_in"] == 28800
    assert tokens["account"]["email_address"] == "user@example.com"
    assert set(tokens["organization"]) == {"uuid", "name"}


def test_anthropic_refresh_rotates_the_pair(fake: FakeOAuth) -> None:
    first = login(fake, "anthropic")
    profile = fake.endpoints("anthropic")["profile"]
    bearer = {"Authorization": f"Bearer {first['access_token']}"}
    assert http.get(profile, headers=bearer).json()["account"]["email"] == "user@example.com"

    assert refresh(fake, "anthropic", first["refresh_token"], as_json=False).status_code == 400
    new = refresh(fake, "anthropic", first["refresh_token"]).json()
    assert new["refresh_token"] != first["refresh_token"]
    assert fake.valid_access_tokens("anthropic") == {new["access_token"]}
    assert http.get(profile, headers=bearer).status_code == 401

    reused = refresh(fake, "anthropic", first["refresh_token"])
    assert reused.status_code == 400
    assert reused.json() == {
        "error": "invalid_grant",
        "error_description": "Refresh token not found or invalid",
    }

    assert fake.revoke_refresh_tokens("anthropic") == 2  # the used one and the live one
    assert refresh(fake, "anthropic", new["refresh_token"]).status_code == 400
    fake.expire("anthropic")
    expired = http.get(profile, headers={"Authorization": f"Bearer {new['access_token']}"})
    assert expired.status_code == 401
    assert "expired" in expired.json()["error"]["message"]


# Google (Gemini, Antigravity)


def test_google_login_without_pkce_and_refresh_does_not_rotate(fake: FakeOAuth) -> None:
    got = authorize(fake, "gemini", None)
    assert fake.calls[-1].provider == "gemini"
    secretless = exchange(fake, "gemini", got["code"], None, client_secret="wrong")
    assert secretless.status_code == 401
    tokens = exchange(fake, "gemini", got["code"], None).json()
    assert tokens["access_token"].startswith("ya29.")
    assert tokens["refresh_token"].startswith("1//")
    assert tokens["expires_in"] == 3599
    assert fake.calls[-1].endpoint == "token"

    again = [refresh(fake, "gemini", tokens["refresh_token"], as_json=False) for _ in range(2)]
    assert [r.status_code for r in again] == [200, 200]
    assert all("refresh_token" not in r.json() for r in again)
    assert fake.count("gemini", "refresh") == 2
    assert len(fake.valid_access_tokens("gemini")) == 3
    assert refresh(fake, "gemini", tokens["refresh_token"]).status_code == 400  # JSON body

    userinfo = fake.endpoints("gemini")["userinfo"]
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert http.get(userinfo, headers=bearer).json()["email"] == "user@example.com"
    bad = http.get(userinfo, headers={"Authorization": "Bearer ya29.nope"})
    assert bad.status_code == 401
    assert bad.json()["error"]["status"] == "UNAUTHENTICATED"

    assert fake.revoke("gemini", tokens["refresh_token"])
    revoked = refresh(fake, "gemini", tokens["refresh_token"], as_json=False)
    assert revoked.status_code == 400
    assert revoked.json()["error_description"] == "Token has been expired or revoked."


def test_antigravity_scopes_and_pkce(fake: FakeOAuth) -> None:
    params = authorize_params("antigravity", None, LOOPBACK)
    params["scope"] = GOOGLE_SCOPES["gemini"]
    narrow = http.get(fake.endpoints("antigravity")["authorize"], params=params)
    assert narrow.status_code == 400

    verifier, challenge = pkce()
    got = authorize(fake, "antigravity", challenge)
    assert exchange(fake, "antigravity", got["code"], None).status_code == 400
    tokens = exchange(fake, "antigravity", got["code"], verifier).json()
    assert fake.valid_access_tokens("antigravity") == {tokens["access_token"]}
    assert fake.valid_access_tokens("gemini") == set()


def code_assist(
    fake: FakeOAuth, provider: str, method: str, token: str, body: object = None
) -> httpx.Response:
    url = fake.endpoints(provider)["code_assist"] + "/v1internal" + method
    headers = {"Authorization": f"Bearer {token}"}
    if body is None:
        return http.get(url, headers=headers)
    return http.post(url, json=body, headers=headers)


METADATA = {
    "ideType": "IDE_UNSPECIFIED",
    "platform": "PLATFORM_UNSPECIFIED",
    "pluginType": "GEMINI",
}


def test_code_assist_existing_and_ineligible(fake: FakeOAuth) -> None:
    token = login(fake, "gemini")["access_token"]
    load = code_assist(fake, "gemini", ":loadCodeAssist", token, {"metadata": METADATA})
    assert load.json()["cloudaicompanionProject"] == "proj-existing"
    assert load.json()["currentTier"]["id"] == "standard-tier"
    assert fake.calls[-1].body == {"metadata": METADATA}

    fake.code_assist_mode["gemini"] = "ineligible"
    load = code_assist(fake, "gemini", ":loadCodeAssist", token, {"metadata": METADATA}).json()
    assert "currentTier" not in load and "allowedTiers" not in load
    assert load["ineligibleTiers"][0]["reasonCode"] == "INELIGIBLE_ACCOUNT"

    assert code_assist(fake, "gemini", ":loadCodeAssist", "ya29.bad", {}).status_code == 401
    assert code_assist(fake, "antigravity", ":loadCodeAssist", token, {}).status_code == 401


def test_code_assist_onboarding_operation(fake: FakeOAuth) -> None:
    fake.code_assist_mode["antigravity"] = "onboard"
    token = login(fake, "antigravity")["access_token"]
    load = code_assist(fake, "antigravity", ":loadCodeAssist", token, {"metadata": METADATA})
    tiers = load.json()["allowedTiers"]
    assert "currentTier" not in load.json()
    assert [t["id"] for t in tiers if t["isDefault"]] == ["standard-tier"]

    body = {"tierId": "free-tier", "metadata": METADATA}
    bad = code_assist(
        fake, "antigravity", ":onboardUser", token, body | {"cloudaicompanionProject": "p"}
    )
    assert bad.status_code == 400
    op = code_assist(fake, "antigravity", ":onboardUser", token, body).json()
    assert op["done"] is False
    name = op["name"]
    first = code_assist(fake, "antigravity", f"/{name}", token).json()
    second = code_assist(fake, "antigravity", f"/{name}", token).json()
    assert first["done"] is False
    assert second["done"] is True
    assert second["response"]["cloudaicompanionProject"]["id"] == "proj-onboarded"
    assert fake.count("antigravity", "operation") == 2
    assert code_assist(fake, "gemini", f"/{name}", token).status_code == 401


# transport


def test_tls() -> None:
    ca = trustme.CA()
    trust = ssl.create_default_context()
    ca.configure_trust(trust)
    with FakeOAuth(tls=ca) as fake:
        assert fake.base_url.startswith("https://127.0.0.1:")
        resp = httpx.post(
            fake.endpoints("copilot")["device_code"],
            json={"client_id": COPILOT_ID},
            headers=JSON,
            verify=trust,
        )
        assert resp.json()["user_code"]
        localhost = fake.base_url.replace("127.0.0.1", "localhost") + "/nope"
        assert httpx.get(localhost, verify=trust).status_code == 404
        with pytest.raises(httpx.ConnectError):
            httpx.get(fake.base_url)  # the system trust store does not know the CA
        assert httpx.get(fake.base_url + "/nope", verify=trust).status_code == 404  # still up


def test_malformed_requests_are_answered(fake: FakeOAuth) -> None:
    url = fake.endpoints("anthropic")["token"]
    headers = {"Content-Type": "application/json"}
    assert http.post(url, content=b"{not json", headers=headers).status_code == 400
    assert http.post(url, content=b"[1, 2]", headers=headers).status_code == 400
    assert (
        http.post(
            url, content=b"\xff\xfe", headers={"Content-Type": "application/x-www-form-urlencoded"}
        ).status_code
        == 400
    )
    assert http.post(url, json={"client_id": 5}).status_code == 401
    assert http.get(url).status_code == 405
    assert http.get(fake.base_url + "/nowhere").json() == {
        "error": "not_found",
        "path": "/nowhere",
    }
    chunked = http.post(url, content=iter([b"{}"]))
    assert chunked.status_code == 400
    assert http.get(fake.base_url + "/nowhere").status_code == 404  # still serving
    assert fake.count("unknown", "not_found") == 2
