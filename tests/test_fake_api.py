"""The fake provider APIs themselves, driven with plain httpx and the official SDKs (no
keyswap code)."""

from __future__ import annotations

import itertools
import json
import threading
import time
import tomllib
from collections.abc import Iterator

import anthropic
import httpx
import httpx2
import openai
import pytest
import trustme

from tests.fakes import FakeAPI, FakeOAuth
from tests.fakes.api import HOSTNAMES

COPILOT_HEADERS = {"editor-version": "vscode/1.107.0", "copilot-integration-id": "vscode-chat"}
CHAT = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}
CODEX_BODY = {"model": "gpt-5", "instructions": "", "input": "hi", "stream": True, "store": False}
MESSAGES = {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": []}
OAUTH_BETA = {"anthropic-beta": "oauth-2025-04-20"}
CODEX_URL = "https://chatgpt.com/backend-api/codex/responses"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def api(ca: trustme.CA) -> Iterator[FakeAPI]:
    with FakeOAuth() as oauth, FakeAPI(oauth, ca) as server:
        yield server
    assert not server.errors, server.errors[0]


@pytest.fixture
def http(api: FakeAPI) -> Iterator[httpx.Client]:
    with api.client() as client:
        yield client


def bearer(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


def codex_headers(api: FakeAPI, token: str) -> dict[str, str]:
    return bearer(token, **{"chatgpt-account-id": api.oauth.codex_account_id})


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def sse_events(resp: httpx.Response) -> Iterator[tuple[float, dict[str, str]]]:
    """(arrival time, fields) of each SSE event as it arrives."""
    fields: dict[str, str] = {}
    for line in resp.iter_lines():
        if not line:
            if fields:
                yield time.monotonic(), fields
            fields = {}
            continue
        name, _, value = line.partition(": ")
        fields[name] = value


# -- transport ------------------------------------------------------------------------------


def test_resolve_toml_sends_every_name_here(api: FakeAPI) -> None:
    table = tomllib.loads(api.resolve_toml())["resolve"]
    assert table == {f"{name}:443": f"127.0.0.1:{api.port}" for name in HOSTNAMES}
    assert "api.anthropic.com" in HOSTNAMES and "cloudcode-pa.googleapis.com" in HOSTNAMES


@pytest.mark.parametrize("name", ["api.anthropic.com", "chatgpt.com", "api.githubcopilot.com"])
def test_certificate_and_host_routing_with_plain_httpx(
    api: FakeAPI, ca: trustme.CA, name: str
) -> None:
    """Dial 127.0.0.1 with SNI and Host set by hand: the certificate verifies for the name."""
    with httpx.Client(verify=api.ssl_context()) as client:
        resp = client.post(
            f"https://127.0.0.1:{api.port}/nowhere",
            headers={"Host": name},
            extensions={"sni_hostname": name},
        )
    assert resp.status_code == 404
    assert api.calls[-1].headers["host"] == name
    with (
        httpx.Client(verify=api.ssl_context()) as client,
        pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        client.get(f"https://127.0.0.1:{api.port}/", extensions={"sni_hostname": "evil.example"})


def test_same_path_different_hosts(api: FakeAPI, http: httpx.Client) -> None:
    copilot = api.mint_token("copilot")
    key = {"x-api-key": "sk-ant-api03-real"}
    assert http.post("https://api.anthropic.com/v1/messages", headers=key, json=MESSAGES)
    resp = http.post(
        "https://api.business.githubcopilot.com/v1/messages",
        headers=bearer(copilot, **COPILOT_HEADERS),
        json=MESSAGES,
    )
    assert resp.status_code == 200 and resp.json()["type"] == "message"
    assert [(c.provider, c.endpoint) for c in api.calls] == [
        ("anthropic", "messages"),
        ("copilot", "messages"),
    ]
    assert resp.status_code == 200
    assert http.get("https://evil.example/v1/messages").status_code == 404
    assert api.calls[-1].provider == "unknown"


# -- streaming ------------------------------------------------------------------------------


def _content(style: str, fields: dict[str, str]) -> str | None:
    """The text delta of an event, if it is one."""
    if fields.get("data", "").startswith("[DONE]"):
        return None
    data = json.loads(fields["data"])
    if style == "chat":
        return data["choices"][0]["delta"].get("content") or None
    if style == "messages":
        return data["delta"]["text"] if data["type"] == "content_block_delta" else None
    if style == "responses":
        return data["delta"] if data["type"] == "response.output_text.delta" else None
    parts = data["response"]["candidates"][0]["content"]["parts"]  # Code Assist
    return str(parts[0]["text"])


STREAMS = {
    "messages": ("anthropic", "https://api.anthropic.com/v1/messages", MESSAGES),
    "chat": ("copilot", "https://api.githubcopilot.com/chat/completions", CHAT),
    "responses": ("codex", CODEX_URL, CODEX_BODY),
    "code_assist": (
        "gemini",
        "https://cloudcode-pa.googleapis.com/v1internal:streamGenerateContent?alt=sse",
        {"model": "gemini-2.5-pro", "project": "p", "request": {"contents": []}},
    ),
}


@pytest.mark.parametrize("style", STREAMS)
def test_events_arrive_one_at_a_time(api: FakeAPI, http: httpx.Client, style: str) -> None:
    provider, url, body = STREAMS[style]
    token = api.mint_token(provider)
    headers = {
        "anthropic": bearer(token, **OAUTH_BETA),
        "copilot": bearer(token, **COPILOT_HEADERS),
        "codex": codex_headers(api, token),
        "gemini": bearer(token),
    }[provider]
    api.stream_events = 4
    arrivals, texts, ids = [], [], []
    with http.stream("POST", url, headers=headers, json={**body, "stream": True}) as resp:
        assert resp.status_code == 200
        assert resp.headers["transfer-encoding"] == "chunked"
        assert resp.headers["content-type"].startswith("text/event-stream")
        for arrived, fields in sse_events(resp):
            ids.append(fields.get("id"))
            text = _content(style, fields)
            if text is not None:
                arrivals.append(arrived)
                texts.append(text)
    assert texts == ["0", "1", "2", "3"]
    assert min(gaps(arrivals)) >= 0.6 * api.event_gap, "events arrived bunched"
    if style != "code_assist":
        assert ids == [str(i) for i in range(len(ids))]
    assert api.streams[-1].finished and not api.disconnects


def test_a_slow_stream_does_not_block_other_requests(api: FakeAPI, http: httpx.Client) -> None:
    api.stream_events = 10
    started = threading.Event()

    def slow() -> None:
        with (
            api.client() as other,
            other.stream(
                "POST",
                "https://api.anthropic.com/v1/messages",
                headers={"x-api-key": "sk-ant-api03-x"},
                json={**MESSAGES, "stream": True},
            ) as resp,
        ):
            for _ in resp.iter_lines():
                started.set()

    thread = threading.Thread(target=slow, daemon=True)
    thread.start()
    assert started.wait(5)
    resp = http.post(
        "https://api.openai.com/v1/chat/completions", headers=bearer("sk-real"), json=CHAT
    )
    assert resp.status_code == 200
    assert not api.streams[0].finished, "answered while the stream is still going"
    thread.join(10)


def test_client_leaving_mid_stream_is_recorded_and_stops_the_stream(
    api: FakeAPI, http: httpx.Client
) -> None:
    token = api.mint_token("anthropic")
    api.stream_events = 200
    with http.stream(
        "POST",
        "https://api.anthropic.com/v1/messages?beta=true",
        headers=bearer(token, **OAUTH_BETA),
        json={**MESSAGES, "stream": True},
    ) as resp:
        for _, fields in sse_events(resp):
            if fields.get("event") == "content_block_delta":
                break
    assert api.wait_for_disconnect(timeout=5) == ("anthropic", "/v1/messages")
    log = api.streams[-1]
    assert log.disconnected and not log.finished
    sent = log.sent
    time.sleep(3 * api.event_gap)
    assert log.sent == sent < log.total, "stopped producing events"


# -- authentication -------------------------------------------------------------------------


def test_copilot_auth_and_required_headers(api: FakeAPI, http: httpx.Client) -> None:
    url = "https://api.individual.githubcopilot.com/chat/completions"
    token = api.mint_token("copilot")
    ok = http.post(url, headers=bearer(token, **COPILOT_HEADERS), json=CHAT)
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "01234"
    for headers in (COPILOT_HEADERS, bearer("tid=unknown", **COPILOT_HEADERS)):
        resp = http.post(url, headers=headers, json=CHAT)
        assert (resp.status_code, resp.text) == (401, "unauthorized: token expired")
    api.oauth.expire("copilot", token)
    assert http.post(url, headers=bearer(token, **COPILOT_HEADERS), json=CHAT).status_code == 401
    fresh = api.mint_token("copilot")
    missing = http.post(url, headers=bearer(fresh, **{"editor-version": "vscode/1"}), json=CHAT)
    assert missing.status_code == 400 and "Copilot-Integration-Id" in missing.text
    models = http.get(
        "https://api.githubcopilot.com/models", headers=bearer(fresh, **COPILOT_HEADERS)
    )
    assert "/v1/messages" in models.json()["data"][2]["supported_endpoints"]
    assert api.count("copilot", "chat_completions") == 5
    assert api.calls[0].headers["authorization"] == f"Bearer {token}"


def test_copilot_wants_a_current_ide(api: FakeAPI, http: httpx.Client) -> None:
    """No Editor-Version is a 400, one it cannot read too; a client older than the floor
    is retired with 466, whichever header names the old version (docs/providers.md §1.2)."""
    url = "https://api.githubcopilot.com/chat/completions"
    token = api.mint_token("copilot")

    def post(**headers: str) -> httpx.Response:
        return http.post(url, headers=bearer(token, **headers), json=CHAT)

    integration = {"copilot-integration-id": "vscode-chat"}
    missing = post(**integration)
    assert (missing.status_code, missing.text) == (
        400,
        "bad request: missing Editor-Version header for IDE auth",
    )
    unreadable = post(**integration, **{"editor-version": "vscode"})
    assert (unreadable.status_code, unreadable.text) == (
        400,
        "bad request: unknown Editor-Version header for IDE auth",
    )
    assert post(**COPILOT_HEADERS).status_code == 200, "no floor by default"
    api.copilot_min_editor = "vscode/1.110.0"
    old = post(**COPILOT_HEADERS)
    assert old.status_code == 466
    assert old.json()["error"]["message"].startswith(
        "bad request: the specified API version is no longer supported."
    )
    assert post(**{**COPILOT_HEADERS, "editor-version": "vscode/1.110.0"}).status_code == 200
    other_editor = {**COPILOT_HEADERS, "editor-version": "copilot/1.0.81-6"}
    assert post(**other_editor).status_code == 200, "the floor is per editor"
    api.copilot_min_editor = None
    api.copilot_min_api_version = "2026-06-01"
    assert post(**COPILOT_HEADERS).status_code == 200, "sending no API version is not old"
    dated = {**COPILOT_HEADERS, "x-github-api-version": "2025-04-01"}
    assert post(**dated).status_code == 466
    dated["x-github-api-version"] = "2026-08-01"
    assert post(**dated).status_code == 200


def test_codex_auth_account_and_body_rules(api: FakeAPI, http: httpx.Client) -> None:
    token = api.mint_token("codex")
    expired = {
        "error": {
            "message": "Provided authentication token is expired. Please try signing in again.",
            "code": "token_expired",
        }
    }
    resp = http.post(CODEX_URL, headers=codex_headers(api, "not-a-token"), json=CODEX_BODY)
    assert (resp.status_code, resp.json()) == (401, expired)
    wrong = bearer(token, **{"chatgpt-account-id": "acct_other"})
    assert http.post(CODEX_URL, headers=wrong, json=CODEX_BODY).status_code == 403
    for change, detail in (
        ({"stream": False}, "Stream must be set to true"),
        ({"store": True}, "Store must be set to false"),
        ({"instructions": None}, "Instructions are required"),
    ):
        resp = http.post(CODEX_URL, headers=codex_headers(api, token), json=CODEX_BODY | change)
        assert (resp.status_code, resp.json()) == (400, {"detail": detail})
    no_store = {k: v for k, v in CODEX_BODY.items() if k != "store"}
    resp = http.post(CODEX_URL, headers=codex_headers(api, token), json=no_store)
    assert resp.json() == {"detail": "Store must be set to false"}
    models = http.get(
        "https://chatgpt.com/backend-api/codex/models?client_version=1.0.0",
        headers=codex_headers(api, token),
    )
    assert models.status_code == 200 and models.json()["models"]
    assert api.calls[-1].params == {"client_version": "1.0.0"}


def test_codex_gates_newer_models_by_client_version(api: FakeAPI, http: httpx.Client) -> None:
    """`/models` lists what the `client_version` reaches; a turn for a model the request's
    `version` does not reach is refused, or always when the gate is the account's."""
    token = api.mint_token("codex")
    models = "https://chatgpt.com/backend-api/codex/models"

    def listed(**params: str) -> list[str]:
        resp = http.get(models, params=params, headers=codex_headers(api, token))
        return [m["slug"] for m in resp.json()["models"]]

    assert "gpt-6-astra" not in listed()
    assert "gpt-6-astra" not in listed(client_version="0.152.9")
    assert "gpt-6-astra" in listed(client_version="0.153.0")
    gated = CODEX_BODY | {"model": "gpt-6-astra"}

    def turn(**headers: str) -> httpx.Response:
        return http.post(CODEX_URL, headers=codex_headers(api, token) | headers, json=gated)

    refused = turn()
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == (
        "The 'gpt-6-astra' model requires a newer version of Codex. "
        "Please upgrade to the latest app or CLI and try again."
    )
    assert turn(version="0.144.0").status_code == 400
    assert turn(version="0.153.0").status_code == 200
    assert http.post(CODEX_URL, headers=codex_headers(api, token), json=CODEX_BODY).is_success
    api.codex_gate = "account"
    assert turn(version="9.9.9").status_code == 400


def test_anthropic_oauth_rules_and_real_keys(api: FakeAPI, http: httpx.Client) -> None:
    url = "https://api.anthropic.com/v1/messages"
    token = api.mint_token("anthropic")

    def post(headers: dict[str, str]) -> httpx.Response:
        return http.post(url, headers=headers, json=MESSAGES)

    ok = post(bearer(token, **{"anthropic-beta": "claude-code-20250219,oauth-2025-04-20"}))
    assert ok.status_code == 200 and ok.json()["content"][0]["text"] == "01234"
    assert post(bearer(token)).json()["error"]["message"] == (
        "OAuth authentication is currently not supported."
    )
    both = post(bearer(token, **OAUTH_BETA, **{"x-api-key": "oauth:anthropic"}))
    assert both.status_code == 401 and both.json()["error"]["message"] == "invalid x-api-key"
    api.oauth.expire("anthropic")
    resp = post(bearer(token, **OAUTH_BETA))
    assert resp.status_code == 401
    assert resp.json() == {
        "type": "error",
        "error": {
            "type": "authentication_error",
            "message": "OAuth token has expired. Please obtain a new token or refresh your "
            "existing token.",
        },
    }
    assert post({"x-api-key": "sk-ant-api03-real"}).status_code == 200
    assert api.calls[-1].headers["x-api-key"] == "sk-ant-api03-real"
    api.anthropic_require_identity = True
    fresh = api.mint_token("anthropic")
    resp = post(bearer(fresh, **OAUTH_BETA))
    assert resp.status_code == 400 and "only authorized for use with Claude Code" in resp.text
    system = [{"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."}]
    resp = http.post(url, headers=bearer(fresh, **OAUTH_BETA), json={**MESSAGES, "system": system})
    assert resp.status_code == 200


def test_openai_real_key_passes(api: FakeAPI, http: httpx.Client) -> None:
    ok = http.post("https://api.openai.com/v1/responses", headers=bearer("sk-real"), json={})
    assert ok.status_code == 200 and ok.json()["output"][0]["content"][0]["text"] == "01234"
    bad = http.post("https://api.openai.com/v1/chat/completions", headers=bearer("oauth:x"))
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"


def test_fail_auth_answers_401_once_even_with_a_valid_token(
    api: FakeAPI, http: httpx.Client
) -> None:
    token = api.mint_token("anthropic")
    api.fail_auth("anthropic")
    headers = bearer(token, **OAUTH_BETA)
    first = http.post("https://api.anthropic.com/v1/messages", headers=headers, json=MESSAGES)
    second = http.post("https://api.anthropic.com/v1/messages", headers=headers, json=MESSAGES)
    assert (first.status_code, second.status_code) == (401, 200)
    assert first.json()["error"]["type"] == "authentication_error"


def test_tokens_at_the_wrong_host_are_recorded_as_leaks(api: FakeAPI, http: httpx.Client) -> None:
    token = api.mint_token("anthropic")
    http.post("https://api.anthropic.com/v1/messages", headers=bearer(token, **OAUTH_BETA))
    assert api.leaks == []
    http.post("https://api.openai.com/v1/chat/completions", headers=bearer(token), json=CHAT)
    assert [(x.provider, x.host, x.where) for x in api.leaks] == [
        ("anthropic", "api.openai.com", "header authorization")
    ]


# -- rate limits ----------------------------------------------------------------------------


def test_copilot_429(api: FakeAPI, http: httpx.Client) -> None:
    token = api.mint_token("copilot")
    api.rate_limit("copilot", seconds=90)
    url = "https://api.githubcopilot.com/responses"
    resp = http.post(url, headers=bearer(token, **COPILOT_HEADERS), json={"input": "x"})
    assert resp.status_code == 429 and resp.headers["retry-after"] == "90"
    assert resp.json()["error"]["code"] == "user_weekly_rate_limited"
    again = http.post(url, headers=bearer(token, **COPILOT_HEADERS), json={"input": "x"})
    assert again.status_code == 200 and again.json()["status"] == "completed"


def test_copilot_weekly_429_says_hours_but_retry_after_minutes(
    api: FakeAPI, http: httpx.Client
) -> None:
    token = api.mint_token("copilot")
    api.rate_limit("copilot", hint="weekly", seconds=51 * 3600)
    url = "https://api.githubcopilot.com/chat/completions"
    resp = http.post(url, headers=bearer(token, **COPILOT_HEADERS), json=CHAT)
    assert (resp.status_code, resp.headers["retry-after"]) == (429, "300")
    error = resp.json()["error"]
    assert error["code"] == "user_weekly_rate_limited"
    assert "Please try again in 51 hours." in error["message"]
    with pytest.raises(ValueError, match="only Copilot"):
        api.rate_limit("codex", hint="weekly")


@pytest.mark.parametrize(
    ("hint", "fields", "header"),
    [
        ("body", {"resets_in_seconds"}, False),
        ("resets_at", {"resets_at"}, False),
        ("retry-after", {"resets_in_seconds", "resets_at"}, True),
        ("none", set(), False),
    ],
)
def test_codex_429_hints(
    api: FakeAPI, http: httpx.Client, hint: str, fields: set[str], header: bool
) -> None:
    token = api.mint_token("codex")
    api.rate_limit("codex", hint=hint, seconds=45)
    resp = http.post(CODEX_URL, headers=codex_headers(api, token), json=CODEX_BODY)
    assert resp.status_code == 429
    error = resp.json()["error"]
    assert error["type"] == "usage_limit_reached" and error["plan_type"] == "plus"
    assert {"resets_in_seconds", "resets_at"} & error.keys() == fields
    assert error.get("resets_in_seconds", 45) == 45
    assert abs(error.get("resets_at", time.time() + 45) - (time.time() + 45)) < 5
    assert ("retry-after" in resp.headers) is header


def test_anthropic_429_only_for_the_named_token(api: FakeAPI, http: httpx.Client) -> None:
    a, b = api.mint_token("anthropic"), api.mint_token("anthropic")
    api.rate_limit("anthropic", token=a, times=2, seconds=120)
    url = "https://api.anthropic.com/v1/messages"
    statuses = [
        http.post(url, headers=bearer(t, **OAUTH_BETA), json=MESSAGES).status_code
        for t in (b, a, b, a, a)
    ]
    assert statuses == [200, 429, 200, 429, 200]
    api.rate_limit("anthropic", token=a, seconds=120)
    resp = http.post(url, headers=bearer(a, **OAUTH_BETA), json=MESSAGES)
    assert resp.headers["anthropic-ratelimit-unified-status"] == "rejected"
    assert resp.headers["retry-after"] == "120"
    assert abs(int(resp.headers["anthropic-ratelimit-unified-reset"]) - (time.time() + 120)) < 5
    assert resp.json()["error"]["type"] == "rate_limit_error"


def test_code_assist_429_and_delegation_to_oauth(api: FakeAPI, http: httpx.Client) -> None:
    token = api.mint_token("antigravity")
    body = {"model": "gemini-2.5-pro", "project": "p", "request": {"contents": []}}
    url = "https://daily-cloudcode-pa.googleapis.com/v1internal:generateContent"
    ok = http.post(url, headers=bearer(token), json=body)
    assert ok.json()["response"]["candidates"][0]["content"]["parts"][0]["text"] == "01234"
    api.rate_limit("antigravity", seconds=7)
    resp = http.post(url, headers=bearer(token), json=body)
    error = resp.json()["error"]
    assert (resp.status_code, error["status"]) == (429, "RESOURCE_EXHAUSTED")
    assert error["details"][-1]["retryDelay"] == "7s"
    load = http.post(
        "https://cloudcode-pa.googleapis.com/v1internal:loadCodeAssist",
        headers=bearer(token),
        json={"metadata": {"ideType": "ANTIGRAVITY"}},
    )
    assert load.json()["cloudaicompanionProject"] == "proj-existing"
    assert api.oauth.count("antigravity", "loadCodeAssist") == 1
    assert api.count("antigravity", "generateContent") == 2


def test_copilot_spent_allowance_is_a_402_without_headers(api: FakeAPI, http: httpx.Client) -> None:
    a, b = api.mint_token("copilot"), api.mint_token("copilot")
    api.exhaust_quota("copilot", token=a)
    url = "https://api.githubcopilot.com/chat/completions"
    other = http.post(url, headers=bearer(b, **COPILOT_HEADERS), json=CHAT)
    resp = http.post(url, headers=bearer(a, **COPILOT_HEADERS), json=CHAT)
    assert other.status_code == 200
    assert resp.status_code == 402
    assert resp.json() == {"error": {"message": "You have no quota", "code": "quota_exceeded"}}
    assert "retry-after" not in resp.headers
    with pytest.raises(ValueError, match="only Copilot"):
        api.exhaust_quota("codex")


# -- usage signals (docs/providers.md §2.5, §5.3) --------------------------------------------

UNIFIED = "anthropic-ratelimit-unified-"


def _anthropic(http: httpx.Client, token: str, **body: object) -> httpx.Response:
    url = "https://api.anthropic.com/v1/messages"
    return http.post(url, headers=bearer(token, **OAUTH_BETA), json={**MESSAGES, **body})


def test_anthropic_answers_report_each_accounts_windows(api: FakeAPI, http: httpx.Client) -> None:
    a, b = api.mint_token("anthropic"), api.mint_token("anthropic")
    api.usage("anthropic", token=a, five_hour=0.96, seven_day=0.2, five_hour_reset=1900000000)
    first, other = _anthropic(http, a), _anthropic(http, b, stream=True)
    h = first.headers
    assert (h[f"{UNIFIED}5h-utilization"], h[f"{UNIFIED}7d-utilization"]) == ("0.96", "0.2")
    assert (h[f"{UNIFIED}5h-status"], h[f"{UNIFIED}status"]) == ("allowed", "allowed")
    assert h[f"{UNIFIED}5h-reset"] == "1900000000"
    assert abs(int(h[f"{UNIFIED}7d-reset"]) - (time.time() + 3 * 86400)) < 5
    assert h[f"{UNIFIED}representative-claim"] == "five_hour"
    assert f"{UNIFIED}overage-utilization" not in h
    # The other account reports the defaults, on a stream too.
    o = other.headers
    assert (o[f"{UNIFIED}5h-utilization"], o[f"{UNIFIED}7d-utilization"]) == ("0.12", "0.03")
    # A later setting starts from the account's own numbers.
    api.usage("anthropic", token=a, seven_day=1.0, overage=0.5)
    h = _anthropic(http, a).headers
    assert (h[f"{UNIFIED}5h-utilization"], h[f"{UNIFIED}7d-status"]) == ("0.96", "rejected")
    assert h[f"{UNIFIED}status"] == "rejected"
    assert h[f"{UNIFIED}overage-utilization"] == "0.5"
    # An API key is no subscription: no windows.
    key = http.post(
        "https://api.anthropic.com/v1/messages",
        headers={"x-api-key": "sk-ant-api03-x"},
        json=MESSAGES,
    )
    assert key.status_code == 200 and f"{UNIFIED}5h-utilization" not in key.headers


def test_anthropic_429_reports_the_full_window(api: FakeAPI, http: httpx.Client) -> None:
    token = api.mint_token("anthropic")
    api.usage("anthropic", token=token, seven_day=0.4)
    api.rate_limit("anthropic", token=token, hint="none")
    h = _anthropic(http, token).headers
    assert (h[f"{UNIFIED}5h-utilization"], h[f"{UNIFIED}5h-status"]) == ("1", "rejected")
    assert h[f"{UNIFIED}7d-utilization"] == "0.4"
    assert not [k for k in h if k.endswith("-reset")], "hint none: no reset at all"


def test_usage_knob_checks_its_names(api: FakeAPI) -> None:
    with pytest.raises(ValueError, match="five_hour"):
        api.usage("anthropic", fivehour=0.5)
    with pytest.raises(ValueError, match="primary"):
        api.usage("codex", five_hour=0.5)
    with pytest.raises(ValueError, match="not 'copilot'"):
        api.usage("copilot", premium=0.5)


def _codex_stream(
    http: httpx.Client, api: FakeAPI, token: str, headers: dict[str, str] | None = None
) -> tuple[httpx.Headers, list[dict[str, str]]]:
    sent = {**codex_headers(api, token), **(headers or {})}
    with http.stream("POST", CODEX_URL, headers=sent, json=CODEX_BODY) as resp:
        assert resp.status_code == 200
        return resp.headers, [fields for _, fields in sse_events(resp)]


def test_codex_answers_and_streams_report_each_accounts_windows(
    api: FakeAPI, http: httpx.Client
) -> None:
    a, b = api.mint_token("codex"), api.mint_token("codex")
    api.usage("codex", token=a, primary=0.96, secondary=0.5, primary_reset=1900000000)
    headers, events = _codex_stream(http, api, a)
    assert headers["x-codex-primary-used-percent"] == "96"
    assert headers["x-codex-primary-window-minutes"] == "300"
    assert headers["x-codex-primary-reset-at"] == "1900000000"
    assert headers["x-codex-secondary-used-percent"] == "50"
    assert headers["x-codex-secondary-window-minutes"] == "10080"
    after = int(headers["x-codex-secondary-reset-after-seconds"])
    assert abs(after - 10080 * 30) < 5
    first = events[0]
    assert (first["event"], first["id"]) == ("codex.rate_limits", "0")
    assert [e["id"] for e in events] == [str(i) for i in range(len(events))]
    data = json.loads(first["data"])
    assert data["type"] == "codex.rate_limits" and data["plan_type"] == "plus"
    limits = data["rate_limits"]
    assert (limits["allowed"], limits["limit_reached"]) == (True, False)
    assert limits["primary"]["used_percent"] == 96
    assert limits["primary"]["window_minutes"] == 300
    assert limits["primary"]["reset_at"] == 1900000000
    assert limits["secondary"]["used_percent"] == 50
    assert json.loads(events[1]["data"])["type"] == "response.created"
    # The other account, and the models listing, report the defaults.
    other, _ = _codex_stream(http, api, b)
    assert other["x-codex-primary-used-percent"] == "12"
    models = http.get("https://chatgpt.com/backend-api/codex/models", headers=codex_headers(api, a))
    assert models.headers["x-codex-primary-used-percent"] == "96"
    # Without the event the stream is the Responses events alone.
    api.codex_rate_limit_event = False
    _, plain = _codex_stream(http, api, a)
    assert json.loads(plain[0]["data"])["type"] == "response.created"
    assert plain[0]["id"] == "0"


def test_codex_429_reports_the_full_window(api: FakeAPI, http: httpx.Client) -> None:
    token = api.mint_token("codex")
    api.usage("codex", token=token, secondary=0.25)
    api.rate_limit("codex", token=token, hint="body", seconds=45)
    resp = http.post(CODEX_URL, headers=codex_headers(api, token), json=CODEX_BODY)
    assert resp.status_code == 429
    h = resp.headers
    assert (h["x-codex-primary-used-percent"], h["x-codex-secondary-used-percent"]) == (
        "100",
        "25",
    )
    assert abs(int(h["x-codex-primary-reset-at"]) - (time.time() + 45)) < 5


# -- which account served which conversation -------------------------------------------------


def test_served_logs_each_conversations_account(api: FakeAPI, http: httpx.Client) -> None:
    a, b = api.mint_token("anthropic"), api.mint_token("anthropic")
    legacy = "user_" + "ab" * 32 + "_account__session_conv-1"
    newer = json.dumps({"device_id": "cd" * 32, "account_uuid": "", "session_id": "conv-2"})
    api.rate_limit("anthropic", token=a, times=1)
    for token, user_id in ((a, legacy), (b, legacy), (b, legacy), (a, newer), (a, "alice")):
        _anthropic(http, token, metadata={"user_id": user_id})
    assert api.accounts("conv-1") == [b, b], "the 429 served nothing"
    assert api.accounts("conv-2") == [a]
    assert api.accounts("conv-1", provider="codex") == []
    assert [(s.token, s.conversation, s.status) for s in api.served] == [
        (a, "conv-1", 429),
        (b, "conv-1", 200),
        (b, "conv-1", 200),
        (a, "conv-2", 200),
        (a, None, 200),
    ]
    assert {s.provider for s in api.served} == {"anthropic"}


def test_served_reads_each_providers_conversation_id(api: FakeAPI, http: httpx.Client) -> None:
    codex, copilot, gemini = (api.mint_token(p) for p in ("codex", "copilot", "gemini"))
    http.post(
        CODEX_URL, headers=codex_headers(api, codex) | {"session_id": "cx-1"}, json=CODEX_BODY
    )
    http.post(
        CODEX_URL, headers=codex_headers(api, codex), json=CODEX_BODY | {"prompt_cache_key": "cx-2"}
    )
    chat = "https://api.githubcopilot.com/chat/completions"
    copilot_headers = bearer(copilot, **COPILOT_HEADERS)
    http.post(chat, headers=copilot_headers | {"x-client-session-id": "cp-1"}, json=CHAT)
    http.post(chat, headers=copilot_headers, json=CHAT | {"user": "cp-2"})
    http.post(chat, headers=copilot_headers, json=CHAT | {"prompt_cache_key": "cp-3"})
    url = "https://cloudcode-pa.googleapis.com/v1internal:generateContent"
    body = {"model": "gemini-2.5-pro", "project": "p", "request": {"contents": []}}
    http.post(url, headers=bearer(gemini), json=body | {"request": {"session_id": "g-1"}})
    http.get("https://chatgpt.com/backend-api/codex/models", headers=codex_headers(api, codex))
    assert [(s.provider, s.token, s.conversation) for s in api.served] == [
        ("codex", codex, "cx-1"),
        ("codex", codex, "cx-2"),
        ("copilot", copilot, "cp-1"),
        ("copilot", copilot, "cp-2"),
        ("copilot", copilot, "cp-3"),
        ("gemini", gemini, "g-1"),
    ], "the models listing is no conversation"


# -- official SDKs --------------------------------------------------------------------------


def test_openai_sdk_streams_chat_and_responses(api: FakeAPI, http: httpx.Client) -> None:
    api.event_gap = 0.005
    client = openai.OpenAI(
        api_key=api.mint_token("copilot"),
        base_url="https://api.githubcopilot.com",
        default_headers=COPILOT_HEADERS,
        http_client=http,
    )
    chunks = client.chat.completions.create(model="gpt-4.1", messages=[], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "01234"
    events = list(client.responses.create(model="gpt-5", input="hi", stream=True))
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "01234"


def test_anthropic_sdk_streams(api: FakeAPI) -> None:
    api.event_gap = 0.005
    client = anthropic.Anthropic(
        auth_token=api.mint_token("anthropic"),
        base_url="https://api.anthropic.com",
        default_headers=OAUTH_BETA,
        http_client=api.client(httpx2),
    )
    with client.messages.stream(model="claude-fake", max_tokens=5, messages=[]) as stream:
        assert "".join(stream.text_stream) == "01234"
    client.close()
