"""The providers' usage hooks, in process (issue 15): the quota windows each answer's headers
and stream events report, what each answer means for the account (`classify`), which
conversation a request belongs to, and Copilot's X-Initiator with trailing reminders. Tables
of what the facts say (docs/providers.md §1.4, §2.5, §3.5, §5.3), odd values, and the fakes'
wire format read back by the providers."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from login.credential import Credential
from login.providers import PROVIDERS
from login.providers.base import ApiCall
from login.providers.usage import Window
from tests.fakes.api import (
    AnthropicUsage,
    CodexUsage,
    anthropic_usage_headers,
    codex_rate_limits_event,
    codex_usage_headers,
)

ANTHROPIC = PROVIDERS["anthropic"]
CODEX = PROVIDERS["codex"]
COPILOT = PROVIDERS["copilot"]
GEMINI = PROVIDERS["gemini"]
ANTIGRAVITY = PROVIDERS["antigravity"]
U = "anthropic-ratelimit-unified-"
RESET = 1_900_000_000.0  # a unix time (2030)
SESSION = "2c4e1cf0-7a67-4d2e-9a4b-1d16d3f44752"
LEGACY = f"user_{'5d' * 32}_account__session_{SESSION}"
JSON_FORM = json.dumps({"device_id": "ab" * 32, "account_uuid": "", "session_id": SESSION})
ODD = ["nan", "NaN", "-1", "-0.5", "inf", "-inf", "abc", "", " ", "1e999", "0x10", "1" * 60]


def _call(
    body: object = b"",
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
    path: str = "/v1/messages",
) -> ApiCall:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    pairs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    return ApiCall("POST", path, [], pairs, raw)


def _near(value: float | None, expected: float, slack: float = 5.0) -> bool:
    return value is not None and abs(value - expected) <= slack


# -- Anthropic: the unified limiter's headers (docs/providers.md §5.3) ------------------------


def test_anthropic_reads_both_windows_of_a_subscription_answer() -> None:
    headers = {
        f"{U}5h-utilization": "0.96",
        f"{U}5h-reset": str(int(RESET)),
        f"{U}5h-status": "allowed_warning",
        f"{U}7d-utilization": "0.2",
        f"{U}7d-reset": str(int(RESET) + 86400),
        f"{U}7d-status": "allowed",
        f"{U}status": "allowed_warning",
        f"{U}representative-claim": "five_hour",
    }
    assert ANTHROPIC.usage_from_headers(headers) == [
        Window("5h", 0.96, RESET, 300.0, "allowed_warning"),
        Window("7d", 0.2, RESET + 86400, 10080.0, "allowed"),
    ]


def test_anthropic_reads_7d_oi_and_the_overage_budget_only_while_in_play() -> None:
    base = {f"{U}7d_oi-utilization": "0.5", f"{U}7d_oi-status": "allowed"}
    names = [w.name for w in ANTHROPIC.usage_from_headers(base)]
    assert names == ["7d_oi"]
    used = {**base, f"{U}overage-utilization": "0.25", f"{U}overage-status": "allowed"}
    overage = ANTHROPIC.usage_from_headers(used)[-1]
    assert overage == Window("overage", 0.25, None, None, "allowed")
    # A status alone declares a policy (e.g. disabled by the organisation), not a use.
    policy = {f"{U}overage-status": "rejected", f"{U}overage-disabled-reason": "org_level_disabled"}
    assert ANTHROPIC.usage_from_headers(policy) == []
    off = {f"{U}overage-utilization": "0.9", f"{U}overage-status": "not_enabled"}
    assert ANTHROPIC.usage_from_headers(off) == []


def test_anthropic_rejected_window_without_utilization_is_full() -> None:
    """A 429's headers may name the rejected window and its reset only."""
    headers = {f"{U}5h-status": "rejected", f"{U}5h-reset": str(int(RESET))}
    assert ANTHROPIC.usage_from_headers(headers) == [Window("5h", 1.0, RESET, 300.0, "rejected")]
    # Allowed without a number says nothing usable.
    assert ANTHROPIC.usage_from_headers({f"{U}5h-status": "allowed"}) == []


@pytest.mark.parametrize("odd", ODD)
def test_anthropic_odd_values_are_skipped(odd: str) -> None:
    headers = {f"{U}5h-utilization": odd, f"{U}7d-utilization": "0.5", f"{U}7d-reset": odd}
    assert ANTHROPIC.usage_from_headers(headers) == [Window("7d", 0.5, None, 10080.0, None)]


def test_anthropic_reset_given_as_seconds_from_now_is_accepted() -> None:
    [window] = ANTHROPIC.usage_from_headers({f"{U}5h-utilization": "0", f"{U}5h-reset": "600"})
    assert _near(window.resets_at, time.time() + 600)


def test_anthropic_status_word_that_is_no_word_is_dropped() -> None:
    headers = {f"{U}5h-utilization": "0.1", f"{U}5h-status": "allowed; with spaces"}
    assert ANTHROPIC.usage_from_headers(headers)[0].status is None


def test_anthropic_no_headers_no_windows() -> None:
    assert ANTHROPIC.usage_from_headers({}) == []
    assert ANTHROPIC.usage_from_headers({"retry-after": "30"}) == []


# -- Codex: x-codex-* headers and the codex.rate_limits event (docs/providers.md §2.5) ---------


def test_codex_reads_percentages_as_fractions() -> None:
    headers = {
        "x-codex-primary-used-percent": "12.5",
        "x-codex-primary-window-minutes": "300",
        "x-codex-primary-reset-at": str(int(RESET)),
        "x-codex-secondary-used-percent": "80",
        "x-codex-secondary-window-minutes": "10080",
        "x-codex-secondary-reset-at": str(int(RESET) + 1),
    }
    assert CODEX.usage_from_headers(headers) == [
        Window("primary", 0.125, RESET, 300.0),
        Window("secondary", 0.8, RESET + 1, 10080.0),
    ]


def test_codex_reset_as_unix_time_or_seconds_from_now() -> None:
    """rate_limits.rs reads `-reset-at` as a unix time; gateways' captures also carry
    `-reset-after-seconds`. A small `-reset-at` is read as seconds from now."""
    now = time.time()
    relative = {"x-codex-primary-used-percent": "1", "x-codex-primary-reset-at": "3600"}
    assert _near(CODEX.usage_from_headers(relative)[0].resets_at, now + 3600)
    after = {"x-codex-primary-used-percent": "1", "x-codex-primary-reset-after-seconds": "90"}
    assert _near(CODEX.usage_from_headers(after)[0].resets_at, now + 90)
    both = {**after, "x-codex-primary-reset-at": str(int(RESET))}
    assert CODEX.usage_from_headers(both)[0].resets_at == RESET


def test_codex_window_that_says_nothing_is_dropped() -> None:
    """As the official client: 0 % with no length and no reset is no window."""
    assert CODEX.usage_from_headers({"x-codex-primary-used-percent": "0"}) == []
    kept = {"x-codex-primary-used-percent": "0", "x-codex-primary-window-minutes": "300"}
    assert CODEX.usage_from_headers(kept) == [Window("primary", 0.0, None, 300.0)]


@pytest.mark.parametrize("odd", ODD)
def test_codex_odd_values_are_skipped(odd: str) -> None:
    headers = {
        "x-codex-primary-used-percent": odd,
        "x-codex-secondary-used-percent": "50",
        "x-codex-secondary-window-minutes": odd,
        "x-codex-secondary-reset-at": odd,
    }
    assert CODEX.usage_from_headers(headers) == [Window("secondary", 0.5, None, None)]


def test_codex_other_limit_families_are_not_the_accounts_windows() -> None:
    headers = {"x-codex-bengalfox-primary-used-percent": "100", "x-codex-active-limit": "x"}
    assert CODEX.usage_from_headers(headers) == []


# A `codex.rate_limits` event as captured from a Pro account (a public gateway's fixture).
CAPTURED_EVENT: dict[str, Any] = {
    "type": "codex.rate_limits",
    "plan_type": "pro",
    "rate_limits": {
        "allowed": True,
        "limit_reached": False,
        "primary": {
            "used_percent": 7,
            "window_minutes": 300,
            "reset_after_seconds": 13168,
            "reset_at": 1779398785,
        },
        "secondary": {
            "used_percent": 29,
            "window_minutes": 10080,
            "reset_after_seconds": 434962,
            "reset_at": 1779820580,
        },
    },
    "code_review_rate_limits": None,
}


def test_codex_reads_the_rate_limits_event() -> None:
    assert CODEX.usage_from_event(CAPTURED_EVENT) == [
        Window("primary", 0.07, 1779398785.0, 300.0),
        Window("secondary", 0.29, 1779820580.0, 10080.0),
    ]


def test_codex_event_with_windows_at_the_top_and_relative_resets() -> None:
    event = {
        "type": "codex.rate_limits",
        "primary": {"used_percent": 100, "reset_after_seconds": 60},
    }
    [window] = CODEX.usage_from_event(event)
    assert window.name == "primary" and window.used == 1.0
    assert _near(window.resets_at, time.time() + 60)


@pytest.mark.parametrize(
    "event",
    [
        {"type": "response.created", "rate_limits": CAPTURED_EVENT["rate_limits"]},
        {**CAPTURED_EVENT, "metered_limit_name": "codex_bengalfox"},
        {**CAPTURED_EVENT, "limit_name": "GPT-5.3-Codex-Spark"},
        {"type": "codex.rate_limits", "rate_limits": None},
        {"type": "codex.rate_limits", "rate_limits": {"primary": "full"}},
        {"type": "codex.rate_limits", "rate_limits": {"primary": {"used_percent": "NaN"}}},
        {"type": "codex.rate_limits", "rate_limits": {"primary": {"used_percent": True}}},
        {"type": "codex.rate_limits", "rate_limits": {"primary": {"used_percent": -3}}},
        {"type": "codex.rate_limits", "rate_limits": {"primary": {"used_percent": 10**400}}},
        {"type": "codex.rate_limits", "rate_limits": {"primary": {"used_percent": float("inf")}}},
        {"type": "codex.rate_limits", "metered_limit_name": 7, "rate_limits": {}},
        {},
    ],
)
def test_codex_events_that_are_not_this_accounts_usage_give_nothing(event: dict[str, Any]) -> None:
    assert CODEX.usage_from_event(event) == []


def test_codex_event_naming_its_default_family_is_read() -> None:
    assert len(CODEX.usage_from_event({**CAPTURED_EVENT, "metered_limit_name": "Codex"})) == 2


def test_codex_event_odd_reset_keeps_the_window_without_a_reset() -> None:
    window = {"used_percent": 50, "window_minutes": 300, "reset_at": "soon"}
    event = {"type": "codex.rate_limits", "rate_limits": {"primary": window}}
    assert CODEX.usage_from_event(event) == [Window("primary", 0.5, None, 300.0)]


@pytest.mark.parametrize("name", [n for n in PROVIDERS if n != "codex"])
def test_other_providers_read_no_stream_events(name: str) -> None:
    """Google's `remainingCredits` has no total and no reset to make a window of."""
    event = {**CAPTURED_EVENT, "remainingCredits": [{"creditType": "x", "creditAmount": "5"}]}
    assert PROVIDERS[name].usage_from_event(event) == []


@pytest.mark.parametrize("name", ["copilot", "gemini", "antigravity"])
def test_providers_without_usage_headers_report_none(name: str) -> None:
    headers = {f"{U}5h-utilization": "0.5", "x-codex-primary-used-percent": "50"}
    assert PROVIDERS[name].usage_from_headers(headers) == []


# -- the fakes' wire format, read back by the providers -----------------------------------------


def test_fake_anthropic_headers_read_back() -> None:
    now = time.time()
    usage = AnthropicUsage(five_hour=0.96, seven_day=0.2, five_hour_reset=RESET, overage=0.5)
    windows = ANTHROPIC.usage_from_headers(dict(anthropic_usage_headers(usage, now)))
    assert [(w.name, w.used, w.status) for w in windows] == [
        ("5h", 0.96, "allowed"),
        ("7d", 0.2, "allowed"),
        ("overage", 0.5, "allowed"),
    ]
    assert windows[0].resets_at == RESET and _near(windows[1].resets_at, now + 3 * 86400)
    full = ANTHROPIC.usage_from_headers(
        dict(anthropic_usage_headers(AnthropicUsage(five_hour=1.0), now, timed=False))
    )
    assert full[0] == Window("5h", 1.0, None, 300.0, "rejected")


def test_fake_codex_headers_and_event_read_back() -> None:
    now = time.time()
    usage = CodexUsage(primary=0.96, secondary=0.5, primary_reset=RESET)
    expected = [
        Window("primary", 0.96, RESET, 300.0),
        Window("secondary", 0.5, float(int(now + 10080 * 30)), 10080.0),
    ]
    assert CODEX.usage_from_headers(dict(codex_usage_headers(usage, now))) == expected
    assert CODEX.usage_from_event(codex_rate_limits_event(usage, now)) == expected


# -- classify: one table per provider ----------------------------------------------------------

FULL_CODEX = {"x-codex-primary-used-percent": "100", "x-codex-primary-window-minutes": "300"}
CLASSIFY = [
    # Anthropic (§5.3)
    ("anthropic", 200, {}, "ok"),
    ("anthropic", 429, {f"{U}5h-status": "rejected"}, "rotate"),
    ("anthropic", 429, {}, "rotate"),
    ("anthropic", 401, {}, "refresh"),
    ("anthropic", 529, {}, "pass"),
    ("anthropic", 400, {}, "pass"),
    ("anthropic", 403, {}, "pass"),
    ("anthropic", 500, {}, "pass"),
    # Codex (§2.5); a 404 with a full window is numman's usage-limit 404
    ("codex", 200, FULL_CODEX, "ok"),
    ("codex", 429, {}, "rotate"),
    ("codex", 401, {}, "refresh"),
    ("codex", 404, FULL_CODEX, "rotate"),
    ("codex", 404, {"x-codex-primary-used-percent": "40"}, "pass"),
    ("codex", 404, {}, "pass"),
    ("codex", 403, {}, "pass"),
    ("codex", 503, {}, "pass"),
    # Copilot (§1.4; 402 quota_exceeded)
    ("copilot", 200, {}, "ok"),
    ("copilot", 429, {"retry-after": "300"}, "rotate"),
    ("copilot", 402, {}, "rotate"),
    ("copilot", 401, {}, "refresh"),
    ("copilot", 466, {}, "pass"),
    ("copilot", 403, {}, "pass"),
    ("copilot", 400, {}, "pass"),
    # Google (§3.5)
    ("gemini", 429, {}, "rotate"),
    ("gemini", 401, {}, "refresh"),
    ("gemini", 403, {}, "pass"),
    ("gemini", 400, {}, "pass"),
    ("gemini", 200, {}, "ok"),
    ("antigravity", 429, {}, "rotate"),
    ("antigravity", 401, {}, "refresh"),
    ("antigravity", 403, {}, "pass"),
]


@pytest.mark.parametrize(("name", "status", "headers", "outcome"), CLASSIFY)
def test_classify(name: str, status: int, headers: dict[str, str], outcome: str) -> None:
    assert PROVIDERS[name].classify(status, headers) == outcome


# -- conversation ------------------------------------------------------------------------------


def _messages(user_id: object, *extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4-5",
        "messages": [{"role": "user", "content": "hi"}, *extra],
        "system": [{"type": "text", "text": "You are Claude Code."}],
        "metadata": {"user_id": user_id},
        "max_tokens": 100,
    }


@pytest.mark.parametrize("user_id", [LEGACY, JSON_FORM])
def test_anthropic_conversation_is_claude_codes_session(user_id: str) -> None:
    assert ANTHROPIC.conversation(_call(_messages(user_id))) == f"claude-session:{SESSION}"


def test_anthropic_legacy_form_with_an_account() -> None:
    account = "0f3c2a1b-aaaa-bbbb-cccc-1234567890ab"
    user_id = f"user_{'a1' * 32}_account_{account}_session_{SESSION}"
    assert ANTHROPIC.conversation(_call(_messages(user_id))) == f"claude-session:{SESSION}"


@pytest.mark.parametrize(
    "user_id",
    [
        "alice",  # an SDK user's own id: no session
        f"user_{'5d' * 32}_session_{SESSION}",  # no account part
        f"user_{'5d' * 32}_account__session_",  # empty session
        f"user_{'5d' * 32}_account__session_has space",
        json.dumps({"device_id": "x", "account_uuid": ""}),
        json.dumps({"session_id": 7}),
        "{not json",
        7,
        None,
    ],
)
def test_anthropic_no_session_no_conversation(user_id: object) -> None:
    assert ANTHROPIC.conversation(_call(_messages(user_id))) is None


def test_anthropic_no_metadata_or_no_body() -> None:
    body = _messages(LEGACY)
    del body["metadata"]
    assert ANTHROPIC.conversation(_call(body)) is None
    assert ANTHROPIC.conversation(_call(b"")) is None


def test_anthropic_quoted_user_id_inside_the_conversation_is_not_the_session() -> None:
    """A message quoting JSON holds `\\"user_id\\"`, escaped: never the request's own."""
    quoted = json.dumps({"metadata": {"user_id": f"user_ab_account__session_{'e' * 8}"}})
    body = _messages(LEGACY, {"role": "assistant", "content": quoted})
    assert ANTHROPIC.conversation(_call(body)) == f"claude-session:{SESSION}"


def test_anthropic_a_tool_input_named_user_id_does_not_hide_the_session() -> None:
    """Tool inputs are real JSON: a `user_id` key there comes before or after metadata."""
    tool = {"type": "tool_use", "id": "t1", "name": "lookup", "input": {"user_id": "bob"}}
    before = _messages(LEGACY, {"role": "assistant", "content": [tool]})
    assert ANTHROPIC.conversation(_call(before)) == f"claude-session:{SESSION}"
    after = {**_messages(LEGACY), "tools_used": [{"user_id": "bob"}, {"user_id": "carol"}]}
    assert ANTHROPIC.conversation(_call(after)) == f"claude-session:{SESSION}"


def test_anthropic_conversation_does_not_parse_a_large_body() -> None:
    """Claude Code bodies reach megabytes; the session is found without parsing them."""
    turns = [{"role": "user", "content": "x" * 1000} for _ in range(4000)]  # ~4 MB
    call = _call(_messages(LEGACY, *turns))
    started = time.perf_counter()
    for _ in range(20):
        assert ANTHROPIC.conversation(call) == f"claude-session:{SESSION}"
    each = (time.perf_counter() - started) / 20
    parse_started = time.perf_counter()
    json.loads(call.body)
    parse = time.perf_counter() - parse_started
    assert each < parse / 4, f"{each * 1e3:.2f} ms vs {parse * 1e3:.2f} ms to parse"


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        ({"session_id": "s-1"}, {}, "session:s-1"),
        ({"Session_Id": "s-1"}, {}, "session:s-1"),
        ({"conversation_id": "c-1"}, {}, "session:c-1"),
        ({"Session-Id": "h-1"}, {}, "session:h-1"),
        ({"conversation_id": "c-1", "session_id": "s-1"}, {}, "session:s-1"),
        ({"session_id": "s-1"}, {"prompt_cache_key": "k-1"}, "session:s-1"),
        ({}, {"prompt_cache_key": "k-1"}, "prompt_cache_key:k-1"),
        ({"session_id": ""}, {"prompt_cache_key": "k-1"}, "prompt_cache_key:k-1"),
        ({"session_id": "has space"}, {"prompt_cache_key": "k-1"}, "prompt_cache_key:k-1"),
        ({}, {"prompt_cache_key": 7}, None),
        ({}, {"input": "hi"}, None),
    ],
)
def test_codex_conversation(headers: dict[str, str], body: object, expected: str | None) -> None:
    assert CODEX.conversation(_call(body, headers, "/responses")) == expected


@pytest.mark.parametrize(
    ("path", "headers", "body", "expected"),
    [
        (
            "/chat/completions",
            {"X-Client-Session-Id": "cli-1"},
            {"user": "u"},
            "client-session:cli-1",
        ),
        ("/v1/messages", {}, _messages(JSON_FORM), f"claude-session:{SESSION}"),
        ("/v1/messages", {}, _messages("alice"), None),
        ("/chat/completions", {}, {"prompt_cache_key": "k", "user": "u"}, "prompt_cache_key:k"),
        ("/responses", {}, {"input": "hi", "user": "u-7"}, "user:u-7"),
        ("/chat/completions", {}, {"user": LEGACY}, f"claude-session:{SESSION}"),
        ("/chat/completions", {}, {"messages": [{"role": "user", "content": "x"}]}, None),
        # X-Interaction-Id may name each request: not a conversation.
        ("/chat/completions", {"X-Interaction-Id": "i-1", "vscode-sessionid": "v"}, {}, None),
    ],
)
def test_copilot_conversation(
    path: str, headers: dict[str, str], body: object, expected: str | None
) -> None:
    assert COPILOT.conversation(_call(body, headers, path)) == expected


@pytest.mark.parametrize("provider", [GEMINI, ANTIGRAVITY])
def test_google_conversation(provider: Any) -> None:
    path = "/v1beta/models/gemini-2.5-pro:streamGenerateContent"
    contents = [{"role": "user", "parts": [{"text": "hi"}]}]
    cli = {"contents": contents, "session_id": "g-1"}
    assert provider.conversation(_call(cli, path=path)) == "session:g-1"
    agy = {"contents": contents, "sessionId": "a-1"}
    assert provider.conversation(_call(agy, path=path)) == "session:a-1"
    assert provider.conversation(_call({"contents": contents}, path=path)) is None


def test_sources_are_namespaced() -> None:
    """The same text from two fields names two conversations."""
    by_header = CODEX.conversation(_call({}, {"session_id": "same"}, "/responses"))
    by_key = CODEX.conversation(_call({"prompt_cache_key": "same"}, path="/responses"))
    assert by_header != by_key
    by_user = COPILOT.conversation(_call({"user": "same"}, path="/chat/completions"))
    by_cache = COPILOT.conversation(_call({"prompt_cache_key": "same"}, path="/chat/completions"))
    assert by_user != by_cache


GARBAGE = [
    b"\xff\xfe\x00",
    b'{"metadata":{"user_id":"\\ud800"}}',
    b'{"metadata":{"user_id":"\\u00zz"}}',
    b'{"prompt_cache_key":"' + b"k" * 5000 + b'"}',
    b'{"user_id":',
    b'"user_id""user_id":"',
    b'{"session_id":"\xff\xfe"}',
    b'{"user": "' + b"\\" * 3 + b'"}',
    b"[" * 10000,
]


@pytest.mark.parametrize("name", list(PROVIDERS))
@pytest.mark.parametrize("body", GARBAGE)
def test_conversation_never_raises(name: str, body: bytes) -> None:
    for path in ("/v1/messages", "/chat/completions", "/responses"):
        assert PROVIDERS[name].conversation(_call(body, path=path)) is None


def test_a_long_value_is_no_id() -> None:
    long = "k" * 300
    assert CODEX.conversation(_call({"prompt_cache_key": long}, path="/responses")) is None


# -- Copilot X-Initiator: reminders after a user's message (issue 15.6) ------------------------


def _initiator(path: str, body: dict[str, Any]) -> str:
    cred = Credential.model_validate(
        {"provider": "copilot", "bucket": "default", "access_token": "t", "expires_at": 0}
    )
    prepared = COPILOT.prepare(_call(body, path=path), cred)
    assert isinstance(prepared, ApiCall)
    return dict(prepared.headers)["X-Initiator"]


@pytest.mark.parametrize(
    ("turns", "expected"),
    [
        ([{"role": "user", "content": "fix it"}], "user"),
        (
            [{"role": "user", "content": "fix it"}, {"role": "system", "content": "reminder"}],
            "user",
        ),
        (
            [
                {"role": "assistant", "content": "done"},
                {"role": "user", "content": "now this"},
                {"role": "developer", "content": "r1"},
                {"role": "system", "content": "r2"},
            ],
            "user",
        ),
        (
            [
                {"role": "user", "content": "go"},
                {"role": "assistant", "content": None, "tool_calls": []},
                {"role": "tool", "content": "result", "tool_call_id": "c"},
                {"role": "system", "content": "reminder"},
            ],
            "agent",
        ),
        ([{"role": "user", "content": "go"}, {"role": "assistant", "content": "hm"}], "agent"),
        ([{"role": "system", "content": "only a system prompt"}], "user"),
    ],
)
def test_copilot_initiator_chat(turns: list[dict[str, Any]], expected: str) -> None:
    assert _initiator("/chat/completions", {"model": "gpt-4.1", "messages": turns}) == expected


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        (
            [
                {"type": "message", "role": "user", "content": "new task"},
                {"type": "message", "role": "developer", "content": "reminder"},
            ],
            "user",
        ),
        (
            [
                {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c", "output": "ok"},
                {"type": "message", "role": "system", "content": "reminder"},
            ],
            "agent",
        ),
        (
            [
                {"role": "user", "content": "new task"},
                {"role": "system", "content": [{"type": "input_text", "text": "r"}]},
            ],
            "user",
        ),
        ([{"type": "reasoning", "summary": []}, {"role": "developer", "content": "r"}], "agent"),
    ],
)
def test_copilot_initiator_responses(items: list[dict[str, Any]], expected: str) -> None:
    assert _initiator("/responses", {"model": "gpt-5", "input": items}) == expected
