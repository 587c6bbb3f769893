"""Placeholder keys: `oauth`, `oauth:<provider>`, `oauth:<provider>:<bucket>`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from mitmproxy import http

# Headers clients put keys in; all of them are removed from a request keyswap injects.
KEY_HEADERS = ("authorization", "x-api-key", "x-goog-api-key", "api-key")

_PLACEHOLDER = re.compile(
    r"oauth(?::(?P<provider>[a-z][a-z0-9_-]{0,31})(?::(?P<bucket>[A-Za-z0-9][A-Za-z0-9@._+-]{0,127}))?)?"
)


@dataclass(frozen=True)
class Placeholder:
    provider: str | None
    bucket: str | None
    where: str  # the header name, or "key" for the query parameter


def parse(value: str) -> tuple[str | None, str | None] | None:
    """(provider, bucket) if `value` is a placeholder, else None. Anything else, including
    something that merely starts with "oauth", is a real key and passes untouched."""
    m = _PLACEHOLDER.fullmatch(value.strip())
    return (m["provider"], m["bucket"]) if m else None


def find(request: http.Request) -> Placeholder | None:
    for name in KEY_HEADERS:
        value = request.headers.get(name)
        if value is None:
            continue
        if name == "authorization":
            scheme, _, value = value.partition(" ")
            if scheme.lower() != "bearer":
                continue
        found = parse(value)
        if found:
            return Placeholder(*found, where=name)
    key = request.query.get("key")
    if key is not None and (found := parse(key)):
        return Placeholder(*found, where="key")
    return None
