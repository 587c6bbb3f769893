"""Kiro in process: the device flows' polling (pending, slow_down), refresh with the JSON body
and the client secret kept secret, the request translation's rules, thinking tags split
across events, and a 402 resting a bucket until the month's reset."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import trustme

from login.errors import NeedsLogin
from login.providers import kiro as kiro_module
from login.providers.base import LoginContext
from login.providers.kiro import PROVIDER as KIRO
from login.providers.kiro import usage_windows
from login.providers.kiro_translate import KiroAnswer, _Thinking, kiro_model, to_kiro
from tests.fakes.kiro import FakeKiro, event


class _AsyncDial(httpx.AsyncBaseTransport):
    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        self._port, self._inner = port, httpx.AsyncHTTPTransport(verify=ctx)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        request.url = request.url.copy_with(host="127.0.0.1", port=self._port)
        request.extensions = {**request.extensions, "sni_hostname": host}
        return await self._inner.handle_async_request(request)


class _UI:
    def __init__(self, fake: FakeKiro, approve: bool = True) -> None:
        self.fake, self.shown, self.approve = fake, "", approve
        self.code = ""
        self.no_browser = True

    def step(self, line: str) -> None:
        self.shown += line

    async def device_code(self, user_code: str, verification_uri: str) -> None:
        self.shown += f"{user_code} {verification_uri}"
        self.code = user_code
        if self.approve:
            await asyncio.to_thread(self.fake.approve, user_code)

    def authorize_url(self, url: str, title: str, listening: bool) -> None:
        raise AssertionError("no browser here")

    async def pasted(self) -> AsyncIterator[str]:
        if False:
            yield ""


@pytest.fixture
def fake() -> Iterator[tuple[FakeKiro, ssl.SSLContext]]:
    ca = trustme.CA()
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    with FakeKiro(ca) as server:
        yield server, ctx


def _ctx(
    fake: FakeKiro, ssl_ctx: ssl.SSLContext, ui: _UI | None = None, **options: str
) -> LoginContext:
    http = httpx.AsyncClient(transport=_AsyncDial(fake.port, ssl_ctx))
    return LoginContext(
        http,
        dict(KIRO.endpoints),
        ui or _UI(fake),
        "b",
        30.0,
        options=options,  # type: ignore[arg-type]
    )


def test_builder_id_polls_through_pending_and_slow_down_then_refreshes_with_json(
    fake: tuple[FakeKiro, ssl.SSLContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, ssl_ctx = fake
    server.slow_down_once = True
    waits: list[float] = []
    real_sleep = asyncio.sleep
    ui = _UI(server, approve=False)

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:  # approved after a slow_down and a pending answer
            server.approve(ui.code)
        await real_sleep(0)

    monkeypatch.setattr(kiro_module.asyncio, "sleep", sleep)

    async def go() -> None:
        ctx = _ctx(server, ssl_ctx, ui)
        cred = await KIRO.login(ctx)
        assert cred.extra["kind"] == "builder-id" and "profile_arn" not in cred.extra
        secret = json.loads(cred.refresh or "{}")["clientSecret"]
        assert secret.startswith("cs-")
        assert secret not in json.dumps(cred.extra) and secret not in repr(cred)
        fresh = await KIRO.refresh(ctx.http, ctx.endpoints, cred)
        assert fresh.token != cred.token and fresh.extra == cred.extra
        assert json.loads(fresh.refresh or "{}")["clientSecret"] == secret
        # An expired registration needs a new login (which registers a new client).
        stale = fresh.model_copy(update={"extra": {**fresh.extra, "client_secret_expires_at": "1"}})
        with pytest.raises(NeedsLogin, match="registration expired"):
            await KIRO.refresh(ctx.http, ctx.endpoints, stale)
        # A refused refresh says why without the secrets it sent.
        server.refresh.clear()
        with pytest.raises(NeedsLogin) as refused:
            await KIRO.refresh(ctx.http, ctx.endpoints, fresh)
        assert secret not in str(refused.value)
        await ctx.http.aclose()

    asyncio.run(go())
    # The AWS answer says 0.05 s; slow_down adds 5 s from then on (RFC 8628 §3.5).
    assert waits == [0.05, 5.05, 5.05], waits
    assert server.count("kiro", "token") == 3  # slow_down, authorization_pending, tokens
    refresh = next(c for c in server.calls if c.endpoint == "refresh")
    assert refresh.body is not None and refresh.body["grantType"] == "refresh_token"
    assert set(refresh.body) == {"grantType", "clientId", "clientSecret", "refreshToken"}


def test_identity_center_and_social_device_logins(
    fake: tuple[FakeKiro, ssl.SSLContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, ssl_ctx = fake

    async def go() -> None:
        ctx = _ctx(server, ssl_ctx, start_url="https://example.awsapps.com/start")
        cred = await KIRO.login(ctx)
        assert cred.extra["kind"] == "idc"
        assert cred.extra["start_url"] == "https://example.awsapps.com/start"
        social = _ctx(server, ssl_ctx, social="github")
        cred = await KIRO.login(social)
        assert cred.extra["kind"] == "social" and cred.extra["identity_provider"] == "Github"
        assert cred.extra["profile_arn"].startswith("arn:aws:codewhisperer:us-east-1:")
        fresh = await KIRO.refresh(social.http, social.endpoints, cred)
        assert fresh.refresh != cred.refresh  # rotated
        assert KIRO.api_base(fresh, KIRO.endpoints) == "https://runtime.us-east-1.kiro.dev"
        await ctx.http.aclose()
        await social.http.aclose()

    asyncio.run(go())
    device = next(c for c in server.calls if c.endpoint == "device")
    assert device.body is not None
    assert device.body["startUrl"] == "https://example.awsapps.com/start"


def test_tokens_go_only_to_kiros_hosts_in_some_region() -> None:
    ends = KIRO.endpoints
    assert KIRO.may_deliver_to("runtime.eu-central-1.kiro.dev", ends)
    assert KIRO.may_deliver_to("q.us-east-1.amazonaws.com", ends)
    assert not KIRO.may_deliver_to("runtime.evil.com.kiro.dev.attacker.net", ends)
    assert not KIRO.may_deliver_to("q.us-east-1.amazonaws.com.evil.net", ends)
    assert not KIRO.may_deliver_to("runtime..kiro.dev", ends)
    assert not KIRO.may_deliver_to("s3.us-east-1.amazonaws.com", ends)


def test_model_names_map_to_kiros_dotted_ids() -> None:
    assert kiro_model("claude-sonnet-4-5-20250929") == "claude-sonnet-4.5"
    assert kiro_model("claude-haiku-4-5") == "claude-haiku-4.5"
    assert kiro_model("claude-opus-4-7") == "claude-opus-4.7"  # the rule, beyond the table
    assert kiro_model("claude-sonnet-4-20250514") == "claude-sonnet-4"
    assert kiro_model("claude-sonnet-4.6") == "claude-sonnet-4.6"
    assert kiro_model(None) == "auto"


def test_history_alternates_from_a_user_turn_and_tool_results_without_tools_become_text() -> None:
    body: dict[str, Any] = {
        "model": "claude-sonnet-4-5",
        "system": [{"type": "text", "text": "S"}],
        "messages": [
            {"role": "assistant", "content": "earlier"},
            {"role": "user", "content": "a"},
            {"role": "user", "content": [{"type": "text", "text": "b"}]},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "x", "input": {"q": 1}}],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "r"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
                    },
                ],
            },
        ],
    }
    out, notes = to_kiro("anthropic", body, None)
    state = out["conversationState"]
    roles = [next(iter(h)) for h in state["history"]]
    assert roles == ["userInputMessage", "assistantResponseMessage"] * 2
    assert state["history"][0]["userInputMessage"]["content"] == "S"
    assert state["history"][2]["userInputMessage"]["content"] == "a\n\nb"
    current = state["currentMessage"]["userInputMessage"]
    assert "userInputMessageContext" not in current  # no tools: no toolResults either
    assert "[tool result t1]: r" in current["content"]
    assert current["images"] == [{"format": "png", "source": {"bytes": "AAAA"}}]
    long_name = "t" * 80
    body["tools"] = [{"name": long_name, "description": "d", "input_schema": {"type": "object"}}]
    out, notes = to_kiro("anthropic", body, "arn:x")
    tools = out["conversationState"]["currentMessage"]["userInputMessage"][
        "userInputMessageContext"
    ]["tools"]
    short = tools[0]["toolSpecification"]["name"]
    assert len(short) <= 64 and notes["names"] == {short: long_name}
    assert out["profileArn"] == "arn:x"


def test_thinking_tags_split_anywhere_are_thinking_then_text() -> None:
    text = "<thinking>deep thought</thinking>\n\nanswer"
    for size in (1, 2, 3, 7, len(text)):
        splitter = _Thinking(True)
        parts = []
        for i in range(0, len(text), size):
            parts += splitter.feed(text[i : i + size])
        parts += splitter.end()
        thinking = "".join(t for k, t in parts if k == "thinking")
        answer = "".join(t for k, t in parts if k == "text")
        assert (thinking, answer) == ("deep thought", "answer"), size
    plain = _Thinking(True)
    assert plain.feed("<thi") == []
    assert plain.feed("s is text") == [("text", "<this is text")]


def test_a_non_streamed_answer_with_a_stream_error_is_an_error_body() -> None:
    from tests.fakes.kiro import exception

    answer = KiroAnswer({"dialect": "openai", "stream": False, "model": "m"})
    data = event("assistantResponseEvent", {"content": "x"}) + exception(
        "ThrottlingException", {"message": "slow", "reason": "X"}
    )
    assert answer.feed(data) == b""
    body = json.loads(answer.end())
    assert body["error"]["type"] == "rate_limit_exceeded" and "slow (X)" in body["error"]["message"]


def test_usage_limits_read_as_a_monthly_window() -> None:
    reset = time.time() + 86400
    [window] = usage_windows(
        {
            "nextDateReset": reset,
            "usageBreakdownList": [
                {"resourceType": "AGENTIC_REQUEST", "currentUsage": 25, "usageLimit": 50}
            ],
        }
    )
    assert window.name == "agentic_request" and window.used == 0.5 and window.resets_at == reset
    assert usage_windows({"usageBreakdownList": [{"currentUsage": 1, "usageLimit": 0}]}) == []


def test_a_402_rests_the_bucket_until_the_reset_the_usage_endpoint_named() -> None:
    from addon.dispatch import Dispatch, Job
    from addon.quota import Quota
    from addon.rotation import Rotation
    from login.providers.usage import Window
    from tests.test_dispatch import OK, Tokens, Upstream

    reset = time.time() + 5 * 86400
    quota = Quota()
    quota.observe("kiro", "one", [Window("agentic_request", 1.0, reset)])
    tokens = Tokens(KIRO, api="https://runtime.us-east-1.kiro.dev")
    spent = (402, [], b'{"message":"limit","reason":"MONTHLY_REQUEST_COUNT"}')
    upstream = Upstream({"one": [spent], "two": [OK]})
    rotation = Rotation()
    job = Job(
        provider=KIRO,
        route=KIRO.routes[0],
        buckets=["one", "two"],
        pinned=False,
        method="POST",
        path="/v1/messages",
        query=[],
        headers=[],
        body=b'{"model":"claude-sonnet-4-5","max_tokens":5,"messages":[]}',
    )
    dispatch = Dispatch(tokens, rotation, None, upstream, quota=quota)  # type: ignore[arg-type]
    answer = asyncio.run(dispatch.run(job))
    assert answer.status == 200
    until = rotation.cooling_until("kiro", "one")
    assert until is not None and abs(until - reset) < 5
    assert [s.url for s in upstream.sent] == ["https://runtime.us-east-1.kiro.dev/"] * 2
