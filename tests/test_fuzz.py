"""Bad input everywhere: the parsers never crash, and a crash mid-write loses nothing."""

from __future__ import annotations

import json
import os
import re
import time
import unicodedata
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from addon.outbound import Target
from addon.placeholder import parse
from login.config import load_config
from login.credential import Credential
from login.errors import ClientError, ConfigError
from login.providers import PROVIDERS
from login.providers.base import ApiCall, Route
from login.providers.paths import checked_path
from login.providers.streams import (
    LastSSEEvent,
    MapSSE,
    SSESplitter,
    SSEToJSONArray,
    WholeJSON,
)
from login.store.files import FileStore

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.text(max_size=300))
def test_placeholder_parser_takes_anything(value: str) -> None:
    found = parse(value)
    if found is not None:
        assert value.strip().startswith("oauth")


@FAST
@given(
    st.sampled_from(["copilot", "codex", "anthropic", "x-y_z"]),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9@._+-]{0,20}", fullmatch=True),
    st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9._~+/=-]{1,40}", fullmatch=True)),
)
def test_placeholders_round_trip(provider: str, bucket: str, secret: str | None) -> None:
    text = f"oauth:{provider}:{bucket}" + (f"#{secret}" if secret else "")
    found = parse(text)
    assert found is not None
    assert (found.provider, found.bucket, found.secret) == (provider, bucket, secret)


TOMLISH = st.text(
    alphabet="[]=\"'\n.,{}# proxyclientsendpoints0123456789truefalse-_:/", max_size=200
)


@FAST
@given(TOMLISH)
def test_config_loader_only_raises_config_errors(tmp_path_factory, text: str) -> None:
    path = tmp_path_factory.mktemp("cfg") / "config.toml"
    path.write_text(text)
    try:
        load_config(path)
    except ConfigError as exc:
        assert str(path) in str(exc)


def _events(texts: list[str], crlf: bool) -> bytes:
    sep = "\r\n" if crlf else "\n"
    return "".join(f"data: {t}{sep}{sep}" for t in texts).encode()


@FAST
@given(
    st.lists(st.text(alphabet='abc{}":0123 ', min_size=1, max_size=20), max_size=8),
    st.booleans(),
    st.lists(st.integers(min_value=0, max_value=400), max_size=10),
)
def test_sse_splitting_ignores_chunk_boundaries(
    texts: list[str], crlf: bool, cuts: list[int]
) -> None:
    data = _events([t.strip() or "x" for t in texts], crlf)
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    split = SSESplitter()
    got = [e for c in chunks for e in split.feed(c)] + split.end()
    whole = SSESplitter()
    assert got == whole.feed(data) + whole.end()
    assert len(got) == len(texts)


@FAST
@given(st.binary(max_size=500), st.lists(st.integers(min_value=0, max_value=500), max_size=6))
def test_reshapers_survive_garbage(data: bytes, cuts: list[int]) -> None:
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    for reshaper in (MapSSE(lambda o: o), SSEToJSONArray(lambda o: o)):
        out = b"".join(reshaper.feed(c) for c in chunks) + reshaper.end()
        assert isinstance(out, bytes)


# -- hostile request paths --------------------------------------------------------------------

# Pieces an attacker builds paths from: dot segments plain, encoded, double-encoded, overlong
# and full-width; encoded and back slashes; `;` parameters; empty segments.
_PIECES = [
    "v1",
    "responses",
    "models",
    "backend-api",
    "codex",
    "files",
    "gemini-2.5-pro:countTokens",
    "",
    ".",
    "..",
    "...",
    "%2e",
    "%2E",
    "%2e%2e",
    "%2E%2e",
    ".%2e",
    "%2e.",
    "..;",
    "..;x=1",
    ";",
    "%2f",
    "%2F",
    "%5c",
    "%5C",
    "\\",
    "..%2f",
    "..%5c",
    "%252e%252e",
    "%25252e",
    "%c0%ae",
    "%ef%bc%8e%ef%bc%8e",
    "%e2%80%a5",
    "..%00",
    "%00",
    "%20..",
    "..%20",
    "%41",
    "%",
    "%zz",
    "?",
    "#",
    " ",
    "\t",
    "é",
]
_ROUTES = [
    (route, host, prefix)
    for provider in PROVIDERS.values()
    for route in provider.routes
    for host in route.hosts[:1]
    for prefix in route.prefixes
]


def _readings(path: str) -> set[str]:
    """What servers might make of a path: decoded up to three times, `\\` as `/`, Unicode
    folded (NFKC), `//` collapsed."""
    found, text = set(), path
    for _ in range(4):
        for variant in (text, text.replace("\\", "/")):
            found |= {variant, unicodedata.normalize("NFKC", variant)}
        text = unquote(text, errors="replace")
    return found | {re.sub("/+", "/", r) for r in found}


def _resolved(path: str) -> str:
    """RFC 3986 remove_dot_segments, also for `..;params` and all-dot names."""
    out: list[str] = []
    segments = path.split("/")[1:]
    for i, segment in enumerate(segments):
        name = segment.partition(";")[0]
        if "." in name and not name.strip(". "):
            if name.strip() != "." and out:
                out.pop()
            if i == len(segments) - 1:
                out.append("")
        else:
            out.append(segment)
    return "/" + "/".join(out)


def _in(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes)


def _approved(route: Route, host: str, path: str) -> bool:
    """What the addon does with a request path before a token is chosen."""
    try:
        checked = checked_path(path)
    except ClientError as exc:
        assert exc.status == 400
        return False
    return route.matches(host, checked)


@FAST
@given(st.sampled_from(_ROUTES), st.lists(st.sampled_from(_PIECES), max_size=8))
def test_an_approved_path_means_the_same_to_every_server(
    picked: tuple[Route, str, str], pieces: list[str]
) -> None:
    route, host, prefix = picked
    path = prefix.rstrip("/") + "/" + "/".join(pieces)
    if not _approved(route, host, path):
        return
    for reading in _readings(path):
        assert _in(_resolved(reading), route.prefixes), (path, reading)
    # Delivered exactly: the outbound side re-encodes and re-splits nothing.
    base = "https://chatgpt.com/backend-api/codex"
    delivered = path.removeprefix(route.strip)
    assert Target.of(base, delivered).path == urlsplit(base).path + delivered


# -- hostile request bodies -------------------------------------------------------------------

_KEYS = st.sampled_from(
    [
        "messages",
        "input",
        "role",
        "type",
        "content",
        "stream",
        "instructions",
        "include",
        "contents",
        "generateContentRequest",
        "model",
        "parts",
        "text",
        "tool_calls",
    ]
) | st.text(max_size=4)
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.sampled_from(["user", "assistant", "tool_result", "image_url", "function_call"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=25,
)
_BODIES = st.one_of(
    _JSON.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=60),
    st.builds(lambda n, c: c * n, st.integers(1, 30_000), st.sampled_from([b"[", b'{"a":'])),
    st.integers(1, 30_000).map(lambda n: b'{"messages":' + b"[" * n + b"]" * n + b"}"),
)
# Every body-reading endpoint of every provider, as the relay's adapters see it.
_CALLS = [
    ("copilot", "POST", "/chat/completions"),
    ("copilot", "POST", "/responses"),
    ("copilot", "POST", "/v1/messages"),
    ("copilot", "POST", "/embeddings"),
    ("codex", "POST", "/responses"),
    ("anthropic", "POST", "/v1/messages"),
    ("gemini", "POST", "/v1beta/models/gemini-2.5-pro:countTokens"),
    ("gemini", "POST", "/v1beta/models/gemini-2.5-pro:generateContent"),
    ("antigravity", "POST", "/v1/models/gemini-2.5-pro:streamGenerateContent"),
]


def _credential(provider: str) -> Credential:
    return Credential(
        provider=provider,
        bucket="default",
        access_token=SecretStr("t"),
        expires_at=time.time() + 3600,
        extra={"project": "p", "account_id": "a"},
    )


@FAST
@given(_BODIES)
def test_adapters_answer_any_body_or_say_why_not(body: bytes) -> None:
    """Every adapter hook that reads a client body returns, or raises ClientError: never a
    crash that the client would see as keyswap's 500."""
    for name, method, path in _CALLS:
        provider, cred = PROVIDERS[name], _credential(name)
        headers = [("content-type", "application/json")]
        call = ApiCall(method, path, [], headers, body, client_path=path)
        model = provider.model_of(call)
        assert model is None or isinstance(model, str)
        try:
            prepared = provider.prepare(call, cred)
        except ClientError as exc:
            assert 400 <= exc.status < 500 and str(exc)
            continue
        if isinstance(prepared, ApiCall):
            sent = {k.lower(): v for k, v in prepared.headers}
            extra = provider.api_headers(cred, prepared.path, sent, prepared.body)
            assert all(isinstance(v, str) for v in extra.values())
            Target.of(provider.api_base(cred, provider.endpoints), prepared.path, prepared.query)


@pytest.mark.parametrize("depth", [100, 20_000])
def test_reshapers_survive_deeply_nested_events(depth: int) -> None:
    """json raises RecursionError, not ValueError, past its depth: still just not JSON."""
    event = b"data: " + b"[" * depth + b"]" * depth + b"\n\n"
    for reshaper in (MapSSE(lambda o: o), SSEToJSONArray(lambda o: o), LastSSEEvent(lambda o: o)):
        assert isinstance(reshaper.feed(event) + reshaper.end(), bytes)
    whole = WholeJSON(lambda o: o)
    assert whole.feed(event[6:]) + whole.end() == event[6:]


def test_crash_between_write_and_rename_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    store = FileStore(tmp_path / "keyswap")

    def cred(token: str) -> Credential:
        return Credential(
            provider="anthropic",
            bucket="default",
            access_token=SecretStr(token),
            refresh_token=SecretStr("r-" + token),
            expires_at=time.time() + 3600,
        )

    store.save(cred("old"))

    def crash(src: object, dst: object) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        store.save(cred("new"))
    monkeypatch.undo()
    loaded = store.load("anthropic", "default")
    assert loaded is not None and loaded.token == "old"
    leftovers = [p.name for p in (tmp_path / "keyswap").rglob("*.tmp")]
    assert leftovers == []
