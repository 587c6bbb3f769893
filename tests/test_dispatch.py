"""The retry policy in process: a Dispatch over made-up tokens and a scripted `send`, one
case per branch (429 → next bucket, 401 → one refresh, needs-login, failures, a login the
proxy starts, resting buckets, refused destinations). The same paths on the wire, through a
real mitmdump and relay, are in test_addon.py, test_relay.py and test_lazy_login.py."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import SecretStr

from addon.affinity import Affinity
from addon.dispatch import Answer, Dispatch, Job
from addon.outbound import Response, Target, Withdrawn
from addon.quota import Quota
from addon.rotation import PROBE_EVERY, Rotation
from login.credential import Credential
from login.errors import KeyswapError, NeedsLogin
from login.providers import PROVIDERS
from login.providers.base import Provider
from login.providers.usage import Window
from login.tokens import Access
from tests.test_relay import job

ANTHROPIC = PROVIDERS["anthropic"]
COPILOT = PROVIDERS["copilot"]
API = "https://api.anthropic.com"

# What a scripted upstream answers: status, headers, body.
Reply = tuple[int, list[tuple[str, str]], bytes]
OK: Reply = (200, [("content-type", "application/json")], b'{"ok":true}')


def limited(seconds: int = 2) -> Reply:
    return (429, [("retry-after", str(seconds))], b'{"error":"slow down"}')


UNAUTHORIZED: Reply = (401, [], b'{"error":"expired"}')
BROKEN: Reply = (503, [], b'{"error":"overloaded"}')


class Tokens:
    """A made-up token per bucket; a bucket listed in `fail` raises that instead."""

    def __init__(self, provider: Provider = ANTHROPIC, api: str = API) -> None:
        self.provider, self.api = provider, api
        self.minted: dict[str, int] = {}
        self.fail: dict[str, KeyswapError] = {}
        self.refreshed: list[tuple[str, str | None]] = []
        self.extra: dict[str, str] = {}

    def token(self, bucket: str) -> str:
        return f"tok-{bucket}-{self.minted.setdefault(bucket, 0)}"

    async def access(self, provider: str, bucket: str) -> Access:
        if bucket in self.fail:
            raise self.fail[bucket]
        cred = Credential(
            provider=provider,
            bucket=bucket,
            access_token=SecretStr(self.token(bucket)),
            extra=dict(self.extra),
        )
        return Access(cred, self.provider, {"api": self.api})

    async def refresh(self, provider: str, bucket: str, **kw: Any) -> None:
        self.refreshed.append((bucket, kw.get("rejected")))
        self.minted[bucket] += 1

    async def revoked(self, provider: str, bucket: str, token: str, why: str) -> None:
        self.fail[bucket] = NeedsLogin(provider, bucket, why)


@dataclass
class Sent:
    method: str
    url: str
    headers: dict[str, str]


@dataclass
class Upstream:
    """The scripted `send`: answers from `replies` in order, per bucket (by its token)."""

    replies: dict[str, list[Reply]]
    sent: list[Sent] = field(default_factory=list)
    # Called right before the request would be written: a test starts a rest here.
    before_write: Callable[[], None] | None = None

    async def send(
        self,
        method: str,
        target: Target,
        headers: list[tuple[str, str]],
        body: bytes,
        withdraw: Callable[[], bool] | None = None,
    ) -> Response:
        if self.before_write is not None:
            self.before_write()
        if withdraw is not None and withdraw():
            raise Withdrawn
        names = dict(headers)
        self.sent.append(Sent(method, f"{target.scheme}://{target.authority}{target.path}", names))
        bucket = names["Authorization"].split("-")[1]
        status, reply_headers, data = self.replies[bucket].pop(0)

        async def chunks() -> AsyncIterator[bytes]:
            yield data

        return Response(status, "", reply_headers, chunks(), lambda: None)

    def buckets(self) -> list[str]:
        return [s.headers["Authorization"].split("-")[1] for s in self.sent]


@dataclass
class Session:
    """What `Logins.start` hands back, finished as the test says."""

    bucket: str
    state: str = "waiting"
    error: str | None = None
    finished: asyncio.Future[None] = field(default_factory=lambda: asyncio.Future())


class Logins:
    def __init__(self, outcome: str | None, bucket: str = "new") -> None:
        self.outcome, self.bucket = outcome, bucket
        self.started: list[str] = []

    async def start(self, provider: Provider, bucket: str, **kw: Any) -> Session:
        self.started.append(bucket)
        session = Session(self.bucket)
        if self.outcome == "done":
            session.state = "done"
            session.finished.set_result(None)
        elif self.outcome is not None:
            session.state, session.error = "failed", self.outcome
            session.finished.set_result(None)
        return session


def run(
    j: Job,
    replies: dict[str, list[Reply]],
    tokens: Tokens | None = None,
    rotation: Rotation | None = None,
    logins: Logins | None = None,
    before_write: Callable[[], None] | None = None,
) -> tuple[Answer, Upstream, Rotation]:
    upstream = Upstream(replies, before_write=before_write)
    rotation = rotation or Rotation()
    dispatch = Dispatch(tokens or Tokens(), rotation, logins, upstream, cooldown=60)  # type: ignore[arg-type]

    async def go() -> Answer:
        answer = await dispatch.run(j)
        if answer.upstream is not None:
            answer.body = b"".join([c async for c in answer.upstream.aiter_raw()])
        return answer

    return asyncio.run(go()), upstream, rotation


def message(answer: Answer) -> str:
    return str(json.loads(answer.body)["error"]["message"])


# -- the table ---------------------------------------------------------------------------------

CASES = [
    # (id, buckets, pinned, replies per bucket, failing buckets, status, buckets used, words)
    ("first serves", ("a", "b"), False, {"a": [OK]}, {}, 200, "a", None),
    ("429 moves on", ("a", "b"), False, {"a": [limited()], "b": [OK]}, {}, 200, "ab", None),
    (
        "429 everywhere",
        ("a", "b"),
        False,
        {"a": [limited()], "b": [limited()]},
        {},
        429,
        "ab",
        "every anthropic bucket (2) is rate limited",
    ),
    ("a pinned 429 is the client's", ("a",), True, {"a": [limited()]}, {}, 429, "a", "slow down"),
    ("401 refreshes once", ("a", "b"), False, {"a": [UNAUTHORIZED, OK]}, {}, 200, "aa", None),
    (
        "401 twice is the client's",
        ("a", "b"),
        False,
        {"a": [UNAUTHORIZED, UNAUTHORIZED]},
        {},
        401,
        "aa",
        "expired",
    ),
    (
        "5xx is passed on, not retried",
        ("a", "b"),
        False,
        {"a": [BROKEN]},
        {},
        503,
        "a",
        "overloaded",
    ),
    ("needs-login is passed over", ("a", "b"), False, {"b": [OK]}, {"a": "login"}, 200, "b", None),
    (
        "needs-login everywhere",
        ("a", "b"),
        False,
        {},
        {"a": "login", "b": "login"},
        401,
        "",
        "run `keyswap login anthropic a`; anthropic/b",
    ),
    ("a failure is passed over", ("a", "b"), False, {"b": [OK]}, {"a": "fail"}, 200, "b", None),
    ("failures everywhere", ("a",), False, {}, {"a": "fail"}, 503, "", "the store is broken"),
    ("no buckets", (), False, {}, {}, 401, "", "not logged in to anthropic"),
]


@pytest.mark.parametrize(
    ("buckets", "pinned", "replies", "failing", "status", "used", "words"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_retry_policy(
    buckets: tuple[str, ...],
    pinned: bool,
    replies: dict[str, list[Reply]],
    failing: dict[str, str],
    status: int,
    used: str,
    words: str | None,
) -> None:
    tokens = Tokens()
    for bucket, how in failing.items():
        tokens.fail[bucket] = (
            NeedsLogin("anthropic", bucket, "not logged in")
            if how == "login"
            else KeyswapError("the store is broken")
        )
    answer, upstream, _ = run(job(*buckets, pinned=pinned), replies, tokens)
    assert answer.status == status
    assert "".join(upstream.buckets()) == used
    text = answer.body.decode()
    if words is not None:
        assert words in text, text
    if status == 200:
        assert answer.body == OK[2]


def test_a_429_rests_the_bucket_for_its_hint_and_the_next_request_skips_it() -> None:
    answer, upstream, rotation = run(job("a", "b"), {"a": [limited(30)], "b": [OK]})
    until = rotation.cooling_until("anthropic", "a")
    assert answer.status == 200 and until is not None
    assert 28 < until - time.time() <= 30
    assert rotation.limited["anthropic", "a"] == 1 and rotation.served["anthropic", "b"] == 1
    again, upstream, _ = run(job("a", "b"), {"b": [OK]}, rotation=rotation)
    assert again.status == 200 and upstream.buckets() == ["b"]


def test_a_429_without_a_hint_rests_for_the_cooldown() -> None:
    _, _, rotation = run(job("a", "b"), {"a": [(429, [], b"{}")], "b": [OK]})
    until = rotation.cooling_until("anthropic", "a")
    assert until is not None and 58 < until - time.time() <= 60


def test_every_bucket_resting_answers_429_with_retry_after() -> None:
    rotation = Rotation()
    rotation.cool("anthropic", "a", 5)
    rotation.cool("anthropic", "b", 9)
    answer, upstream, _ = run(job("a", "b"), {}, rotation=rotation)
    assert answer.status == 429 and upstream.sent == []
    assert dict(answer.headers)["retry-after"] == "5"
    assert "the next is free in 5 s" in message(answer)


def test_a_pinned_request_goes_to_its_resting_bucket() -> None:
    rotation = Rotation()
    rotation.cool("anthropic", "a", 30)
    answer, upstream, _ = run(job("a", pinned=True), {"a": [OK]}, rotation=rotation)
    assert answer.status == 200 and upstream.buckets() == ["a"]


def test_a_bucket_that_starts_resting_before_the_write_gets_nothing() -> None:
    rotation = Rotation()

    def another_requests_429() -> None:
        if not rotation.cooling_until("anthropic", "a"):
            rotation.cool("anthropic", "a", 30)

    answer, upstream, _ = run(
        job("a", "b"), {"b": [OK]}, rotation=rotation, before_write=another_requests_429
    )
    assert answer.status == 200 and upstream.buckets() == ["b"]


def test_the_refresh_after_a_401_names_the_refused_token() -> None:
    tokens = Tokens()
    run(job("a"), {"a": [UNAUTHORIZED, OK]}, tokens)
    assert tokens.refreshed == [("a", "tok-a-0")]


def test_the_token_and_the_providers_headers_go_upstream_and_are_remembered() -> None:
    j = job("a")
    _, upstream, _ = run(j, {"a": [OK]})
    sent = upstream.sent[0]
    assert sent.url == f"{API}/v1/messages"
    assert sent.headers["Authorization"] == "Bearer tok-a-0"
    assert "oauth-2025-04-20" in sent.headers["anthropic-beta"]
    assert j.sent == ["tok-a-0"]


@pytest.mark.parametrize(
    ("outcome", "status", "words"),
    [
        ("done", 200, None),
        (
            "access_denied",
            401,
            "the anthropic login access_denied; run `keyswap login anthropic`",
        ),
        (None, 401, "did not complete within 0 s"),
    ],
)
def test_a_request_waits_for_a_login_the_proxy_starts(
    outcome: str | None, status: int, words: str | None
) -> None:
    logins = Logins(outcome)
    answer, upstream, _ = run(job(login_wait=0.05), {"new": [OK]}, logins=logins)
    assert answer.status == status and logins.started == ["default"]
    if words:
        assert words in message(answer), message(answer)
    else:
        assert upstream.buckets() == ["new"]


def test_no_login_is_started_while_a_bucket_only_rests() -> None:
    rotation = Rotation()
    rotation.cool("anthropic", "a", 30)
    logins = Logins("done")
    answer, _, _ = run(job("a", login_wait=5), {}, rotation=rotation, logins=logins)
    assert answer.status == 429 and logins.started == []


def test_a_token_is_never_sent_where_the_login_points_outside_the_provider() -> None:
    """A Copilot token names its API host; one naming another host gets the gate's 502."""
    tokens = Tokens(COPILOT, api="https://api.githubcopilot.com")
    tokens.extra = {"api": "https://api.evil.example"}
    j = job("a")
    j.provider, j.route, j.path = COPILOT, COPILOT.routes[1], "/chat/completions"
    answer, upstream, _ = run(j, {"a": [OK]}, tokens)
    assert answer.status == 502 and upstream.sent == []
    assert message(answer) == (
        "keyswap: refusing to send a copilot token to https://api.evil.example: "
        "it is not one of copilot's API hosts"
    )


def test_a_malformed_body_is_the_clients_400_and_nothing_is_sent() -> None:
    j = job("a")
    j.provider, j.route, j.path = COPILOT, COPILOT.routes[1], "/chat/completions"
    j.body = b'{"messages": 5}'
    answer, upstream, _ = run(j, {"a": [OK]}, Tokens(COPILOT, "https://api.githubcopilot.com"))
    assert answer.status == 400 and upstream.sent == []
    assert "messages must be a list" in message(answer)


def test_pick_for_a_websocket_goes_through_the_same_gate() -> None:
    tokens = Tokens(COPILOT, api="https://api.githubcopilot.com")
    tokens.extra = {"api": "http://api.individual.githubcopilot.com"}
    j = job("a")
    j.provider, j.route, j.path = COPILOT, COPILOT.routes[1], "/responses"
    dispatch = Dispatch(tokens, Rotation(), None, None)  # type: ignore[arg-type]
    picked = asyncio.run(dispatch.pick(j))
    assert isinstance(picked, Answer) and picked.status == 502
    assert "tokens go only over https" in message(picked)


# -- sticky, probes --------------------------------------------------------------------------


def test_a_conversation_moves_once_to_the_bucket_that_served_it() -> None:
    j = job("a", "b")
    j.conversation, j.held = "session:1", "a"
    affinity = Affinity()
    upstream = Upstream({"a": [limited()], "b": [OK]})
    dispatch = Dispatch(Tokens(), Rotation(), None, upstream, affinity=affinity)  # type: ignore[arg-type]
    assert asyncio.run(dispatch.run(j)).status == 200
    assert affinity.get("anthropic", "session:1") == "b"


def test_a_conversation_is_not_held_by_a_bucket_that_refused_the_request() -> None:
    j = job("a")
    j.conversation = "session:2"
    affinity = Affinity()
    bad: Reply = (400, [], b'{"error":"bad"}')
    dispatch = Dispatch(Tokens(), Rotation(), None, Upstream({"a": [bad]}), affinity=affinity)  # type: ignore[arg-type]
    assert asyncio.run(dispatch.run(j)).status == 400
    assert affinity.get("anthropic", "session:2") is None


def test_a_long_rest_is_probed_by_one_request_and_ends_when_it_is_served() -> None:
    rotation = Rotation()
    rotation.cool("anthropic", "a", 7 * 86400)  # a weekly limit
    answer, upstream, _ = run(job("a", "b"), {"b": [OK]}, rotation=rotation)
    assert upstream.buckets() == ["b"]  # just rested: no probe yet
    rotation._probed["anthropic", "a"] -= PROBE_EVERY + 1
    answer, upstream, _ = run(job("a", "b"), {"a": [OK]}, rotation=rotation)
    assert answer.status == 200 and upstream.buckets() == ["a"]
    assert rotation.cooling_until("anthropic", "a") is None


def test_a_probe_that_is_limited_again_rests_and_the_next_bucket_serves() -> None:
    rotation = Rotation()
    rotation.cool("anthropic", "a", 7 * 86400)
    rotation._probed["anthropic", "a"] -= PROBE_EVERY + 1
    answer, upstream, _ = run(job("a", "b"), {"a": [limited(3600)], "b": [OK]}, rotation=rotation)
    assert answer.status == 200 and upstream.buckets() == ["a", "b"]
    assert rotation.cooling_until("anthropic", "a") is not None
    _, upstream, _ = run(job("a", "b"), {"b": [OK]}, rotation=rotation)
    assert upstream.buckets() == ["b"]  # one probe per PROBE_EVERY


class Revoking(type(ANTHROPIC)):  # type: ignore[misc]
    """A provider whose 403 means the login was revoked."""

    def classify(self, status: int, headers: Any) -> Any:
        return "relogin" if status == 403 else super().classify(status, headers)


def test_a_revoked_login_is_marked_and_the_next_bucket_serves() -> None:
    tokens = Tokens()
    j = job("a", "b")
    j.provider = Revoking(**ANTHROPIC.model_dump())
    answer, upstream, _ = run(j, {"a": [(403, [], b"{}")], "b": [OK]}, tokens)
    assert answer.status == 200 and upstream.buckets() == ["a", "b"]
    assert isinstance(tokens.fail["a"], NeedsLogin)
    again, upstream, _ = run(job("a", "b"), {"b": [OK]}, tokens)
    assert again.status == 200 and upstream.buckets() == ["b"]


def test_usage_events_in_a_passing_stream_update_the_quota() -> None:
    codex = PROVIDERS["codex"]
    quota = Quota()
    dispatch = Dispatch(Tokens(codex), Rotation(), None, None, quota=quota)  # type: ignore[arg-type]
    event = {
        "type": "codex.rate_limits",
        "rate_limits": {
            "primary": {"used_percent": 42.0, "window_minutes": 300, "reset_at": 4102444800}
        },
    }
    line = b"event: codex.rate_limits\ndata: " + json.dumps(event).encode() + b"\n\n"
    dispatch._watch(codex, "a", b'data: {"type":"response.created"}\n\n')
    assert quota.used("codex", "a") == 0.0
    dispatch._watch(codex, "a", line)
    assert quota.used("codex", "a") == 0.42
    dispatch._watch(codex, "a", line.replace(b"42.0", b"oops")[:40])  # cut: ignored
    assert quota.used("codex", "a") == 0.42


def test_a_limit_without_a_wait_rests_until_the_spent_window_resets() -> None:
    quota = Quota()
    resets = time.time() + 5 * 86400
    quota.observe("anthropic", "a", [Window("premium", 1.0, resets), Window("chat", 0.2, 1.0)])
    rotation = Rotation()
    upstream = Upstream({"a": [(429, [], b"{}")], "b": [OK]})
    dispatch = Dispatch(Tokens(), rotation, None, upstream, quota=quota)  # type: ignore[arg-type]
    assert asyncio.run(dispatch.run(job("a", "b"))).status == 200
    assert rotation.cooling_until("anthropic", "a") == pytest.approx(resets, abs=2)
