"""Outbound HTTP for keyswap itself (logins, refreshes, token exchanges).

Verifies TLS against certifi + the system roots + `SSL_CERT_FILE`, dials the
addresses `[resolve]` names while keeping SNI and Host, and ignores proxy variables
(after `login env` they point at keyswap itself); the addon passes mitmproxy's
`upstream:` proxy explicitly.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterable

import certifi
import httpx

from .config import Config

USER_AGENT = "keyswap/0.1"


def ssl_context(extra_cas: Iterable[str] = ()) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=certifi.where())
    ctx.load_default_certs()
    for cafile in (os.environ.get("SSL_CERT_FILE"), *extra_cas):
        if cafile:
            ctx.load_verify_locations(cafile=cafile)
    return ctx


class _ResolvingTransport(httpx.AsyncBaseTransport):
    """Like curl --resolve: connect to the configured address, keep SNI and Host."""

    def __init__(self, inner: httpx.AsyncBaseTransport, config: Config) -> None:
        self._inner, self._config = inner, config

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        port = url.port or (443 if url.scheme == "https" else 80)
        target = self._config.resolve_target(url.host, port)
        if target is not None:
            request.extensions = {**request.extensions, "sni_hostname": url.host}
            request.url = url.copy_with(host=target[0], port=target[1])
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def make_client(
    config: Config,
    *,
    timeout: float = 30.0,
    proxy: httpx.Proxy | str | None = None,
    verify: ssl.SSLContext | None = None,
) -> httpx.AsyncClient:
    ctx = verify or ssl_context()
    inner = httpx.AsyncHTTPTransport(verify=ctx, proxy=proxy, retries=1)
    # Through an upstream proxy, names are the proxy's to resolve.
    transport = inner if proxy else _ResolvingTransport(inner, config)
    return httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(timeout, connect=10.0),
        headers={"User-Agent": USER_AGENT},
        trust_env=False,
        follow_redirects=False,
    )
