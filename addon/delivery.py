"""Where an API token may go: the one gate every outbound use of a token passes.

A token is delivered only over TLS (plain http only to a loopback test endpoint), only to a
host its provider names as its own (`Provider.may_deliver_to`: the built-in API hosts, or
the API host a configured endpoint or the credential itself names), and only to a path at
or below the API base that no server can read as another path. The relay (HTTP and the
WebSocket upgrade) and the status page's model listing all ask here; a refusal is the same
502 and message on every path, since it means the login or the config names a destination
that is not the provider's, not that the client asked for something wrong.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from login.config import is_loopback_host
from login.errors import ClientError, KeyswapError
from login.providers.paths import checked_path, under
from login.tokens import Access

from .outbound import Target, UpstreamError


class Refused(KeyswapError):
    """A token would go where its provider's tokens may not: nothing was sent."""

    status = 502

    def __init__(self, provider: str, where: str, why: str) -> None:
        super().__init__(f"refusing to send a {provider} token to {where}: {why}")


def destination(access: Access, path: str, query: Iterable[tuple[str, str]] = ()) -> Target:
    """Where `access`'s token goes for a call to `path` (relative to the API base), or
    Refused saying why it may not go there."""
    provider, base = access.provider.name, access.base_url
    try:
        to = Target.of(base, path, query)
    except (UpstreamError, ValueError):
        raise Refused(provider, repr(base), "it is not a URL") from None
    where = f"{to.scheme}://{to.authority}"
    if to.scheme != "https" and not (to.scheme == "http" and is_loopback_host(to.host)):
        raise Refused(provider, where, "tokens go only over https")
    if not access.provider.may_deliver_to(to.host, access.endpoints):
        raise Refused(provider, where, f"it is not one of {provider}'s API hosts")
    delivered = to.path.partition("?")[0]
    try:
        checked_path(delivered)
    except ClientError:
        raise Refused(
            provider, where + delivered, "a server could read it as another path"
        ) from None
    if not under(delivered, urlsplit(base).path.rstrip("/") or "/"):
        raise Refused(provider, where + delivered, "it is outside the API's base path")
    return to
