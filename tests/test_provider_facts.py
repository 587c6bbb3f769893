"""The adapters' request shapes against the providers' 2026 facts (docs/providers.md): what Copilot
needs to take keyswap for an IDE and what it answers a retired one, Codex's gating of newer
models by client version, and the wait a weekly limit names. In-process where the adapter alone
decides; through a real mitmdump where the wire matters (status, shape, retries)."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
import trustme

from login.credential import Credential
from login.providers import PROVIDERS
from login.providers.base import ApiCall
from login.providers.codex import CLIENT_VERSION
from login.providers.copilot import EDITOR_HEADERS, EDITOR_VERSION, OUTDATED
from tests.conftest import User
from tests.e2e import Stack, stack
from tests.fakes import FakeAPI, FakeOAuth
from tests.proxy import Mitmdump

COPILOT = PROVIDERS["copilot"]
CODEX = PROVIDERS["codex"]


def _cred(provider: str) -> Credential:
    return Credential.model_validate(
        {"provider": provider, "bucket": "default", "access_token": "t", "expires_at": 0}
    )


def _call(method: str, path: str, headers: dict[str, str] | None = None) -> ApiCall:
    return ApiCall(method, path, [], list((headers or {}).items()), b"")


def _headers(provider: str, path: str, client: dict[str, str]) -> dict[str, str]:
    return PROVIDERS[provider].api_headers(_cred(provider), path, client, b"")


# -- Copilot: the editor it requires (docs/providers.md §1.2) --------------------------------


def test_copilot_sends_its_vscode_profile_to_a_client_without_one() -> None:
    out = _headers("copilot", "/chat/completions", {"user-agent": "OpenAI/Python 1.99"})
    assert {k: out[k] for k in EDITOR_HEADERS} == EDITOR_HEADERS
    assert out["Copilot-Integration-Id"] == "vscode-chat"
    assert out["Openai-Intent"] == "conversation-panel"


@pytest.mark.parametrize(
    "editor",
    ["vscode/1.95.0", "vscode/1.106.9", "vscode", "vscode/latest", "garbage"],
)
def test_copilot_replaces_an_older_or_unreadable_vscode_with_its_own(editor: str) -> None:
    """litellm pins vscode/1.95.0 (§1.2): passing that on would only earn the 466 keyswap's
    newer profile avoids, and an Editor-Version Copilot cannot read is its 400."""
    client = {"editor-version": editor, "editor-plugin-version": "copilot-chat/0.1.0"}
    out = _headers("copilot", "/chat/completions", client)
    assert out["Editor-Version"] == EDITOR_VERSION
    assert out["Editor-Plugin-Version"] == EDITOR_HEADERS["Editor-Plugin-Version"]


@pytest.mark.parametrize(
    ("client", "integration"),
    [
        ({"editor-version": "vscode/1.112.0"}, "vscode-chat"),
        ({"editor-version": EDITOR_VERSION}, "vscode-chat"),
        (
            {
                "editor-version": "copilot/1.0.81-6",
                "copilot-integration-id": "copilot-developer-cli",
            },
            None,
        ),
    ],
)
def test_copilot_keeps_a_clients_newer_or_other_editor(
    client: dict[str, str], integration: str | None
) -> None:
    """Copilot retires old editors (466), so keyswap's pinned profile ages; a client that
    names a newer VS Code, or another editor's profile (the Copilot CLI's, §1.2), keeps it
    whole. keyswap adds only the integration id Copilot requires when there is none."""
    headers = {**client, "openai-intent": "conversation-agent", "user-agent": "their-ua/1"}
    out = _headers("copilot", "/responses", headers)
    assert not {"Editor-Version", "Editor-Plugin-Version", "User-Agent"} & out.keys()
    assert out.get("Copilot-Integration-Id") == integration
    assert "Openai-Intent" not in out, "their intent goes with their editor"


def test_copilot_messages_carry_the_messages_proxy_headers() -> None:
    """/v1/messages as litellm sends it (§1.2): messages-proxy intent and interaction type,
    anthropic-version unless the client chose one."""
    out = _headers("copilot", "/v1/messages", {})
    assert out["Openai-Intent"] == out["X-Interaction-Type"] == "messages-proxy"
    assert out["anthropic-version"] == "2023-06-01"
    theirs = _headers("copilot", "/v1/messages", {"anthropic-version": "2024-01-01"})
    assert "anthropic-version" not in theirs


# -- Copilot: HTTP 466, a retired client ---------------------------------------------------------

_COPILOT_466 = json.dumps(
    {
        "error": {
            "message": "bad request: the specified API version is no longer supported. "
            "You may need to update your client to a newer version.\n",
            "type": "error",
        }
    }
).encode()


def _reshaped(call: ApiCall, status: int, body: bytes) -> dict[str, object]:
    reshaper = COPILOT.reshape(call, status)
    assert reshaper is not None and reshaper.content_type == "application/json"
    out = reshaper.feed(body[:10]) + reshaper.feed(body[10:]) + reshaper.end()
    result = json.loads(out)
    assert isinstance(result, dict)
    return result


def test_copilot_466_becomes_an_openai_error_naming_keyswaps_versions() -> None:
    body = _reshaped(_call("POST", "/chat/completions"), OUTDATED, _COPILOT_466)
    error = body["error"]
    assert isinstance(error, dict)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "copilot_client_outdated"
    message = error["message"]
    assert f"keyswap's built-in Editor-Version {EDITOR_VERSION}" in message
    assert "the specified API version is no longer supported" in message
    assert "update keyswap" in message and "Retrying will not help" in message


def test_copilot_466_names_the_clients_own_versions_in_the_anthropic_shape() -> None:
    client = {
        "editor-version": "vscode/1.112.0",
        "editor-plugin-version": "copilot-chat/0.40.0",
        "x-github-api-version": "2025-04-01",
    }
    call = _call("POST", "/v1/messages", client)
    body = _reshaped(call, OUTDATED, b"client not supported")
    assert body["type"] == "error"
    error = body["error"]
    assert isinstance(error, dict) and error["type"] == "invalid_request_error"
    message = error["message"]
    assert "the client's own Editor-Version vscode/1.112.0" in message
    assert "Editor-Plugin-Version copilot-chat/0.40.0" in message
    assert "X-GitHub-Api-Version 2025-04-01" in message
    assert '"client not supported"' in message


def test_copilot_other_answers_are_not_reshaped() -> None:
    for status in (200, 400, 401, 429):
        assert COPILOT.reshape(_call("POST", "/chat/completions"), status) is None


# -- Copilot: a weekly limit's wait (docs/providers.md §1.4) ------------------------------------


@pytest.mark.parametrize(
    ("message", "wait"),
    [
        ("... Please try again in 51 hours. Please review our Terms of Service (...)", 51 * 3600),
        ("Please try again in 90 seconds.", 90),
        ("Please try again in 2 hours 5 minutes.", 2 * 3600 + 300),
        ("Please try again in 1 hour and 30 minutes.", 5400),
        ("Sorry, you've exceeded your weekly rate limit.", None),
    ],
)
def test_copilot_429_message_names_the_wait(message: str, wait: float | None) -> None:
    body = json.dumps({"error": {"message": message, "code": "user_weekly_rate_limited"}})
    assert COPILOT.rate_limit_hint({}, body.encode()) == wait


def test_only_copilot_words_its_wait() -> None:
    body = b'{"error": {"message": "Please try again in 51 hours."}}'
    assert [p.name for p in PROVIDERS.values() if p.rate_limit_hint({}, body)] == ["copilot"]
    assert COPILOT.rate_limit_hint({}, b"not json, no wait") is None


def test_the_fakes_weekly_429_hides_its_length_from_retry_after() -> None:
    """The gap the addon must close: Retry-After says 5 minutes, the message 51 hours."""
    ca = trustme.CA()
    with FakeOAuth() as oauth, FakeAPI(oauth, ca) as api, api.client() as http:
        token = api.mint_token("copilot")
        api.rate_limit("copilot", hint="weekly", seconds=51 * 3600)
        resp = http.post(
            "https://api.githubcopilot.com/chat/completions",
            headers={"Authorization": f"Bearer {token}", **EDITOR_HEADERS}
            | {"Copilot-Integration-Id": "vscode-chat"},
            json={"model": "gpt-4.1", "messages": []},
        )
    assert (resp.status_code, resp.headers["retry-after"]) == (429, "300")
    assert COPILOT.rate_limit_hint(resp.headers, resp.content) == 51 * 3600


# -- Codex: newer models need a newer client (docs/providers.md §2.1) ---------------------------


def test_codex_models_list_names_a_client_version() -> None:
    """The backend lists only the models a `client_version` reaches: a client with none
    (the openai SDK's `GET /v1/models`) gets keyswap's; a Codex CLI's own is kept."""
    prepared = CODEX.prepare(_call("GET", "/models"), _cred("codex"))
    assert isinstance(prepared, ApiCall)
    assert prepared.query == [("client_version", CLIENT_VERSION)]
    theirs = _call("GET", "/models")
    theirs.query = [("client_version", "0.144.0")]
    kept = CODEX.prepare(theirs, _cred("codex"))
    assert isinstance(kept, ApiCall) and kept.query == [("client_version", "0.144.0")]


def test_codex_requests_name_a_client_version() -> None:
    out = _headers("codex", "/responses", {})
    assert (out["originator"], out["version"]) == ("codex_cli_rs", CLIENT_VERSION)
    cli = {"originator": "codex_cli_rs", "version": "0.161.0"}
    assert "version" not in _headers("codex", "/responses", cli), "the CLI's own is kept"


# -- through mitmdump ---------------------------------------------------------------------------


@pytest.fixture
def s(user: User, tmp_path: Path) -> Iterator[Stack]:
    with stack(user, tmp_path) as st:
        yield st


def _http(proxy: Mitmdump) -> httpx.Client:
    verify = ssl.create_default_context(cafile=proxy.ca)
    return httpx.Client(proxy=proxy.url, verify=verify, timeout=30)


def test_a_retired_copilot_client_gets_one_error_in_its_own_shape(
    s: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Copilot's 466 reaches the client once, as an error its SDK reads, naming what was
    refused: no retry, no other bucket tried (every account would refuse the same headers).
    A client naming a newer VS Code of its own is served."""
    s.configure('[providers.copilot]\nbuckets = ["a", "b"]\n')
    s.login_copilot("a")
    s.login_copilot("b")
    s.api.copilot_min_editor = "vscode/1.108.0"  # just past keyswap's
    chat = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}
    with s.proxy() as proxy:
        for key, value in proxy.client_env().items():
            monkeypatch.setenv(key, value)
        client = openai.OpenAI(api_key="oauth:copilot", base_url="https://api.githubcopilot.com")
        with pytest.raises(openai.APIStatusError) as refused:
            client.chat.completions.create(**chat)
        calls = s.api.count("copilot", "chat_completions")
        claude = anthropic.Anthropic(api_key="oauth:copilot")
        with pytest.raises(anthropic.APIStatusError) as refused_messages:
            claude.messages.create(model="claude-sonnet-4.5", max_tokens=5, messages=[])
        newer = {"Editor-Version": "vscode/1.112.0", "Editor-Plugin-Version": "copilot-chat/0.40.0"}
        served = client.chat.completions.create(**chat, extra_headers=newer)
    assert refused.value.status_code == OUTDATED
    assert calls == 1, "one request upstream: no retry, no second bucket"
    error = refused.value.body
    assert isinstance(error, dict) and error["code"] == "copilot_client_outdated"
    assert f"Editor-Version {EDITOR_VERSION}" in error["message"]
    assert refused_messages.value.status_code == OUTDATED
    assert refused_messages.value.body["error"]["type"] == "invalid_request_error"
    assert "no longer serves this client version" in refused_messages.value.message
    assert served.choices
    last = s.api.calls[-1]
    assert last.headers["editor-version"] == "vscode/1.112.0"
    assert last.headers["editor-plugin-version"] == "copilot-chat/0.40.0"


def test_codex_newer_models_through_keyswap(s: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain openai SDK client reaches a model gated by client version (keyswap names its
    Codex version), and sees it in the models list. Where the backend gates by account
    instead, no header helps: its 400 reaches the client once and the bucket stays usable."""
    s.login_codex()
    with s.proxy() as proxy:
        for key, value in proxy.client_env().items():
            monkeypatch.setenv(key, value)
        client = openai.OpenAI(api_key="oauth:codex")
        gated = client.responses.create(model="gpt-6-astra", input="hi")
        with _http(proxy) as http:
            listed = http.get(
                "https://api.openai.com/v1/models", headers={"Authorization": "Bearer oauth:codex"}
            )
        s.api.codex_gate = "account"
        before = s.api.count("codex", "responses")
        with pytest.raises(openai.BadRequestError) as refused:
            client.responses.create(model="gpt-6-astra", input="hi")
        after_refusal = s.api.count("codex", "responses")
        ok = client.responses.create(model="gpt-5", input="hi")  # the bucket does not rest
    assert gated.output_text == s.api.text
    models_call = next(c for c in reversed(s.api.calls) if c.path.endswith("/codex/models"))
    assert models_call.params == {"client_version": CLIENT_VERSION}
    assert "gpt-6-astra" in [m["slug"] for m in listed.json()["models"]]
    assert after_refusal - before == 1
    assert "requires a newer version of Codex" in refused.value.message
    assert ok.output_text == s.api.text


def test_a_weekly_limited_copilot_bucket_rests_as_long_as_the_message_says(s: Stack) -> None:
    token = s.login_copilot()
    s.api.rate_limit("copilot", token=token, hint="weekly", seconds=51 * 3600)
    with s.proxy() as proxy, _http(proxy) as http:
        resp = http.post(
            "https://api.githubcopilot.com/chat/completions",
            headers={"Authorization": "Bearer oauth:copilot"},
            json={"model": "gpt-4.1", "messages": []},
        )
    assert resp.status_code == 429
    assert int(resp.headers["retry-after"]) > 50 * 3600
