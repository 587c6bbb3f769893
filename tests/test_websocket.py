"""Codex CLI's first transport: a WebSocket upgrade on /v1/responses, carried by mitmproxy
with the token keyswap sets, and the placeholder back in the flow afterwards."""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from websockets.asyncio.server import ServerConnection, serve
from websockets.sync.client import connect

from tests.conftest import User
from tests.e2e import Stack, stack


class CodexSocket:
    """A TLS WebSocket server standing in for chatgpt.com's Codex backend."""

    def __init__(self, ca: trustme.CA) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert("chatgpt.com").configure_cert(self.ctx)
        self.handshakes: list[tuple[str, dict[str, str]]] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Future[None] | None = None

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        headers = {k.lower(): v for k, v in ws.request.headers.raw_items()}
        self.handshakes.append((ws.request.path, headers))
        async for message in ws:
            await ws.send(f"echo:{message}")

    async def _main(self) -> None:
        self._stop = self._loop.create_future()
        async with serve(self._handler, "127.0.0.1", 0, ssl=self.ctx) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stop

    def __enter__(self) -> CodexSocket:
        threading.Thread(
            target=self._loop.run_until_complete, args=(self._main(),), daemon=True
        ).start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._loop.call_soon_threadsafe(lambda: self._stop and self._stop.set_result(None))


@pytest.fixture
def s(user: User, tmp_path: Path) -> Iterator[Stack]:
    with stack(user, tmp_path) as st:
        yield st


def test_websocket_upgrade_carries_the_token(s: Stack, tmp_path: Path) -> None:
    token = s.login_codex()
    ca = trustme.CA()
    ca_pem = tmp_path / "ws-ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    with CodexSocket(ca) as backend:
        # Only chatgpt.com is redirected, to the socket server, trusted through its own CA.
        s.user.write_config(
            s.user.config.read_text().split("[resolve]")[0]
            + f'[resolve]\n"chatgpt.com:443" = "127.0.0.1:{backend.port}"\n'
        )
        s.ca_pem = str(ca_pem)
        dump = tmp_path / "flows.mitm"
        with s.proxy("-w", str(dump), "--set", "flow_detail=4") as proxy:
            client_ctx = ssl.create_default_context(cafile=proxy.ca)
            with connect(
                "wss://api.openai.com/v1/responses",
                proxy=proxy.url,
                ssl=client_ctx,
                additional_headers={"Authorization": "Bearer oauth:codex"},
                open_timeout=20,
            ) as ws:
                ws.send("ping")
                assert ws.recv(timeout=10) == "echo:ping"
            proxy.wait_for("oauth:codex")
    [(path, headers)] = backend.handshakes
    assert path == "/backend-api/codex/responses"
    assert headers["host"] == "chatgpt.com"
    assert headers["authorization"] == f"Bearer {token}"
    assert headers["chatgpt-account-id"] == s.oauth.codex_account_id
    assert token not in proxy.output
    assert token.encode() not in dump.read_bytes()
