"""keyswap in a real mitmdump, with the official SDKs and curl as clients, against fake
provider APIs over real TLS."""

from __future__ import annotations

import http.server
import itertools
import json
import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.conftest import User
from tests.e2e import Stack, stack
from tests.proxy import Mitmdump


@pytest.fixture
def s(user: User, tmp_path: Path) -> Iterator[Stack]:
    with stack(user, tmp_path) as st:
        yield st


def http_client(proxy: Mitmdump, proxy_url: str | None = None) -> httpx.Client:
    verify = ssl.create_default_context(cafile=proxy.ca)
    return httpx.Client(proxy=proxy_url or proxy.url, verify=verify, timeout=30)


def sdk_env(proxy: Mitmdump, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in proxy.client_env().items():
        monkeypatch.setenv(key, value)


MESSAGES = "https://api.anthropic.com/v1/messages"
_BODY = {"model": "m", "max_tokens": 5, "messages": []}


def post_messages(client: httpx.Client, key: str = "oauth:anthropic") -> httpx.Response:
    return client.post(MESSAGES, headers={"x-api-key": key}, json=_BODY)


def stream_messages(client: httpx.Client, key: str = "oauth:anthropic") -> Any:
    return client.stream(
        "POST", MESSAGES, headers={"x-api-key": key}, json={**_BODY, "stream": True}
    )


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


# -- injection per provider -----------------------------------------------------------------


def test_anthropic_sdk_streams_on_the_oauth_token(
    s: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = s.login_anthropic()
    with s.proxy() as proxy:
        sdk_env(proxy, monkeypatch)
        client = anthropic.Anthropic(api_key="oauth:anthropic")
        arrivals: list[float] = []
        text = ""
        with client.messages.stream(
            model="claude-test",
            max_tokens=64,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"anthropic-beta": "interleaved-thinking-2025-05-14"},
        ) as stream:
            for chunk in stream.text_stream:
                arrivals.append(time.monotonic())
                text += chunk
    assert text == s.api.text
    assert min(gaps(arrivals)) >= 0.6 * s.api.event_gap, "events arrived bunched"
    call = s.api.calls[-1]
    assert call.headers["authorization"] == f"Bearer {token}"
    assert "x-api-key" not in call.headers
    betas = call.headers["anthropic-beta"].split(",")
    assert "oauth-2025-04-20" in betas and "interleaved-thinking-2025-05-14" in betas
    assert token not in proxy.output


def test_copilot_via_openai_sdk_at_its_own_host(s: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    token = s.login_copilot()
    with s.proxy() as proxy:
        sdk_env(proxy, monkeypatch)
        client = openai.OpenAI(api_key="oauth:copilot", base_url="https://api.githubcopilot.com")
        chunks = list(
            client.chat.completions.create(
                model="gpt-4.1", messages=[{"role": "user", "content": "hi"}], stream=True
            )
        )
    assert chunks
    call = s.api.calls[-1]
    assert call.headers["host"] == "api.individual.githubcopilot.com", "the host the token names"
    assert call.headers["authorization"] == f"Bearer {token}"
    assert call.headers["x-initiator"] == "user"
    assert call.headers["copilot-integration-id"] == "vscode-chat"


def test_copilot_for_a_client_hard_wired_to_openai(
    s: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = s.login_copilot()
    with s.proxy() as proxy:
        sdk_env(proxy, monkeypatch)
        client = openai.OpenAI(api_key="oauth:copilot")  # api.openai.com
        reply = client.chat.completions.create(
            model="gpt-4.1",
            messages=[
                {"role": "user", "content": "run it"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "done"},
            ],
        )
    assert reply.choices
    call = s.api.calls[-1]
    assert (call.headers["host"], call.path) == (
        "api.individual.githubcopilot.com",
        "/chat/completions",
    )
    assert call.headers["authorization"] == f"Bearer {token}"
    assert call.headers["x-initiator"] == "agent", "a tool result is not a premium user turn"


def test_codex_gets_its_account_header(s: Stack) -> None:
    token = s.login_codex()
    with s.proxy() as proxy, http_client(proxy) as client:
        resp = client.post(
            "https://chatgpt.com/backend-api/codex/responses",
            headers={"Authorization": "Bearer oauth:codex"},
            json={
                "model": "gpt-5",
                "instructions": "",
                "input": "hi",
                "stream": True,
                "store": False,
            },
        )
    assert resp.status_code == 200, resp.text
    call = s.api.calls[-1]
    assert call.headers["authorization"] == f"Bearer {token}"
    assert call.headers["chatgpt-account-id"] == s.oauth.codex_account_id


def test_real_keys_pass_untouched(s: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    with s.proxy() as proxy:
        sdk_env(proxy, monkeypatch)
        client = openai.OpenAI(api_key="sk-real-key-123")
        client.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "x"}])
    call = s.api.calls[-1]
    assert call.headers["host"] == "api.openai.com"
    assert call.headers["authorization"] == "Bearer sk-real-key-123"


# -- guard rails -----------------------------------------------------------------------------


def test_placeholder_for_a_foreign_route_gets_no_token(s: Stack) -> None:
    s.login_anthropic()
    before = len(s.api.calls)
    with s.proxy() as proxy, http_client(proxy) as client:
        foreign = client.post(
            "https://api.githubcopilot.com/v1/messages",
            headers={"x-api-key": "oauth:anthropic"},
            json={},
        )
        unknown = client.post(
            "https://api.anthropic.com/v1/messages", headers={"x-api-key": "oauth:nope"}, json={}
        )
    assert foreign.status_code == 403
    assert "anthropic tokens are not sent to api.githubcopilot.com" in foreign.text
    assert unknown.status_code == 400 and "unknown provider 'nope'" in unknown.text
    assert unknown.json()["type"] == "error", "Anthropic's error shape"
    assert len(s.api.calls) == before


def remote_address() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))
            addr = probe.getsockname()[0]
    except OSError:
        return None
    return None if addr.startswith("127.") else addr


@contextmanager
def local_origin() -> Iterator[str]:
    """A plain HTTP server on loopback: traffic that is not keyswap's."""

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"hello")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_remote_clients_cannot_use_the_proxy_at_all(s: Stack) -> None:
    """`mitmdump -s addon/inject.py` listens on every interface: keyswap says so at start and
    closes connections from other machines, for tokens and any other traffic alike (no open
    proxy), while clients on this machine are served as before."""
    addr = remote_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback address to be a remote client from")
    s.login_anthropic()
    with local_origin() as origin, s.proxy("--listen-host", "0.0.0.0") as proxy:
        proxy.wait_for("beyond this machine; connections from other machines are refused")
        with http_client(proxy, f"http://{addr}:{proxy.port}") as remote:
            with pytest.raises(httpx.TransportError):
                post_messages(remote)
            with pytest.raises(httpx.TransportError):
                remote.get(origin)
        proxy.wait_for(f"refused a connection from {addr}")
        with http_client(proxy) as local:
            assert local.get(origin).text == "hello"
    assert not [c for c in s.api.calls if c.provider == "anthropic"]


def test_allow_remote_lets_other_machines_in(s: Stack) -> None:
    addr = remote_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback address to be a remote client from")
    s.configure("[proxy]\nallow_remote = true\n")
    token = s.login_anthropic()
    with local_origin() as origin, s.proxy("--listen-host", "0.0.0.0") as proxy:
        proxy.wait_for("allow_remote = true and no [clients.*] secrets")
        with http_client(proxy, f"http://{addr}:{proxy.port}") as remote:
            assert remote.get(origin).text == "hello"
            assert post_messages(remote).status_code == 200
    assert s.api.calls[-1].headers["authorization"] == f"Bearer {token}"


def test_token_never_in_dumps_or_flow_output(s: Stack, tmp_path: Path) -> None:
    token = s.login_anthropic()
    dump = tmp_path / "flows.mitm"
    with s.proxy("-w", str(dump), "--set", "flow_detail=4") as proxy, http_client(proxy) as c:
        resp = c.post(
            "https://api.anthropic.com/v1/messages",
            headers={"x-api-key": "oauth:anthropic"},
            json={"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
        )
        assert resp.status_code == 200
        proxy.wait_for("oauth:anthropic")
    assert s.api.calls[-1].headers["authorization"] == f"Bearer {token}"
    assert token not in proxy.output
    assert token.encode() not in dump.read_bytes()
    assert b"oauth:anthropic" in dump.read_bytes(), "the flow shows the placeholder"


def test_http2_client_streams_through_the_relay(s: Stack) -> None:
    token = s.login_anthropic()
    body = json.dumps({**_BODY, "stream": True})
    # Without upstream_cert mitmproxy does not ask the (HTTP/1.1) fake first and offers the
    # client h2, as it would for the real API hosts, which speak h2.
    with s.proxy("--set", "upstream_cert=false", "--set", "flow_detail=3") as proxy:
        argv = ["curl", "-sS", "-N", "--http2", "--proxy", proxy.url, "--cacert", proxy.ca]
        argv += ["-H", "x-api-key: oauth:anthropic", "-H", "content-type: application/json"]
        argv += ["-w", "\nversion %{http_version}\n", "-d", body, MESSAGES]
        curl = subprocess.Popen(
            argv, stdout=subprocess.PIPE, text=True, env={"PATH": os.environ["PATH"]}
        )
        assert curl.stdout is not None
        arrivals, lines = [], []
        for line in curl.stdout:
            lines.append(line.strip())
            if line.startswith("event: content_block_delta"):
                arrivals.append(time.monotonic())
        assert curl.wait(30) == 0
        proxy.wait_for("oauth:anthropic")
    assert lines[-1] == "version 2"
    assert "event: message_stop" in lines
    assert len(arrivals) == s.api.stream_events
    assert min(gaps(arrivals)) >= 0.6 * s.api.event_gap, "events arrived bunched"
    assert s.api.calls[-1].headers["authorization"] == f"Bearer {token}"
    assert token not in proxy.output
    assert "POST https://api.anthropic.com/v1/messages HTTP/2.0" in proxy.output  # not the relay


# -- buckets ---------------------------------------------------------------------------------


def test_429_moves_to_the_next_bucket_and_still_streams(s: Stack) -> None:
    s.configure('[providers.anthropic]\nstrategy = "failover"\nbuckets = ["a", "b"]\n')
    token_a, token_b = s.login_anthropic("a"), s.login_anthropic("b")
    s.api.rate_limit("anthropic", token=token_a, seconds=120)
    with s.proxy() as proxy, http_client(proxy) as client:
        arrivals = []
        with stream_messages(client) as resp:
            assert resp.status_code == 200
            for line in resp.iter_lines():
                if line.startswith("event: content_block_delta"):
                    arrivals.append(time.monotonic())
        # The next request skips "a" (cooling) and goes straight to "b".
        again = post_messages(client)
    assert len(arrivals) == s.api.stream_events
    assert min(gaps(arrivals)) >= 0.6 * s.api.event_gap, "the retried stream was buffered"
    used = [c.headers["authorization"] for c in s.api.calls if c.provider == "anthropic"]
    assert used == [f"Bearer {token_a}", f"Bearer {token_b}", f"Bearer {token_b}"]
    assert again.status_code == 200


def test_all_buckets_cooling_answers_429_with_retry_after(s: Stack) -> None:
    token_a, token_b = s.login_anthropic("a"), s.login_anthropic("b")
    s.api.rate_limit("anthropic", token=token_a, seconds=100)
    s.api.rate_limit("anthropic", token=token_b, seconds=40)
    with s.proxy() as proxy, http_client(proxy) as client:
        resp = post_messages(client)
    assert resp.status_code == 429
    assert 30 <= int(resp.headers["retry-after"]) <= 41, "the soonest reset, from the hints"
    body = resp.json()
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert "keyswap login anthropic" in body["error"]["message"]


def test_401_refreshes_once_and_retries(s: Stack) -> None:
    old = s.login_anthropic()
    s.api.fail_auth("anthropic", times=1)
    with s.proxy() as proxy, http_client(proxy) as client:
        resp = post_messages(client)
    assert resp.status_code == 200, resp.text
    assert s.oauth.count("anthropic", "refresh") == 1
    new = s.token("anthropic", "default")
    assert new != old, "the rotated pair was stored"
    used = [c.headers["authorization"] for c in s.api.calls if c.provider == "anthropic"]
    assert used == [f"Bearer {old}", f"Bearer {new}"]


def test_not_logged_in_is_a_401_that_says_what_to_run(s: Stack) -> None:
    with s.proxy() as proxy, http_client(proxy) as client:
        resp = client.post(
            "https://api.openai.com/v1/chat/completions",
            headers={"Authorization": "Bearer oauth:copilot"},
            json={"model": "gpt-4.1", "messages": []},
        )
    assert resp.status_code == 401
    assert "keyswap login copilot" in resp.json()["error"]["message"]


# -- streaming --------------------------------------------------------------------------------


def test_client_disconnect_closes_the_upstream_stream(s: Stack) -> None:
    s.login_anthropic()
    s.api.stream_events = 200
    with s.proxy() as proxy, http_client(proxy) as client:
        with stream_messages(client) as resp:
            for line in resp.iter_lines():
                if line.startswith("event: content_block_delta"):
                    break
        deadline = time.monotonic() + 10
        while not s.api.disconnects and time.monotonic() < deadline:
            time.sleep(0.05)
    assert s.api.disconnects, "upstream kept streaming to nobody"


def test_curl_through_the_proxy(s: Stack) -> None:
    token = s.login_anthropic()
    with s.proxy() as proxy:
        out = subprocess.run(
            [
                "curl",
                "-sS",
                "-N",
                "--proxy",
                proxy.url,
                "--cacert",
                proxy.ca,
                "https://api.anthropic.com/v1/messages",
                "-H",
                "x-api-key: oauth:anthropic",
                "-H",
                "content-type: application/json",
                "-d",
                json.dumps({"model": "m", "max_tokens": 5, "stream": True, "messages": []}),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            env={"PATH": os.environ["PATH"]},
        )
    assert out.returncode == 0, out.stderr
    assert "message_stop" in out.stdout
    assert s.api.calls[-1].headers["authorization"] == f"Bearer {token}"


# -- Codex: the plain openai SDK's Responses API on a ChatGPT login ---------------------------


def test_openai_responses_on_codex_streamed_and_not(
    s: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = s.login_codex()
    with s.proxy() as proxy:
        sdk_env(proxy, monkeypatch)
        client = openai.OpenAI(api_key="oauth:codex")
        whole = client.responses.create(model="gpt-5", input="hi", max_output_tokens=50)
        arrivals, text = [], ""
        stream = client.responses.create(model="gpt-5", input="hi", stream=True)
        for event in stream:
            if event.type == "response.output_text.delta":
                arrivals.append(time.monotonic())
                text += event.delta
    expected = s.api.text
    assert whole.output_text == expected
    assert text == expected
    assert min(gaps(arrivals)) >= 0.6 * s.api.event_gap
    first, second = [c for c in s.api.calls if c.provider == "codex"][-2:]
    for call in (first, second):
        assert (call.headers["host"], call.path) == ("chatgpt.com", "/backend-api/codex/responses")
        assert call.headers["authorization"] == f"Bearer {token}"
        assert call.body["store"] is False and call.body["stream"] is True
        assert call.body["instructions"] == ""
    assert "max_output_tokens" not in first.body


def test_round_robin_alternates_buckets(s: Stack) -> None:
    s.configure('[providers.anthropic]\nstrategy = "round-robin"\nbuckets = ["a", "b"]\n')
    token_a, token_b = s.login_anthropic("a"), s.login_anthropic("b")
    with s.proxy() as proxy, http_client(proxy) as client:
        for _ in range(4):
            resp = post_messages(client)
            assert resp.status_code == 200
        pinned = post_messages(client, "oauth:anthropic:b")
    assert pinned.status_code == 200
    used = [c.headers["authorization"].split()[-1] for c in s.api.calls]
    assert used == [token_a, token_b, token_a, token_b, token_b]


def test_upstream_proxy_mode_carries_keyswaps_requests(s: Stack) -> None:
    from tests.connect_proxy import ConnectProxy

    token = s.login_anthropic()
    routes = {"api.anthropic.com:443": ("127.0.0.1", s.api.port)}
    with ConnectProxy(routes) as upstream:
        with s.proxy("--mode", f"upstream:{upstream.url}") as proxy, http_client(proxy) as c:
            resp = post_messages(c)
    assert resp.status_code == 200, resp.text
    assert "api.anthropic.com:443" in upstream.connects
    assert s.api.calls[-1].headers["authorization"] == f"Bearer {token}"


def test_hosts_keyswap_does_not_serve_are_tunnelled(s: Stack, tmp_path: Path) -> None:
    """Traffic to other hosts is neither decrypted nor slowed: the client sees the origin's
    own certificate, which mitmproxy's CA did not issue."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import trustme

    ca = trustme.CA()
    ca_pem = tmp_path / "origin-ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))

    class Hello(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-length", "5")
            self.end_headers()
            self.wfile.write(b"hello")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("other.example").configure_cert(tls)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = s.user.config.read_text().replace(
        "[resolve]\n", f'[resolve]\n"other.example:443" = "127.0.0.1:{server.server_address[1]}"\n'
    )
    s.user.write_config(config)
    try:
        with s.proxy() as proxy:
            origin_only = ssl.create_default_context(cafile=str(ca_pem))
            with httpx.Client(proxy=proxy.url, verify=origin_only) as client:
                assert client.get("https://other.example/").text == "hello"
            with httpx.Client(proxy=proxy.url, verify=origin_only) as client:
                with pytest.raises(httpx.ConnectError):
                    client.get("https://api.anthropic.com/")  # served: mitmproxy's certificate
    finally:
        server.shutdown()


def _broken_upstream(s: Stack, tmp_path: Path, answer: bytes) -> None:
    """api.anthropic.com answers one request with `answer`, then drops the connection."""
    import threading

    import trustme

    ca = trustme.CA()
    ca_pem = tmp_path / "broken-ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("api.anthropic.com").configure_cert(tls)
    listener = socket.create_server(("127.0.0.1", 0))

    def serve_once() -> None:
        conn, _ = listener.accept()
        with tls.wrap_socket(conn, server_side=True) as c:
            c.recv(65536)
            c.sendall(answer)
        listener.close()

    threading.Thread(target=serve_once, daemon=True).start()
    port = listener.getsockname()[1]
    config = (
        s.user.config.read_text()
        .replace('"api.anthropic.com:443" =', '"unused.example:443" =')
        .replace("[resolve]\n", f'[resolve]\n"api.anthropic.com:443" = "127.0.0.1:{port}"\n')
    )
    s.user.write_config(config)
    s.ca_pem = str(ca_pem)


def test_a_stream_the_provider_breaks_off_stays_visibly_broken(s: Stack, tmp_path: Path) -> None:
    """Upstream dies mid-stream: the client must see an incomplete answer, never a clean end."""
    s.login_anthropic()
    event = b"event: content_block_delta\ndata: {}\n\n"
    _broken_upstream(
        s,
        tmp_path,
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        + b"%x\r\n%s\r\n" % (len(event), event),  # and no final 0-chunk
    )
    with s.proxy() as proxy, http_client(proxy) as client:
        # Incomplete chunked body or a reset, depending on timing: either is visibly broken.
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            with stream_messages(client) as resp:
                assert resp.status_code == 200
                for _ in resp.iter_lines():
                    pass
        proxy.wait_for("stream broke off")


def test_an_answer_broken_off_before_its_body_is_a_502_the_client_can_read(
    s: Stack, tmp_path: Path
) -> None:
    s.login_anthropic()
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n"
    _broken_upstream(s, tmp_path, head)
    with s.proxy() as proxy, http_client(proxy) as client:
        resp = post_messages(client)
        proxy.wait_for("stream broke off")
    assert resp.status_code == 502
    error = resp.json()
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    assert "broke off" in error["error"]["message"]
