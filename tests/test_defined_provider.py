"""A provider defined by a config block (issue 16.3): validation that names file, key and
reason and never lets a block reach a built-in provider's hosts; and, end to end, an OIDC
device-flow issuer found by discovery plus an OpenAI-compatible API, logged in with the real
CLI and driven by the official `openai` SDK through a real mitmdump, with only the block."""

from __future__ import annotations

import re
import ssl
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import trustme

from login import providers
from login.config import load_config
from login.errors import ConfigError
from tests.conftest import User
from tests.fakes.oidc import API_HOST, CLIENT_ID, HEADER, FakeChat, FakeIssuer
from tests.proxy import Mitmdump, base_env


def block(issuer_url: str, **extra: str) -> str:
    lines = {
        "title": '"Grok (test)"',
        "flow": '"device"',
        "issuer": f'"{issuer_url}"',
        "client_id": f'"{CLIENT_ID}"',
        "scopes": '["openid", "offline_access", "api:access"]',
        "api": f'"https://{API_HOST}/v1"',
        "headers": f'{{ "{HEADER[0]}" = "{HEADER[1]}" }}',
        **extra,
    }
    body = "\n".join(f"{k} = {v}" for k, v in lines.items() if v)
    return f"[providers.grok]\n{body}\n"


def refused(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)
    return str(err.value)


@pytest.mark.parametrize(
    ("api", "owners"),
    [
        ("https://api.anthropic.com", "anthropic"),
        ("https://api.githubcopilot.com/v1", "copilot"),
        ("https://api.business.githubcopilot.com", "copilot"),  # Copilot's ".githubcopilot.com"
        ("https://chatgpt.com/backend-api", "codex"),
        ("https://oauth2.googleapis.com", "gemini"),  # a token endpoint's host is theirs too
    ],
)
def test_a_defined_provider_can_never_claim_a_built_in_host(
    tmp_path: Path, api: str, owners: str
) -> None:
    why = refused(tmp_path, block("https://auth.grok.test", api=f'"{api}"'))
    assert "providers.grok.api" in why and owners in why and "built-in" in why


@pytest.mark.parametrize(
    ("extra", "key", "reason"),
    [
        ({"api": '"http://api.grok.test/v1"'}, "providers.grok.api", "must use https"),
        ({"api": ""}, "providers.grok.api", "required"),
        ({"client_id": ""}, "providers.grok.client_id", "required"),
        ({"issuer": ""}, "providers.grok.endpoints", "endpoints.device_code"),
        ({"flow": '"implicit"'}, "providers.grok.flow", "'device' or 'pkce'"),
        ({"token_header": '"Content-Length"'}, "providers.grok.token_header", "frames"),
        ({"headers": '{ "Host" = "x" }'}, "providers.grok.headers", "frames"),
        ({"headers": '{ "X-A" = "one\\ntwo" }'}, "providers.grok.headers", "line break"),
        ({"endpoints": '{ "userinfo" = "https://a.test/u" }'}, "providers.grok.endpoints", ""),
    ],
)
def test_a_wrong_definition_names_its_key_and_why(
    tmp_path: Path, extra: dict[str, str], key: str, reason: str
) -> None:
    why = refused(tmp_path, block("https://auth.grok.test", **extra))
    assert key in why and reason in why, why


def test_names_and_built_in_blocks(tmp_path: Path) -> None:
    assert "providers.status" in refused(
        tmp_path, block("https://a.test").replace("providers.grok", "providers.status")
    )
    why = refused(tmp_path, '[providers.copilot]\nflow = "device"\n')
    assert "providers.copilot.flow" in why and "built in" in why
    why = refused(tmp_path, "[providers.grok]\nenabled = true\n")
    assert "unknown provider" in why and "flow" in why
    two = block("https://a.test") + block("https://b.test").replace("grok]", "grok2]")
    assert "already the API host of grok" in refused(tmp_path, two)


def test_a_definition_is_a_provider_beside_the_built_in_ones(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(block("https://auth.grok.test/"))
    config = load_config(path)
    grok = config.defined["grok"]
    assert grok.discovery == "https://auth.grok.test/.well-known/openid-configuration"
    assert [(r.hosts, r.prefixes, r.strip, r.dialect) for r in grok.routes] == [
        ((API_HOST,), ("/v1/",), "/v1", "openai")
    ]
    assert grok.auth_headers("t") == {"Authorization": "Bearer t"}
    before = list(providers.PROVIDERS)
    try:
        providers.use(config.defined)
        assert list(providers.PROVIDERS) == [*before, "grok"]  # after every built-in one
        providers.use({})
        assert list(providers.PROVIDERS) == before
    finally:
        providers.use({})


# -- end to end ------------------------------------------------------------------------------


@pytest.fixture
def grok(user: User, tmp_path: Path) -> Iterator[tuple[FakeIssuer, FakeChat, str]]:
    ca = trustme.CA()
    ca_pem = tmp_path / "upstream-ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    with FakeIssuer() as issuer, FakeChat(issuer, ca) as chat:
        user.write_config(block(issuer.base_url) + chat.resolve_toml())
        yield issuer, chat, str(ca_pem)


def login_device(user: User, issuer: FakeIssuer, bucket: str = "default") -> None:
    proc = user.start("grok", bucket)
    code = re.search(r"\b(\d{4}-\d{4})\b", proc.wait_for("code"))
    assert code is not None
    issuer.approve(code.group(1))
    res = proc.finish()
    assert res.code == 0, res.err


SDK = """
import openai
client = openai.OpenAI(base_url="https://api.grok.test/v1", api_key="oauth:grok")
whole = client.chat.completions.create(model="grok-5", messages=[{"role": "user", "content": "hi"}])
parts = [
    c.choices[0].delta.content or ""
    for c in client.chat.completions.create(
        model="grok-5", messages=[{"role": "user", "content": "hi"}], stream=True
    )
]
print(whole.choices[0].message.content, "".join(parts), [m.id for m in client.models.list()])
"""


def test_a_config_block_serves_the_openai_sdk_through_keyswap(
    user: User, grok: tuple[FakeIssuer, FakeChat, str], tmp_path: Path
) -> None:
    issuer, chat, ca_pem = grok
    help_text = user.run("--help").out
    assert "grok" in help_text and "Grok (test)" in help_text

    login_device(user, issuer)
    login_device(user, issuer, "second")
    assert issuer.count("oidc", "discovery") >= 1
    status = user.run("status")
    assert status.code == 0 and "grok" in status.out and "second" in status.out, status.out

    with Mitmdump(
        tmp_path, base_env(user.env), "--set", f"keyswap_config={user.config}", upstream_ca=ca_pem
    ) as proxy:
        env = {**base_env(user.env), **proxy.client_env()}
        done = subprocess.run(
            [sys.executable, "-c", SDK], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr[-2000:] + proxy.output
        assert done.stdout.split() == ["01234", "01234", "['grok-5']"], done.stdout
        page = httpx.get(
            f"http://127.0.0.1:{proxy.port}/api/usage",
            timeout=10,
        )
    tokens = issuer.valid_access_tokens()
    assert len(chat.seen) == 3
    assert all(token in tokens and header == HEADER[1] for token, header in chat.seen), chat.seen
    for secret in issuer.issued_secrets():
        assert secret not in done.stdout + done.stderr + proxy.output + page.text


def test_a_defined_provider_refreshes_a_rotating_token_at_its_discovered_endpoint(
    user: User, grok: tuple[FakeIssuer, FakeChat, str]
) -> None:
    issuer, _, _ = grok
    login_device(user, issuer)
    first = issuer.grants.refresh.copy()
    res = user.run("refresh", "grok")
    assert res.code == 0, res.err
    assert issuer.grants.spent == first and issuer.grants.refresh.isdisjoint(first)
    assert user.run("logout", "grok").code == 0
    assert "grok" not in user.run("status").out.replace("keyswap login grok", "")


def test_an_issuer_that_names_another_issuer_is_refused(
    user: User, grok: tuple[FakeIssuer, FakeChat, str]
) -> None:
    issuer, chat, _ = grok
    found = f'"{issuer.base_url}/.well-known/openid-configuration"'
    user.write_config(block(issuer.base_url + "/other", discovery=found) + chat.resolve_toml())
    res = user.run("grok", timeout=30)
    assert res.code == 1
    assert res.err.count("\n") == 1 and "names issuer" in res.err, res.err
    user.write_config(block(issuer.base_url + "/none") + chat.resolve_toml())
    res = user.run("grok", timeout=30)
    assert res.code == 1
    assert res.err.count("\n") == 1 and "cannot be used (HTTP 404)" in res.err, res.err
    assert issuer.count("oidc", "device") == 0  # nothing was started at a wrong issuer


def test_a_broken_config_says_why_a_defined_provider_is_unknown(user: User) -> None:
    user.write_config('[providers.grok]\nflow = "device"\n')  # no client_id, no api
    res = user.run("grok")
    assert res.code == 2
    assert "unknown provider or command" in res.err and "providers.grok" in res.err, res.err


def test_a_pkce_provider_logs_in_through_its_loopback_redirect(
    user: User, grok: tuple[FakeIssuer, FakeChat, str]
) -> None:
    """The second worked example: auth code + PKCE (S256), endpoints from discovery, the
    code returned to a loopback listener on any free port."""
    issuer, chat, _ = grok
    user.write_config(block(issuer.base_url, flow='"pkce"') + chat.resolve_toml())
    proc = user.start("grok", "--no-browser")
    url = re.search(r"https?://\S+", proc.wait_for(issuer.base_url))
    assert url is not None and "code_challenge_method=S256" in url.group(0)
    location = httpx.get(url.group(0), follow_redirects=False).headers["location"]
    assert location.startswith("http://127.0.0.1:") and "/callback?" in location
    httpx.get(location)
    res = proc.finish()
    assert res.code == 0, res.err
    assert issuer.count("oidc", "token") == 1 and len(issuer.valid_access_tokens()) == 1


def test_enabled_a_defined_provider_logs_in_on_first_use_inside_the_proxy(
    user: User, grok: tuple[FakeIssuer, FakeChat, str], tmp_path: Path
) -> None:
    issuer, chat, ca_pem = grok
    user.write_config(block(issuer.base_url, enabled="true") + chat.resolve_toml())
    body = {"model": "grok-5", "messages": [{"role": "user", "content": "hi"}]}
    with Mitmdump(
        tmp_path, base_env(user.env), "--set", f"keyswap_config={user.config}", upstream_ca=ca_pem
    ) as proxy:
        verify = ssl.create_default_context(cafile=proxy.ca)
        with httpx.Client(proxy=proxy.url, verify=verify, timeout=30) as client:
            with ThreadPoolExecutor(1) as pool:
                waiting = pool.submit(
                    client.post,
                    f"https://{API_HOST}/v1/chat/completions",
                    headers={"Authorization": "Bearer oauth:grok"},
                    json=body,
                )
                line = proxy.wait_for("a request needs Grok (test)")
                code = re.search(r"\b(\d{4}-\d{4})\b", line)
                assert code is not None, line
                issuer.approve(code.group(1))
                resp = waiting.result(timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == "01234"
    assert [token for token, _ in chat.seen] == list(issuer.valid_access_tokens())
