"""Admission in process: every refusal and every way a request becomes a Job, on mitmproxy's
own test requests (`tflow`), with a config loaded from TOML as the proxy loads it. The same
requests through a real mitmdump are in test_addon.py and test_security.py."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from mitmproxy import http
from mitmproxy.test import taddons, tflow, tutils

from addon import placeholder
from addon.admission import Admission, Refusal, dialect_for
from addon.affinity import Affinity
from addon.dispatch import Job
from addon.injector import Injector
from addon.quota import Quota
from addon.rotation import Rotation
from addon.settings import Settings
from login.config import Config, load_config
from login.providers.usage import Window

SECRET = "agent-secret-0123456789"
CLIENTS = f"""
[clients.agent]
secret = "{SECRET}"
allow = ["copilot:work"]
"""
MODEL_RULES = """
[providers.copilot.bucket.work]
models = ["gpt-*"]
[providers.copilot.bucket.home]
exclude_models = ["gpt-*"]
"""


def config(tmp_path: Path, toml: str = "") -> Config:
    path = tmp_path / "config.toml"
    path.write_text(toml)
    return load_config(path)


def request(
    url: str = "https://api.githubcopilot.com/chat/completions",
    key: str = "oauth:copilot",
    body: object = None,
    **headers: str,
) -> http.Request:
    scheme, _, rest = url.partition("://")
    host, _, path = rest.partition("/")
    req = tutils.treq(
        scheme=scheme.encode(),
        host=host,
        port=443 if scheme == "https" else 80,
        authority=host.encode(),
        path=b"/" + path.encode(),
        method=b"POST",
        headers=http.Headers(),
        content=json.dumps(body or {"model": "gpt-4.1", "messages": []}).encode(),
    )
    req.headers["Authorization"] = f"Bearer {key}"
    for name, value in headers.items():
        req.headers[name.replace("_", "-")] = value
    return req


def admit(
    cfg: Config,
    req: http.Request,
    loopback: bool = True,
    stored: tuple[str, ...] = ("home", "work"),
    rotation: Rotation | None = None,
    affinity: Affinity | None = None,
    quota: Quota | None = None,
) -> Job | Refusal:
    found = placeholder.find(req)
    assert found is not None
    admission = Admission(
        lambda: cfg, rotation or Rotation(), lambda provider: list(stored), affinity, quota
    )
    return admission.admit(req, loopback, found)


REFUSALS = [
    # (config, request, loopback, status, words in the message)
    ("", request(), False, 403, "only to clients on this machine"),
    ("", request(Origin="https://evil.example"), True, 403, "(https://evil.example) get no"),
    ("", request(Sec_Fetch_Site="cross-site"), True, 403, "allow_origins"),
    (CLIENTS, request(), True, 401, "needs a client secret"),
    (CLIENTS, request(key="oauth:copilot#wrong-secret-000000"), True, 401, "unknown client"),
    (CLIENTS, request(key=f"oauth:copilot:home#{SECRET}"), True, 403, "may not use copilot"),
    ("", request(key="oauth:nope"), True, 400, "unknown provider 'nope'"),
    ("", request("https://example.com/v1/x", key="oauth"), True, 400, "names no provider"),
    ("[providers.copilot]\nenabled = false", request(), True, 401, "disabled"),
    ("", request("http://api.githubcopilot.com/chat/completions"), True, 403, "only over https"),
    ("", request("https://api.githubcopilot.com/v1/%2e%2e/x"), True, 400, "`..` or `.`"),
    ("", request("https://api.githubcopilot.com/a/../b"), True, 400, "`..` or `.`"),
    ("", request("https://api.githubcopilot.com/a%2fb"), True, 400, "encoded `/`"),
    ("", request("https://api.openai.com/v1/files", key="oauth:copilot"), True, 403, "not sent"),
    ("", request("https://example.com/v1/x", key="oauth:copilot"), True, 403, "not sent to"),
    (
        MODEL_RULES,
        request(key="oauth:copilot:home"),
        True,
        404,
        "no copilot bucket serves model 'gpt-4.1'; buckets: home (not gpt-*)",
    ),
]


@pytest.mark.parametrize(("toml", "req", "loopback", "status", "words"), REFUSALS)
def test_each_refusal(
    tmp_path: Path, toml: str, req: http.Request, loopback: bool, status: int, words: str
) -> None:
    refused = admit(config(tmp_path, toml), req, loopback)
    assert isinstance(refused, Refusal), refused
    assert (refused.status, words in refused.message) == (status, True), refused.message


def test_remote_clients_are_served_when_allowed(tmp_path: Path) -> None:
    cfg = config(tmp_path, "[proxy]\nallow_remote = true")
    assert isinstance(admit(cfg, request(), loopback=False), Job)


def test_an_allowed_origin_is_served_and_a_typed_url_is_no_page(tmp_path: Path) -> None:
    cfg = config(tmp_path, '[proxy]\nallow_origins = ["https://my.app"]')
    assert isinstance(admit(cfg, request(Origin="https://my.app")), Job)
    assert isinstance(admit(cfg, request(Sec_Fetch_Site="none")), Job)


def test_a_job_carries_the_checked_request_without_credentials(tmp_path: Path) -> None:
    req = request(
        "https://api.openai.com/v1/chat/completions?key=oauth:copilot&x=1",
        x_api_key="oauth:copilot",
        Connection="keep-alive",
    )
    job = admit(config(tmp_path), req)
    assert isinstance(job, Job)
    assert (job.provider.name, job.path, job.query) == (
        "copilot",
        "/v1/chat/completions",
        [("x", "1")],
    )
    assert job.call().path == "/chat/completions"  # the route strips /v1
    names = {k.lower() for k, _ in job.headers}
    assert not names & {"authorization", "x-api-key", "connection", "host"}
    assert job.route.dialect == "openai" and job.login_wait is None


def test_a_bucket_in_the_placeholder_is_pinned(tmp_path: Path) -> None:
    job = admit(config(tmp_path), request(key="oauth:copilot:work"))
    assert isinstance(job, Job) and (job.buckets, job.pinned) == (["work"], True)


def test_round_robin_failover_and_configured_order(tmp_path: Path) -> None:
    rotation = Rotation()
    cfg = config(tmp_path, '[proxy]\nstrategy = "round-robin"')
    firsts = [admit(cfg, request(), rotation=rotation, stored=("a", "b", "c")) for _ in range(4)]
    assert [j.buckets for j in firsts if isinstance(j, Job)] == [
        ["a", "b", "c"],
        ["b", "c", "a"],
        ["c", "a", "b"],
        ["a", "b", "c"],
    ]
    ordered = config(tmp_path, '[providers.copilot]\nstrategy = "failover"\nbuckets = ["c", "a"]')
    for _ in range(2):
        job = admit(ordered, request(), rotation=rotation, stored=("a", "b", "c"))
        assert isinstance(job, Job) and job.buckets == ["c", "a"]


def test_resting_buckets_are_planned_last(tmp_path: Path) -> None:
    rotation = Rotation()
    rotation.cool("copilot", "a", 30)
    cfg = config(tmp_path, '[proxy]\nstrategy = "failover"')
    job = admit(cfg, request(), rotation=rotation, stored=("a", "b", "c"))
    assert isinstance(job, Job) and (job.buckets, job.pinned) == (["b", "c", "a"], False)


def test_a_client_rotates_only_over_what_it_may_use(tmp_path: Path) -> None:
    job = admit(config(tmp_path, CLIENTS), request(key=f"oauth:copilot#{SECRET}"))
    assert isinstance(job, Job) and job.buckets == ["work"]


def test_model_rules_choose_the_buckets(tmp_path: Path) -> None:
    cfg = config(tmp_path, MODEL_RULES)
    gpt = admit(cfg, request())
    claude = admit(cfg, request(body={"model": "claude-sonnet-4.5", "messages": []}))
    assert isinstance(gpt, Job) and gpt.buckets == ["work"]
    assert isinstance(claude, Job) and claude.buckets == ["home"]


def test_enabled_providers_wait_for_a_login(tmp_path: Path) -> None:
    cfg = config(tmp_path, "[proxy]\nlogin_wait = 7\n[providers.copilot]\nenabled = true")
    job = admit(cfg, request(), stored=())
    assert isinstance(job, Job) and (job.buckets, job.login_wait) == ([], 7)


@pytest.mark.parametrize(
    ("host", "path", "dialect"),
    [
        ("api.anthropic.com", "/v1/messages", "anthropic"),
        ("api.githubcopilot.com", "/v1/messages", "anthropic"),
        ("api.githubcopilot.com", "/chat/completions", "openai"),
        ("api.githubcopilot.com", "/v1/../x", "openai"),
        ("generativelanguage.googleapis.com", "/v1beta/models", "google"),
        ("api.openai.com", "/v1/responses", "openai"),
        ("example.com", "/", "openai"),
    ],
)
def test_errors_before_a_route_is_known_speak_the_hosts_api(
    host: str, path: str, dialect: str
) -> None:
    assert dialect_for(host, path) == dialect


def test_the_request_hook_answers_a_refusal_in_the_apis_shape(tmp_path: Path) -> None:
    """Through the addon's own hook (mitmproxy's taddons), a refused request never leaves:
    it gets the error in the client's API shape, and the placeholder stays in the flow."""
    settings = Settings()
    injector = Injector(settings)
    with taddons.context(settings, injector) as tctx:
        tctx.configure(settings, keyswap_config=str(tmp_path / "none.toml"))
        flow = tflow.tflow(req=request("https://api.anthropic.com/v1/../v1/messages", "oauth"))
        flow.client_conn.peername = ("127.0.0.1", 50000)
        asyncio.run(injector.request(flow))
    assert flow.response is not None and flow.response.status_code == 400
    error = json.loads(flow.response.content or b"")
    assert error["type"] == "error" and "`..` or `.`" in error["error"]["message"]
    assert flow.request.headers["authorization"] == "Bearer oauth"


# -- sticky: a conversation stays on one account ------------------------------------------


def chat(first: str, *more: str) -> object:
    turns = [{"role": "system", "content": "be brief"}, {"role": "user", "content": first}]
    for i, text in enumerate(more):
        turns.append({"role": "assistant" if i % 2 == 0 else "user", "content": text})
    return {"model": "gpt-4.1", "messages": turns}


def test_sticky_is_the_default_and_keeps_a_conversation_on_its_bucket(tmp_path: Path) -> None:
    cfg, rotation, affinity = config(tmp_path), Rotation(), Affinity()
    first = admit(cfg, request(body=chat("hi")), stored=("a", "b"), affinity=affinity)
    assert isinstance(first, Job) and first.conversation and first.held is None
    affinity.put("copilot", first.conversation, "b")  # what the dispatch does once b served
    for turn in range(1, 6):
        later = admit(
            cfg,
            request(body=chat("hi", *["x"] * turn)),
            stored=("a", "b"),
            rotation=rotation,
            affinity=affinity,
        )
        assert isinstance(later, Job) and later.conversation == first.conversation
        assert later.buckets[0] == "b" and later.held == "b"


def test_new_conversations_spread_and_go_where_the_headroom_is(tmp_path: Path) -> None:
    cfg, affinity, quota = config(tmp_path), Affinity(), Quota()
    placed = []
    for i in range(4):
        job = admit(cfg, request(body=chat(f"topic {i}")), stored=("a", "b"), affinity=affinity)
        assert isinstance(job, Job) and job.conversation
        affinity.put("copilot", job.conversation, job.buckets[0])
        placed.append(job.buckets[0])
    assert placed == ["a", "b", "a", "b"]
    quota.observe("copilot", "a", [Window("premium", 0.96)])
    quota.observe("copilot", "b", [Window("premium", 0.10)])
    fresh = admit(cfg, request(body=chat("new")), stored=("a", "b"), affinity=affinity, quota=quota)
    assert isinstance(fresh, Job) and fresh.buckets == ["b", "a"]
    # An ongoing conversation on a bucket past the threshold stays there.
    ongoing = admit(
        cfg, request(body=chat("topic 0", "x")), stored=("a", "b"), affinity=affinity, quota=quota
    )
    assert isinstance(ongoing, Job) and ongoing.buckets[0] == "a"


def test_a_resting_bucket_loses_its_conversations_and_a_reset_window_counts_no_more(
    tmp_path: Path,
) -> None:
    cfg, rotation, affinity, quota = config(tmp_path), Rotation(), Affinity(), Quota()
    job = admit(cfg, request(body=chat("hi")), stored=("a", "b"), affinity=affinity)
    assert isinstance(job, Job) and job.conversation
    affinity.put("copilot", job.conversation, "a")
    rotation.cool("copilot", "a", 60)
    moved = admit(
        cfg, request(body=chat("hi", "x")), stored=("a", "b"), rotation=rotation, affinity=affinity
    )
    assert isinstance(moved, Job) and moved.buckets == ["b", "a"]
    quota.observe("copilot", "b", [Window("5h", 0.99, resets_at=time.time() - 1)])
    assert quota.used("copilot", "b") == 0.0


def test_the_same_first_turn_from_two_clients_is_two_conversations(tmp_path: Path) -> None:
    two = CLIENTS + '\n[clients.other]\nsecret = "other-secret-0123456789"\nallow = ["*"]\n'
    cfg = config(tmp_path, two)
    mine = admit(cfg, request(key=f"oauth:copilot#{SECRET}", body=chat("hi")), stored=("work",))
    theirs = admit(cfg, request(key="oauth:copilot#other-secret-0123456789", body=chat("hi")))
    assert isinstance(mine, Job) and isinstance(theirs, Job)
    assert mine.conversation and theirs.conversation and mine.conversation != theirs.conversation
