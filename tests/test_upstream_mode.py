"""mitmproxy's upstream mode as keyswap's own connections take it: every `--mode` form
mitmproxy accepts, read by mitmproxy's parser; `upstream_auth` sent on the CONNECT and kept
out of every log; what keyswap refuses; and a real mitmdump relaying through a proxy that
wants credentials."""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from mitmproxy import exceptions
from mitmproxy.addons.upstream_auth import UpstreamAuth
from mitmproxy.test import taddons

from addon.injector import Injector
from addon.outbound import Outbound, Target, UpstreamError
from addon.settings import Settings
from addon.upstream import Upstream, upstream_proxy
from login.config import Config
from login.net import make_client
from tests.conftest import User, free_port
from tests.connect_proxy import ConnectProxy
from tests.e2e import Stack, stack
from tests.test_addon import http_client, post_messages
from tests.test_outbound import Scripted, _tls_server, _trusting, body_of, run

AUTH = "proxy-user:s3cret:with-colon"
BASIC = "Basic " + base64.b64encode(AUTH.encode()).decode()

# -- the forms mitmproxy accepts --------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "url"),
    [
        ("upstream:http://proxy.corp:3128", "http://proxy.corp:3128"),
        ("upstream:proxy.corp:3128", "http://proxy.corp:3128"),  # no scheme: http
        ("upstream:proxy.corp", "http://proxy.corp:80"),
        ("upstream:https://proxy.corp", "https://proxy.corp:443"),
        ("upstream:https://proxy.corp:8443/", "https://proxy.corp:8443"),
        ("upstream:http://proxy.corp:3128@8081", "http://proxy.corp:3128"),  # listen port
        ("upstream:proxy.corp:3128@8081", "http://proxy.corp:3128"),
        ("upstream:https://proxy.corp:3129@127.0.0.1:8081", "https://proxy.corp:3129"),
        ("upstream:http://10.1.2.3:3128", "http://10.1.2.3:3128"),
        ("upstream:http://[::1]:3128@8081", "http://[::1]:3128"),
        ("UPSTREAM:http://proxy.corp:3128", "http://proxy.corp:3128"),
    ],
)
def test_every_upstream_form_mitmproxy_accepts_names_its_proxy(spec: str, url: str) -> None:
    up = upstream_proxy([spec], None)
    assert up is not None and up.url == url and up.auth is None


def test_other_modes_beside_one_upstream_leave_it_to_keyswap() -> None:
    up = upstream_proxy(["regular@8080", "upstream:http://proxy.corp:3128@8081"], AUTH)
    assert up == Upstream("http", "proxy.corp", 3128, AUTH)
    # One proxy spelled two ways on two listeners is one proxy.
    twice = ["upstream:proxy.corp:3128@8081", "upstream:http://proxy.corp:3128@8082"]
    assert upstream_proxy(twice, None) == Upstream("http", "proxy.corp", 3128)


@pytest.mark.parametrize("modes", [["regular"], ["regular@8080", "socks5@1080"], []])
def test_no_upstream_mode_means_direct_even_with_upstream_auth(modes: list[str]) -> None:
    # mitmproxy uses upstream_auth for reverse mode too; keyswap has no proxy to give it to.
    assert upstream_proxy(modes, AUTH) is None


@pytest.mark.parametrize(
    "modes",
    [
        ["upstream:http://a.corp:3128@8081", "upstream:http://b.corp:3128@8082"],
        ["upstream:http://a.corp:3128@8081", "upstream:https://a.corp:3128@8082"],
    ],
)
def test_two_upstream_proxies_are_refused(modes: list[str]) -> None:
    with pytest.raises(exceptions.OptionsError, match="one upstream proxy; the modes name 2"):
        upstream_proxy(modes, None)


def test_a_malformed_upstream_auth_is_refused_without_showing_it() -> None:
    with pytest.raises(exceptions.OptionsError) as err:
        upstream_proxy(["upstream:proxy.corp:3128"], "just-a-s3cret")
    assert "USER:PASSWORD" in str(err.value) and "s3cret" not in str(err.value)


def test_the_credential_is_in_no_rendering_of_the_proxy() -> None:
    up = Upstream("http", "proxy.corp", 3128, AUTH)
    assert str(up) == "http://proxy.corp:3128 (with upstream_auth)"
    assert "s3cret" not in repr(up) and "s3cret" not in up.url
    assert "s3cret" not in repr(up.for_httpx(ssl.create_default_context()))


# -- the addon's configure ----------------------------------------------------------------------


@pytest.fixture
def injector(user: User, monkeypatch: pytest.MonkeyPatch) -> Iterator[Injector]:
    for key, value in user.env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    yield Injector(settings)


def test_configure_reads_mode_and_upstream_auth(
    injector: Injector, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    async def main() -> None:  # in a loop, as mitmproxy calls it: the old client closes in it
        with taddons.context(UpstreamAuth(), injector.settings, injector) as tctx:
            mode = ["upstream:http://proxy.corp:3128@8081"]
            tctx.configure(injector, mode=mode, upstream_auth=AUTH)
            assert injector.upstream == Upstream("http", "proxy.corp", 3128, AUTH)
            assert injector.dispatch.sender is not None
            tctx.configure(injector, upstream_auth=None)
            assert injector.upstream == Upstream("http", "proxy.corp", 3128)
            tctx.configure(injector, mode=["regular"])
            assert injector.upstream is None

    run(main())
    assert "proxy.corp:3128" in caplog.text
    assert "s3cret" not in caplog.text and BASIC.split()[1] not in caplog.text


def test_a_refused_mode_leaves_options_and_proxy_as_they_were(injector: Injector) -> None:
    async def main() -> None:
        with taddons.context(UpstreamAuth(), injector.settings, injector) as tctx:
            tctx.configure(injector, mode=["upstream:https://proxy.corp@8081"])
            both = ["upstream:http://a.corp:3128@8081", "upstream:http://b.corp:3128@8082"]
            with pytest.raises(exceptions.OptionsError, match="one upstream proxy"):
                tctx.configure(injector, mode=both)
            assert tctx.options.mode == ["upstream:https://proxy.corp@8081"]
            assert injector.upstream == Upstream("https", "proxy.corp", 443)

    run(main())


# -- the relay's client and httpx through a proxy that wants credentials -----------------------


def _tls_origin(ca: trustme.CA) -> Scripted:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await server.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    server = Scripted(handler, _tls_server(ca, "api.example.test"))
    return server


@pytest.mark.parametrize("tls_proxy", [False, True], ids=["http-proxy", "https-proxy"])
def test_the_relay_client_sends_upstream_auth_on_the_connect(tls_proxy: bool) -> None:
    ca = trustme.CA()
    target = Target.of("https://api.example.test", "/v1/x")

    async def main() -> None:
        async with _tls_origin(ca) as origin:
            routes = {"api.example.test:443": ("127.0.0.1", origin.port)}
            tls = _tls_server(ca, "127.0.0.1") if tls_proxy else None
            with ConnectProxy(routes, auth=AUTH, tls=tls) as proxy:
                out = Outbound(_trusting(ca), proxy=proxy.url, proxy_auth=AUTH)
                assert await body_of(out, target) == (200, b"ok")
                assert proxy.authorizations == [BASIC]
                bare = Outbound(_trusting(ca), proxy=proxy.url)
                with pytest.raises(UpstreamError, match="wants credentials; set upstream_auth"):
                    await body_of(bare, target)
                wrong = Outbound(_trusting(ca), proxy=proxy.url, proxy_auth="proxy-user:nope")
                with pytest.raises(UpstreamError, match="did not accept upstream_auth"):
                    await body_of(wrong, target)
                assert proxy.connects == ["api.example.test:443"]

    run(main())


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_logins_and_refreshes_take_the_same_proxy(scheme: str) -> None:
    """keyswap's httpx client (logins, refreshes) gets the proxy, its credential and, for an
    https proxy, the same trust as the providers' certificates."""
    ca = trustme.CA()

    async def main() -> None:
        async with _tls_origin(ca) as origin:
            routes = {"api.example.test:443": ("127.0.0.1", origin.port)}
            tls = _tls_server(ca, "127.0.0.1") if scheme == "https" else None
            with ConnectProxy(routes, auth=AUTH, tls=tls) as proxy:
                port = int(proxy.url.rsplit(":", 1)[1])
                verify = _trusting(ca)
                up = Upstream(scheme, "127.0.0.1", port, AUTH)
                async with make_client(Config(), proxy=up.for_httpx(verify), verify=verify) as c:
                    resp = await c.get("https://api.example.test/token")
                assert (resp.status_code, resp.text) == (200, "ok")
                assert proxy.authorizations == [BASIC]

    run(main())


# -- end to end: a real mitmdump in upstream mode ---------------------------------------------


@pytest.fixture
def s(user: User, tmp_path: Path) -> Iterator[Stack]:
    with stack(user, tmp_path) as st:
        yield st


def test_mitmdump_upstream_mode_relays_with_upstream_auth(s: Stack) -> None:
    """`--mode upstream:http://HOST:PORT@LISTEN --upstream-auth USER:PASS`: the listen port
    is mitmproxy's, the proxy is where keyswap's relay tunnels to, with the credential."""
    token = s.login_anthropic()
    routes = {"api.anthropic.com:443": ("127.0.0.1", s.api.port)}
    with ConnectProxy(routes, auth=AUTH) as upstream:
        listen = free_port()
        mode = f"upstream:{upstream.url}@{listen}"
        # flow_detail=3: mitmdump prints all it knows of each flow; the credential is not in it.
        args = ("--mode", mode, "--upstream-auth", AUTH, "--set", "flow_detail=3")
        with s.proxy(*args) as proxy, http_client(proxy) as c:
            assert proxy.port == listen
            resp = post_messages(c)
            assert resp.status_code == 200, resp.text
        assert upstream.connects == ["api.anthropic.com:443"]
        assert upstream.authorizations == [BASIC]
        assert s.api.calls[-1].headers["authorization"] == f"Bearer {token}"
        assert "s3cret" not in proxy.output and BASIC.split()[1] not in proxy.output

        # The same proxy, no --upstream-auth: refused, and the client is told why.
        with s.proxy("--mode", f"upstream:{upstream.url}") as proxy, http_client(proxy) as c:
            resp = post_messages(c)
        assert resp.status_code == 502
        assert "wants credentials; set upstream_auth" in resp.json()["error"]["message"]
        assert upstream.refused == ["api.anthropic.com:443"]


def test_mitmdump_upstream_mode_over_tls_to_the_proxy(s: Stack) -> None:
    """An https:// upstream proxy, given without a port suffix on the listener: keyswap's relay
    speaks TLS to the proxy (verified like a provider) and TLS to the provider inside it."""
    token = s.login_anthropic()
    routes = {"api.anthropic.com:443": ("127.0.0.1", s.api.port)}
    tls = _tls_server(s.api.ca, "127.0.0.1")  # the CA the proxy trusts for its upstreams
    with ConnectProxy(routes, auth=AUTH, tls=tls) as upstream:
        args = ("--mode", f"upstream:{upstream.url}", "--upstream-auth", AUTH)
        with s.proxy(*args) as proxy, http_client(proxy) as c:
            resp = post_messages(c)
    assert resp.status_code == 200, resp.text
    assert upstream.url.startswith("https://")
    assert upstream.connects == ["api.anthropic.com:443"]
    assert upstream.authorizations == [BASIC]
    assert s.api.calls[-1].headers["authorization"] == f"Bearer {token}"
