"""Hostile request paths and bodies through a real mitmdump: a path that could mean
something outside a route is refused before any token is chosen, and a body of the wrong
shape is a 400 in the API's own error shape, never a 500 with a traceback."""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import User
from tests.e2e import Stack, stack
from tests.proxy import Mitmdump


@pytest.fixture
def s(user: User, tmp_path: Path) -> Iterator[Stack]:
    with stack(user, tmp_path) as st:
        yield st


def send_raw(
    proxy: Mitmdump,
    host: str,
    method: str,
    target: str,
    headers: dict[str, str],
    body: bytes = b"",
) -> tuple[int, bytes]:
    """One request with its target exactly as given: httpx and the SDKs would resolve `..`
    and re-encode the path before it left, which is what an attacker does not do."""
    context = ssl.create_default_context(cafile=proxy.ca)
    conn = http.client.HTTPSConnection("127.0.0.1", proxy.port, context=context, timeout=30)
    conn.set_tunnel(host, 443)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for key, value in {**headers, "content-length": str(len(body))}.items():
            conn.putheader(key, value)
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


_ESCAPES = [
    "/v1/responses/../../v1/files",
    "/v1/responses/%2e%2e/%2e%2e/v1/files",
    "/v1/responses/%2E%2e/%2e%2E/v1/files",
    "/v1/responses/.%2e/.%2e/v1/files",
    "/v1/responses/./../../v1/files",
    "/v1/responses/..%2f..%2fv1/files",
    "/v1/responses/..%2F..%2Fv1%2Ffiles",
    "/v1/responses/..\\..\\v1/files",
    "/v1/responses/..%5c..%5Cv1/files",
    "/v1/responses/..;/..;/v1/files",
    "/v1/responses/..;x=1/..;/v1/files",
    "/v1/responses//..//..//v1/files",
    "/v1/responses/%252e%252e/%252e%252e/v1/files",
    "/v1/responses/%c0%ae%c0%ae/%c0%ae%c0%ae/v1/files",
    "/v1/responses/..%00/v1/files",
    "/v1/responses/../../v1/files?after=/../../x",
    "/v1/models/../../v1/files",
    "/v1/models/%2e%2e",
]
_CODEX_JSON = {"authorization": "Bearer oauth:codex", "content-type": "application/json"}
_BODY = json.dumps({"model": "gpt-5", "input": "hi"}).encode()


def test_paths_that_leave_a_route_get_no_token(s: Stack) -> None:
    """`..`, encoded dots, encoded or back slashes and `;` parameters could take the token
    to another path of the provider's host (here: ChatGPT's backend outside Codex)."""
    token = s.login_codex()
    s.login_google("gemini")
    before = len(s.api.calls)
    answers: dict[str, tuple[int, bytes]] = {}
    with s.proxy() as proxy:
        for target in _ESCAPES:
            answers[target] = send_raw(proxy, "api.openai.com", "POST", target, _CODEX_JSON, _BODY)
        native = "/backend-api/codex/../conversation"
        answers[native] = send_raw(proxy, "chatgpt.com", "POST", native, _CODEX_JSON, _BODY)
        upgrade = {
            "authorization": "Bearer oauth:codex",
            "connection": "Upgrade",
            "upgrade": "websocket",
            "sec-websocket-version": "13",
            "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
        }
        socket_target = "/v1/responses/%2e%2e/%2e%2e/v1/files"
        answers["ws " + socket_target] = send_raw(
            proxy, "api.openai.com", "GET", socket_target, upgrade
        )
        gemini = {"x-goog-api-key": "oauth:gemini", "content-type": "application/json"}
        for target in (
            "/v1beta/models/gemini-2.5-pro/../../../v1internal:generateContent",
            "/v1beta/models/..%2f..%2fx:generateContent",
            "/v1beta/models/a/b:generateContent",
        ):
            answers[target] = send_raw(
                proxy,
                "generativelanguage.googleapis.com",
                "POST",
                target,
                gemini,
                b'{"contents":[]}',
            )
        # The same request on its own path still works.
        ok = send_raw(proxy, "api.openai.com", "POST", "/v1/responses", _CODEX_JSON, _BODY)
        output = proxy.output
    assert ok[0] == 200, ok
    for target, (status, body) in answers.items():
        assert status in (400, 404), f"{target}: {status} {body[:200]!r}"
        assert b"keyswap" in body, f"{target}: keyswap's own answer, {body[:200]!r}"
    # Nothing reached the provider but the one good request, with the token only there.
    sent = s.api.calls[before:]
    assert [(c.provider, c.path) for c in sent] == [("codex", "/backend-api/codex/responses")]
    assert sent[0].headers["authorization"] == f"Bearer {token}"
    assert not s.api.leaks
    assert "Traceback" not in output


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/v1/responses/../../v1/files", "a `..` or `.` segment"),
        ("/v1/responses/..%2fx", "an encoded `/` or `\\`"),
        ("/v1/responses/x\\y", "must be percent-encoded"),
    ],
)
def test_the_refusal_says_what_is_wrong(s: Stack, target: str, expected: str) -> None:
    s.login_codex()
    with s.proxy() as proxy:
        status, body = send_raw(proxy, "api.openai.com", "POST", target, _CODEX_JSON, _BODY)
    assert status == 400
    error = json.loads(body)["error"]
    assert error["type"] == "invalid_request_error", "OpenAI's error shape"
    assert expected in error["message"]


CHAT = ("api.githubcopilot.com", "/chat/completions", {"authorization": "Bearer oauth:copilot"})
COUNT = (
    "generativelanguage.googleapis.com",
    "/v1beta/models/gemini-2.5-pro:countTokens",
    {"x-goog-api-key": "oauth:gemini"},
)
RESPONSES = ("api.openai.com", "/v1/responses", {"authorization": "Bearer oauth:codex"})
MESSAGES = ("api.anthropic.com", "/v1/messages", {"x-api-key": "oauth:copilot"})

_BAD_BODIES = [
    (CHAT, b'{"messages":5}', "messages"),
    (CHAT, b'{"messages":[{"role":"user","content":"hi","type":[1]}]}', "messages.0.type"),
    (CHAT, b'{"messages":[{"role":"user","content":[{"type":{}}]}]}', "messages.0.content"),
    (CHAT, b'{"messages":["hi"]}', "messages.0"),
    (CHAT, b'{"input":[{"role":7}]}', "input"),
    (CHAT, b'{"model":"gpt-4.1","messages":' + b"[" * 100_000, "nested too deeply"),
    (MESSAGES, b'{"messages":[{"role":"user","content":[5]}]}', "messages.0.content"),
    (COUNT, b'{"generateContentRequest":"x"}', "generateContentRequest"),
    (COUNT, b'{"generateContentRequest":[1]}', "generateContentRequest"),
    (COUNT, b'{"contents":{"parts":[]}}', "contents"),
    (COUNT, b"[1]", "JSON object"),
    (RESPONSES, b"[" * 100_000, "nested too deeply"),
    (RESPONSES, b'{"input":"hi","include":"x"}', "include"),
    (RESPONSES, b'{"input":"hi","stream":"yes"}', "stream"),
]


def _shape_ok(host: str, body: bytes) -> bool:
    data = json.loads(body)
    if host.endswith("googleapis.com"):
        return bool(data["error"]["status"] == "INVALID_ARGUMENT" and data["error"]["code"] == 400)
    if host == "api.anthropic.com":
        return bool(data["type"] == "error" and data["error"]["type"] == "invalid_request_error")
    return bool(data["error"]["type"] == "invalid_request_error")


def _message(body: bytes) -> str:
    return str(json.loads(body)["error"]["message"])


@pytest.mark.parametrize("with_rules", [False, True], ids=["plain", "model-rules"])
def test_malformed_bodies_are_400s_in_the_apis_own_shape(s: Stack, with_rules: bool) -> None:
    """With model rules the body is read before the relay too (to pick a bucket)."""
    s.login_copilot()
    s.login_codex()
    s.login_google("gemini")
    if with_rules:
        s.configure(
            '[providers.copilot.bucket.default]\nmodels = ["*"]\n'
            '[providers.codex.bucket.default]\nmodels = ["*"]\n'
            '[providers.gemini.bucket.default]\nmodels = ["*"]\n'
        )
    before = len(s.api.calls)
    answers = []
    with s.proxy() as proxy:
        for (host, path, key), body, expected in _BAD_BODIES:
            headers = {**key, "content-type": "application/json"}
            answers.append(
                (host, path, body, expected, send_raw(proxy, host, "POST", path, headers, body))
            )
        output = proxy.output
    for host, path, body, expected, (status, answer) in answers:
        what = f"{host}{path} {body[:60]!r}"
        assert status == 400, f"{what}: {status} {answer[:300]!r}"
        assert _shape_ok(host, answer), f"{what}: {answer[:300]!r}"
        assert expected in _message(answer), f"{what}: {_message(answer)}"
    assert s.api.calls[before:] == [], "nothing malformed went upstream"
    assert "Traceback" not in output
