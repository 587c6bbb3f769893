"""Subscription-aware scheduling end to end: a real mitmdump with the addon, the official
Anthropic SDK, two logged-in accounts on the fake Anthropic API. A conversation's turns stay
on one account (its prompt cache), new conversations spread, a conversation moves once when
its account is limited, and a restart remembers the rest."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import anthropic
import pytest

from tests.conftest import User
from tests.e2e import Stack, stack
from tests.test_addon import sdk_env

TWO = '[providers.anthropic]\nbuckets = ["a", "b"]\n'


@pytest.fixture
def s(user: User, tmp_path: Path) -> Iterator[Stack]:
    with stack(user, tmp_path) as st:
        yield st


def two_accounts(s: Stack) -> dict[str, str]:
    """Two Claude accounts, a and b: their tokens by bucket."""
    s.configure(TWO)
    return {b: s.login_anthropic(b) for b in ("a", "b")}


@contextmanager
def claude(s: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[anthropic.Anthropic]:
    """The official SDK through a running proxy, with only `login env` in its environment."""
    with s.proxy() as proxy:
        sdk_env(proxy, monkeypatch)
        yield anthropic.Anthropic(api_key="oauth:anthropic")


def converse(client: anthropic.Anthropic, topic: str, turns: int) -> None:
    """A conversation as a chat client sends it: every turn repeats the ones before."""
    history: list[anthropic.types.MessageParam] = []
    for turn in range(turns):
        history.append({"role": "user", "content": f"{topic}, turn {turn}"})
        reply = client.messages.create(
            model="claude-test", max_tokens=32, system="You are terse.", messages=history
        )
        history.append({"role": "assistant", "content": reply.content[0].text})  # type: ignore[union-attr]


def accounts(s: Stack, tokens: dict[str, str]) -> list[str]:
    """The bucket of each request the fake API served, in order."""
    by_token = {token: bucket for bucket, token in tokens.items()}
    return [by_token[c.headers["authorization"].split()[-1]] for c in s.api.calls]


def test_every_turn_of_a_conversation_lands_on_one_account(
    s: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = two_accounts(s)
    with claude(s, monkeypatch) as client:
        converse(client, "tides", 10)
    used = accounts(s, tokens)
    assert len(used) == 10 and len(set(used)) == 1, used


def test_concurrent_conversations_spread_and_each_stays_put(
    s: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = two_accounts(s)
    with claude(s, monkeypatch) as client:
        # One first turn each, in order, so that the spreading is deterministic...
        for topic in ("one", "two", "three"):
            converse(client, topic, 1)
        first = accounts(s, tokens)
        # ...then the three conversations go on at once.
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda t: converse(client, t, 4), ("one", "two", "three")))
    assert sorted(first) == ["a", "a", "b"]  # spread over both accounts
    by_topic: dict[str, set[str]] = {}
    for call, bucket in zip(s.api.calls[3:], accounts(s, tokens)[3:], strict=True):
        topic = call.body["messages"][0]["content"].split(",")[0]  # type: ignore[index]
        by_topic.setdefault(topic, set()).add(bucket)
    assert by_topic == {t: {first[i]} for i, t in enumerate(("one", "two", "three"))}


def test_a_limited_account_loses_the_conversation_once_and_a_restart_remembers(
    s: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = two_accounts(s)
    with claude(s, monkeypatch) as client:
        converse(client, "tides", 1)
        home = accounts(s, tokens)[0]
        other = "b" if home == "a" else "a"
        s.api.rate_limit("anthropic", token=tokens[home], seconds=3600)
        converse(client, "tides", 3)
    used = accounts(s, tokens)
    # The 429 is retried on the other account, and the later turns stay there.
    assert used == [home, home, other, other, other], used
    state = json.loads((s.user.data_dir / "state.json").read_text())
    assert state["buckets"][f"anthropic:{home}"]["cooling_until"] is not None

    before = len(s.api.calls)
    with claude(s, monkeypatch) as client:
        converse(client, "new topic", 2)
    assert accounts(s, tokens)[before:] == [other, other]  # the rest was remembered


def test_a_stream_of_a_limited_conversation_is_retried_elsewhere_and_still_streams(
    s: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = two_accounts(s)
    with claude(s, monkeypatch) as client:
        converse(client, "tides", 1)
        home = accounts(s, tokens)[0]
        s.api.rate_limit("anthropic", token=tokens[home], seconds=3600)
        history: list[anthropic.types.MessageParam] = [
            {"role": "user", "content": "tides, turn 0"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "tides, turn 1"},
        ]
        with client.messages.stream(
            model="claude-test", max_tokens=32, system="You are terse.", messages=history
        ) as stream:
            pieces = list(stream.text_stream)
        converse(client, "tides", 1)  # the next turn stays where the stream went
    assert len(pieces) > 1 and "".join(pieces) == s.api.text
    used = accounts(s, tokens)
    assert used[1] == home and used[2] == used[3] != home, used


def test_an_account_past_95_percent_gets_no_new_conversations(
    s: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = two_accounts(s)
    s.api.usage("anthropic", token=tokens["a"], five_hour=0.96, seven_day=0.4)
    s.api.usage("anthropic", token=tokens["b"], five_hour=0.10, seven_day=0.5)
    with claude(s, monkeypatch) as client:
        converse(client, "first", 1)  # nothing known yet: the first account by name
        for topic in ("second", "third"):
            converse(client, topic, 1)
        converse(client, "first", 3)  # an ongoing conversation stays where it is
    assert accounts(s, tokens) == ["a", "b", "b", "a", "a", "a"]
    state = json.loads((s.user.data_dir / "state.json").read_text())
    windows = {w["name"]: w for w in state["buckets"]["anthropic:a"]["windows"]}
    assert windows["5h"]["used"] == 0.96 and windows["7d"]["used"] == 0.4
    assert windows["5h"]["resets_at"] > 0


def test_a_spent_copilot_allowance_moves_the_request_and_rests_until_its_reset(
    s: Stack,
) -> None:
    from tests.test_manage import copilot_chat

    # failover: a first, whatever the polled allowances say when the request comes
    s.configure('[providers.copilot]\nstrategy = "failover"\nbuckets = ["a", "b"]\n')
    tokens = {b: s.login_copilot(b) for b in ("a", "b")}
    s.api.exhaust_quota("copilot", token=tokens["a"])
    with s.proxy() as proxy:
        assert copilot_chat(proxy, "oauth:copilot").status_code == 200
    served = [(x.token, x.status) for x in s.api.served if x.provider == "copilot"]
    assert served == [(tokens["a"], 402), (tokens["b"], 200)]
    state = json.loads((s.user.data_dir / "state.json").read_text())
    assert state["buckets"]["copilot:a"]["cooling_until"] is not None


def test_login_status_shows_the_windows_the_answers_reported(
    s: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = two_accounts(s)
    s.api.usage("anthropic", token=tokens["a"], five_hour=0.42, seven_day=0.09)
    with claude(s, monkeypatch) as client:
        converse(client, "tides", 1)
    res = s.user.run("status")
    [row] = [line for line in res.out.splitlines() if line.startswith("anthropic  a ")]
    assert "5h 42% (resets in" in row and "7d 9% (resets in" in row and "1 request" in row
    listed = {e["bucket"]: e for e in json.loads(s.user.run("status", "--json").out)}
    assert {w["name"]: w["used"] for w in listed["a"]["windows"]}["5h"] == 0.42
