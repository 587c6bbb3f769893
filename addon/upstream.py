"""mitmproxy's `upstream:` mode, which keyswap's own connections (the relay, logins and
refreshes) take too, with `upstream_auth`."""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field

import httpx
from mitmproxy import exceptions
from mitmproxy.proxy import mode_specs

from .outbound import basic_auth


@dataclass(frozen=True)
class Upstream:
    """The proxy of mitmproxy's `upstream:` mode, with `upstream_auth`."""

    scheme: str  # "http", or "https" for TLS to the proxy itself
    host: str
    port: int
    # `user:password`, a secret like a token: out of repr and so out of every log line.
    auth: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def for_httpx(self, verify: ssl.SSLContext) -> httpx.Proxy:
        """The same proxy for httpx (logins, refreshes): the proxy's certificate checked like
        the providers', and the credential sent exactly as the relay sends it."""
        headers = {"Proxy-Authorization": basic_auth(self.auth)} if self.auth else None
        tls = verify if self.scheme == "https" else None  # httpcore refuses one for http
        return httpx.Proxy(self.url, ssl_context=tls, headers=headers)

    def __str__(self) -> str:
        return self.url + (" (with upstream_auth)" if self.auth else "")


def upstream_proxy(modes: Iterable[str], auth: str | None) -> Upstream | None:
    """The upstream proxy named in mitmproxy's `mode` entries, read by mitmproxy's own parser
    so that every form it accepts means the same here: with or without `http://` or
    `https://`, with or without a port, with an `@[host:]port` listen address, one of several
    modes. Beside other modes it carries keyswap's requests from every listener: the relay,
    logins and refreshes belong to no one listener. Raises OptionsError for what keyswap
    cannot honour."""
    found: list[Upstream] = []
    for spec in modes:
        try:
            mode = mode_specs.ProxyMode.parse(spec)
        except ValueError:
            continue  # mitmproxy refuses the option itself, with its own message
        if isinstance(mode, mode_specs.UpstreamMode):
            host, port = mode.address
            proxy = Upstream(mode.scheme, host, port)
            if proxy not in found:
                found.append(proxy)
    if not found:
        return None
    if len(found) > 1:
        # Which one a login or a refresh should take, nothing tells.
        names = ", ".join(p.url for p in found)
        raise exceptions.OptionsError(  # type: ignore[no-untyped-call]
            f"keyswap sends its own requests through one upstream proxy; the modes name "
            f"{len(found)}: {names}"
        )
    if auth is not None and not _AUTH.search(auth):
        # Without the value: it is a secret even when malformed.
        raise exceptions.OptionsError(  # type: ignore[no-untyped-call]
            "upstream_auth must be USER:PASSWORD"
        )
    return Upstream(found[0].scheme, found[0].host, found[0].port, auth)


# What mitmproxy's own upstream_auth addon accepts: something, then a colon.
_AUTH = re.compile(".+:")
