"""Kiro end to end: logins through the real CLI against the fake Kiro (tests/fakes/kiro.py),
then the official anthropic and openai SDKs through a real mitmdump, answered from Kiro's
AWS event stream event by event."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
import trustme

from tests.conftest import User
from tests.fakes.kiro import ARN, TEXT, THINKING, TOOL_INPUT, FakeKiro
from tests.proxy import Mitmdump, base_env
from tests.test_addon import http_client, sdk_env

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
}


class KiroStack:
    def __init__(self, user: User, fake: FakeKiro, ca_pem: str, workdir: Path) -> None:
        self.user, self.fake, self.ca_pem, self.workdir = user, fake, ca_pem, workdir
        user.write_config(fake.resolve_toml())

    def login(self, bucket: str = "default", *args: str) -> str:
        proc = self.user.start("kiro", bucket, "--no-browser", *args)
        code = proc.wait_for("one-time code").strip().rsplit(" ", 1)[-1]
        self.fake.approve(code)
        res = proc.finish()
        assert res.code == 0, res.err
        assert "Stored as kiro:" + bucket in res.err + res.out
        return res.err + res.out

    def proxy(self) -> Mitmdump:
        return Mitmdump(
            self.workdir,
            base_env(self.user.env),
            "--set",
            f"keyswap_config={self.user.config}",
            upstream_ca=self.ca_pem,
        )

    def runtime_bodies(self) -> list[dict[str, object]]:
        return [c.body or {} for c in self.fake.calls if c.endpoint == "runtime"]


@pytest.fixture
def ks(user: User, tmp_path: Path) -> Iterator[KiroStack]:
    ca = trustme.CA()
    pem = tmp_path / "upstream-ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    user.env["SSL_CERT_FILE"] = str(pem)
    with FakeKiro(ca) as fake:
        yield KiroStack(user, fake, str(pem), tmp_path)
        assert not fake.errors, fake.errors[0]


def test_builder_id_login_then_the_anthropic_sdk_streams_text_event_by_event(
    ks: KiroStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = ks.login()
    assert "view.awsapps.com" in out  # the verification URI shown with the code
    register = next(c for c in ks.fake.calls if c.endpoint == "register")
    assert register.body and register.body["clientType"] == "public"
    with ks.proxy() as proxy:
        sdk_env(proxy, monkeypatch)
        client = anthropic.Anthropic(api_key="oauth:kiro", max_retries=0)
        deltas, kinds = [], []
        with client.messages.stream(
            model="claude-sonnet-4-5-20250929",
            max_tokens=64,
            system="Be brief.",
            messages=[{"role": "user", "content": "hi"}],
        ) as stream:
            for ev in stream:
                kinds.append(ev.type)
                if ev.type == "content_block_delta" and ev.delta.type == "text_delta":
                    deltas.append(ev.delta.text)
            final = stream.get_final_message()
    assert deltas == list(TEXT)  # each Kiro event is one client event
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert final.content[0].type == "text" and final.content[0].text == "".join(TEXT)
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens == 11 and final.usage.output_tokens == 7
    call = next(c for c in ks.fake.calls if c.endpoint == "runtime")
    assert call.path == "/generateAssistantResponse"  # Builder ID → q.{region}
    assert call.headers["authorization"].startswith("Bearer aoa")
    assert "x-api-key" not in call.headers and "anthropic-version" not in call.headers
    body = call.body or {}
    assert "profileArn" not in body  # Builder ID has none
    msg = body["conversationState"]["currentMessage"]["userInputMessage"]
    assert msg["modelId"] == "claude-sonnet-4.5" and msg["origin"] == "AI_EDITOR"
    assert msg["content"].startswith("Be brief.") and msg["content"].endswith("hi")


def test_the_anthropic_sdk_gets_a_tool_use_with_its_input_in_pieces_then_answers_the_result(
    ks: KiroStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    ks.login()
    with ks.proxy() as proxy:
        sdk_env(proxy, monkeypatch)
        client = anthropic.Anthropic(api_key="oauth:kiro", max_retries=0)
        pieces = []
        with client.messages.stream(
            model="claude-haiku-4-5",
            max_tokens=64,
            tools=[WEATHER],  # type: ignore[list-item]
            messages=[{"role": "user", "content": "weather in Paris?"}],
        ) as stream:
            for ev in stream:
                if ev.type == "content_block_delta" and ev.delta.type == "input_json_delta":
                    pieces.append(ev.delta.partial_json)
            final = stream.get_final_message()
        assert pieces == list(TOOL_INPUT)
        use = final.content[-1]
        assert use.type == "tool_use" and use.name == "get_weather"
        assert use.input == {"city": "Paris"} and use.id == "tooluse_1"
        assert final.stop_reason == "tool_use"
        # Not streamed: the same answer collected into one message, then the tool's result.
        whole = client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=64,
            tools=[WEATHER],  # type: ignore[list-item]
            messages=[
                {"role": "user", "content": "weather in Paris?"},
                {"role": "assistant", "content": [b.model_dump() for b in final.content]},  # type: ignore[misc]
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}],
                },
            ],
        )
    assert whole.content[0].type == "text" and whole.content[0].text == "It is sunny."
    sent = ks.runtime_bodies()[-1]["conversationState"]
    assert isinstance(sent, dict)
    history = sent["history"]
    assert [next(iter(h)) for h in history] == ["userInputMessage", "assistantResponseMessage"]
    assert history[1]["assistantResponseMessage"]["toolUses"] == [
        {"toolUseId": "tooluse_1", "name": "get_weather", "input": {"city": "Paris"}}
    ]
    context = sent["currentMessage"]["userInputMessage"]["userInputMessageContext"]
    assert context["toolResults"] == [
        {"toolUseId": "tooluse_1", "status": "success", "content": [{"text": "sunny"}]}
    ]
    schema = context["tools"][0]["toolSpecification"]["inputSchema"]["json"]
    assert "additionalProperties" not in schema and schema["required"] == ["city"]


def test_thinking_reaches_the_anthropic_sdk_as_thinking_blocks(
    ks: KiroStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    ks.login()
    with ks.proxy() as proxy:
        sdk_env(proxy, monkeypatch)
        client = anthropic.Anthropic(api_key="oauth:kiro", max_retries=0)
        thinking = []
        with client.messages.stream(
            model="claude-sonnet-4-5",
            max_tokens=2048,
            thinking={"type": "enabled", "budget_tokens": 1024},
            messages=[{"role": "user", "content": "hi"}],
        ) as stream:
            for ev in stream:
                if ev.type == "content_block_delta" and ev.delta.type == "thinking_delta":
                    thinking.append(ev.delta.thinking)
            final = stream.get_final_message()
    assert thinking == list(THINKING)
    assert final.content[0].type == "thinking" and final.content[0].signature == "sig-1"
    assert final.content[1].type == "text" and final.content[1].text == "".join(TEXT)
    sent = ks.runtime_bodies()[-1]["conversationState"]
    assert isinstance(sent, dict)
    content = sent["currentMessage"]["userInputMessage"]["content"]
    assert "<max_thinking_length>1024</max_thinking_length>" in content


def test_the_openai_sdk_streams_and_collects_chat_completions_with_tools(
    ks: KiroStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    ks.login("social", "--social", "google")
    with ks.proxy() as proxy:
        sdk_env(proxy, monkeypatch)
        client = openai.OpenAI(api_key="oauth:kiro", max_retries=0)
        chunks = list(
            client.chat.completions.create(
                model="claude-sonnet-4.5",
                messages=[
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "hi"},
                ],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        texts = [c.choices[0].delta.content for c in chunks if c.choices]
        assert [t for t in texts if t] == list(TEXT)
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7

        tools = [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "The weather in a city",
                    "parameters": WEATHER["input_schema"],
                },
            }
        ]
        stream = client.chat.completions.create(
            model="claude-sonnet-4.5",
            messages=[{"role": "user", "content": "weather in Paris?"}],
            tools=tools,  # type: ignore[arg-type]
            stream=True,
        )
        args = []
        for chunk in stream:
            for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                if call.function and call.function.arguments:
                    args.append(call.function.arguments)
        assert args == list(TOOL_INPUT)

        whole = client.chat.completions.create(
            model="claude-sonnet-4.5",
            messages=[{"role": "user", "content": "weather in Paris?"}],
            tools=tools,  # type: ignore[arg-type]
        )
        choice = whole.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content == "Let me check."
        calls = choice.message.tool_calls or []
        assert calls[0].function.name == "get_weather"  # type: ignore[union-attr]
        assert json.loads(calls[0].function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
        models = [m.id for m in client.models.list()]
        assert "claude-sonnet-4.5" in models
    runtime = [c for c in ks.fake.calls if c.endpoint == "runtime"]
    assert all(c.path == "/" for c in runtime)  # social → runtime.{region}.kiro.dev
    assert runtime[0].headers["x-amz-target"] == "KiroRuntimeService.GenerateAssistantResponse"
    assert all((c.body or {}).get("profileArn") == ARN for c in runtime)


def test_a_corrupted_frame_ends_the_clients_stream_visibly_broken(
    ks: KiroStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    ks.login()
    ks.fake.corrupt_next = True
    with ks.proxy() as proxy:
        sdk_env(proxy, monkeypatch)
        client = anthropic.Anthropic(api_key="oauth:kiro", max_retries=0)
        seen = []
        with pytest.raises(anthropic.APIError) as caught:
            with client.messages.stream(
                model="claude-sonnet-4-5",
                max_tokens=64,
                messages=[{"role": "user", "content": "hi"}],
            ) as stream:
                for ev in stream:
                    seen.append(ev.type)
        assert "CRC" in str(caught.value)
        assert "message_stop" not in seen
        # Raw, the stream has the error event and then no clean end of the chunked body.
        ks.fake.corrupt_next = True
        with http_client(proxy) as raw:
            got = b""
            with pytest.raises(httpx.RemoteProtocolError):
                with raw.stream(
                    "POST",
                    "https://api.anthropic.com/v1/messages",
                    headers={"x-api-key": "oauth:kiro"},
                    json={
                        "model": "claude-sonnet-4-5",
                        "max_tokens": 5,
                        "stream": True,
                        "messages": [{"role": "user", "content": "hi"}],
                    },
                ) as resp:
                    for part in resp.iter_bytes():
                        got += part
            assert b"event: error" in got and b"message CRC mismatch" in got
            assert b"message_stop" not in got
        assert "answer was broken" in proxy.output


def test_an_error_inside_a_200_stream_and_a_400_reach_the_client_in_its_shape(
    ks: KiroStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    ks.login()
    ks.fake.stream_error_next = True
    with ks.proxy() as proxy:
        sdk_env(proxy, monkeypatch)
        client = anthropic.Anthropic(api_key="oauth:kiro", max_retries=0)
        with pytest.raises(anthropic.APIError) as caught:
            with client.messages.stream(
                model="claude-sonnet-4-5",
                max_tokens=64,
                messages=[{"role": "user", "content": "hi"}],
            ) as stream:
                for _ in stream:
                    pass
        assert "INVALID_INPUT" in str(caught.value) and "ValidationException" in str(caught.value)
        with pytest.raises(anthropic.BadRequestError) as bad:
            client.messages.create(
                model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
            )
        assert "INVALID_MODEL_ID" in str(bad.value)
        oa = openai.OpenAI(api_key="oauth:kiro", max_retries=0)
        with pytest.raises(openai.BadRequestError) as bad2:
            oa.chat.completions.create(
                model="no-such-model", messages=[{"role": "user", "content": "hi"}]
            )
        assert "INVALID_MODEL_ID" in str(bad2.value)


def test_two_kiro_buckets_rotate_on_429_and_a_402_rests_a_bucket_until_the_monthly_reset(
    ks: KiroStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    ks.login("one")
    ks.login("two")
    tokens = list(ks.fake.access)
    first, second = tokens[0], tokens[1]
    ks.fake.token_fails[first] = [(429, {"message": "Too many requests", "reason": "THROTTLED"})]
    with ks.proxy() as proxy:
        sdk_env(proxy, monkeypatch)
        client = anthropic.Anthropic(api_key="oauth:kiro", max_retries=0)
        reply = client.messages.create(
            model="claude-sonnet-4-5", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.content[0].text == "".join(TEXT)  # type: ignore[union-attr]
        runtime = [c for c in ks.fake.calls if c.endpoint == "runtime"]
        assert [c.headers["authorization"][7:] for c in runtime] == [first, second]
        assert "kiro/one rests" in proxy.output
        # The second bucket's month is spent: a 402 moves on; with nothing left the client
        # hears so in its own shape.
        ks.fake.token_fails[second] = [
            (402, {"message": "You have reached the limit.", "reason": "MONTHLY_REQUEST_COUNT"})
        ]
        with pytest.raises(anthropic.RateLimitError) as caught:
            client.messages.create(
                model="claude-sonnet-4-5",
                max_tokens=5,
                messages=[{"role": "user", "content": "hi"}],
            )
        assert "every kiro bucket (2) is rate limited" in str(caught.value)


def test_login_status_shows_the_monthly_usage_the_usage_endpoint_reports(
    ks: KiroStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    ks.login()
    ks.fake.usage = {"current": 50, "limit": 50}
    with ks.proxy() as proxy:
        sdk_env(proxy, monkeypatch)
        deadline = time.time() + 20
        while ks.fake.count("kiro", "usage") == 0 and time.time() < deadline:
            time.sleep(0.1)
        assert ks.fake.count("kiro", "usage") >= 1
        time.sleep(1.5)  # the proxy's maintenance loop writes the state
        res = ks.user.run("status", "kiro")
    assert "agentic_request 100% (resets in 9d" in res.out, res.out


def test_claude_code_answers_and_uses_a_tool_through_kiro(ks: KiroStack, tmp_path: Path) -> None:
    """The real Claude Code CLI with `ANTHROPIC_API_KEY=oauth:kiro` and only `login env`'s
    output: its requests (with its own tools) are served by the fake Kiro runtime."""
    import subprocess

    from tests.test_real_clients import CLAUDE, login_env, require

    require(CLAUDE, "@anthropic-ai/claude-code")
    ks.login()
    with ks.proxy() as proxy:
        env = {**login_env(ks.user, proxy), "ANTHROPIC_API_KEY": "oauth:kiro"}
        done = subprocess.run(
            [str(CLAUDE), "-p", "say hi"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr[-2000:] + proxy.output[-3000:]
    bodies = ks.runtime_bodies()
    assert bodies, "Claude Code's request reached Kiro's runtime"
    tools = [
        b["conversationState"]["currentMessage"]["userInputMessage"]  # type: ignore[index]
        .get("userInputMessageContext", {})
        .get("tools", [])
        for b in bodies
    ]
    # Its tools declared, the fake asks for the first one; Claude Code runs it (the input is
    # the fake's, so maybe to an error) and sends the result back, answered in text.
    assert tools[0], "Claude Code's tools reached Kiro"
    results = (
        bodies[-1]["conversationState"]["currentMessage"]["userInputMessage"]  # type: ignore[index]
        .get("userInputMessageContext", {})
        .get("toolResults", [])
    )
    assert [r["toolUseId"] for r in results] == ["tooluse_1"]
    assert "It is sunny." in done.stdout, done.stdout
    for token in ks.fake.access:
        assert token not in done.stdout + done.stderr
