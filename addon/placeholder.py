"""Placeholder keys: `oauth`, `oauth:<provider>`, `oauth:<provider>:<bucket>`, each with an
optional `#<client secret>` for proxies shared between clients."""

from __future__ import annotations

import re
from dataclasses import dataclass

from mitmproxy import http

# Headers clients put keys in; all of them are removed from a request keyswap injects.
KEY_HEADERS = ("authorization", "x-api-key", "x-goog-api-key", "api-key")

_PLACEHOLDER = re.compile(
    r"oauth"
    r"(?::(?P<provider>[a-z][a-z0-9_-]{0,31})"
    r"(?::(?P<bucket>[A-Za-z0-9][A-Za-z0-9@._+-]{0,127}))?)?"
    r"(?:#(?P<secret>[A-Za-z0-9._~+/=-]{1,256}))?"
)
REDACTED = "<redacted>"
_KEY_NAMES = {name.encode(): name for name in KEY_HEADERS}


@dataclass(frozen=True)
class Placeholder:
    provider: str | None
    bucket: str | None
    secret: str | None = None
    where: str = ""  # the header name, or "key" for the query parameter


def parse(value: str, where: str = "") -> Placeholder | None:
    """The placeholder in `value`, else None. Anything else, including something that merely
    starts with "oauth", is a real key and passes untouched."""
    m = _PLACEHOLDER.fullmatch(value.strip())
    return Placeholder(m["provider"], m["bucket"], m["secret"], where) if m else None


def find(request: http.Request) -> Placeholder | None:
    # One pass over the raw headers: this runs for every request through the proxy.
    first: dict[str, bytes] = {}
    for raw_key, raw_value in request.headers.fields:
        name = _KEY_NAMES.get(raw_key.lower())
        if name is not None and name not in first:
            first[name] = raw_value
    for name in KEY_HEADERS:
        raw = first.get(name)
        if raw is None:
            continue
        value = raw.decode("latin-1")
        if name == "authorization":
            scheme, _, value = value.partition(" ")
            if scheme.lower() != "bearer":
                continue
        if found := parse(value, name):
            return found
    if b"key=" not in request.data.path:
        return None
    key = request.query.get("key")
    if key is not None and (found := parse(key, "key")):
        return found
    return None


def redact(request: http.Request, found: Placeholder) -> None:
    """Keep a client secret out of the flow that mitmproxy shows and saves."""
    if not found.secret:
        return
    if found.where == "key":
        request.query["key"] = request.query["key"].replace(found.secret, REDACTED)
    else:
        request.headers[found.where] = request.headers[found.where].replace(found.secret, REDACTED)
