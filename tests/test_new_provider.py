"""A provider is one module: a test that defines one (here, a made-up "acme") and registers
it gets admission, delivery, rotation on its own 429 hint, its error dialect and its place in
every list, without touching anything else."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from mitmproxy import http

from addon import placeholder
from addon.admission import Admission, Refusal, dialect_for
from addon.dispatch import Dispatch, Job
from addon.injector import served_hosts
from addon.rotation import Rotation
from login import providers
from login.config import Config, load_config
from login.providers.base import Provider, Route
from tests.test_admission import request
from tests.test_dispatch import OK, Tokens, Upstream


class Acme(Provider):
    def rate_limit_hint(self, headers: Mapping[str, str], body: bytes) -> float | None:
        said = headers.get("x-acme-wait")
        return float(said) if said else super().rate_limit_hint(headers, body)


ACME = Acme(
    name="acme",
    title="Acme Cloud",
    order=1,
    flow="device",
    client_id="acme-cli",
    scopes=("chat",),
    endpoints={
        "device_code": "https://login.acme.test/device",
        "token": "https://login.acme.test/token",
        "api": "https://api.acme.test/v2",
    },
    routes=(
        Route(hosts=("api.acme.test",), prefixes=("/v2/chat",), strip="/v2", dialect="anthropic"),
    ),
    native_hosts=("api.acme.test",),
)


@pytest.fixture
def acme(monkeypatch: pytest.MonkeyPatch) -> Iterator[Provider]:
    monkeypatch.setitem(providers.PROVIDERS, "acme", ACME)
    yield ACME


def test_a_new_provider_is_served_end_to_end_in_process(acme: Provider, tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text("")
    config = load_config(tmp_path / "c.toml")
    req: http.Request = request("https://api.acme.test/v2/chat", key="oauth")
    found = placeholder.find(req)
    assert found is not None
    job = Admission(lambda: config, Rotation(), lambda p: ["one", "two"]).admit(req, True, found)
    assert isinstance(job, Job) and job.provider is acme and job.buckets == ["one", "two"]

    tokens = Tokens(acme, api="https://api.acme.test/v2")
    limited = (429, [("x-acme-wait", "42")], b"{}")
    upstream = Upstream({"one": [limited], "two": [OK]})
    rotation = Rotation()
    answer = asyncio.run(Dispatch(tokens, rotation, None, upstream).run(job))  # type: ignore[arg-type]
    assert answer.status == 200
    assert [s.url for s in upstream.sent] == ["https://api.acme.test/v2/chat"] * 2
    until = rotation.cooling_until("acme", "one")
    assert until is not None and 40 < until - time.time() <= 42


def test_a_new_provider_is_decrypted_refused_outside_its_routes_and_speaks_its_dialect(
    acme: Provider,
) -> None:
    assert r"^api\.acme\.test:\d+$" in served_hosts()  # mitmproxy decrypts its host
    assert dialect_for("api.acme.test", "/v2/files") == "anthropic"
    req = request("https://api.acme.test/v2/files", key="oauth:acme")
    found = placeholder.find(req)
    assert found is not None
    refused = Admission(Config, Rotation(), lambda p: []).admit(req, True, found)
    assert isinstance(refused, Refusal) and refused.status == 403
    assert refused.message == "acme tokens are not sent to api.acme.test/v2/files"
