"""Reading OAuth endpoint answers: JSON or form bodies, error codes, messages without secrets."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import httpx

from ..errors import LoginError


def body_of(response: httpx.Response) -> dict[str, Any]:
    """The answer as a dict, whether the server sent JSON or a form body (GitHub without
    `Accept: application/json`)."""
    text = response.text
    try:
        data = response.json()
    except ValueError:
        data = dict(parse_qsl(text)) if "=" in text else {}
    return data if isinstance(data, dict) else {}


def error_code(data: dict[str, Any]) -> str | None:
    """`error` as RFC 6749 puts it, or the code inside an `{"error": {...}}` object."""
    err = data.get("error")
    if isinstance(err, str):
        return err
    if isinstance(err, dict):
        code = err.get("code") or err.get("type") or err.get("status")
        return str(code) if code else None
    return None


def error_text(data: dict[str, Any]) -> str:
    err = data.get("error")
    if isinstance(err, dict):
        msg = err.get("message") or ""
        return f"{error_code(data)}: {msg}".strip(": ")
    desc = data.get("error_description") or ""
    return f"{err}: {desc}".strip(": ") if err else str(data.get("message") or "")


async def send(client: httpx.AsyncClient, request: httpx.Request, what: str) -> httpx.Response:
    """Send, turning network failures into one clear line."""
    try:
        return await client.send(request)
    except httpx.TimeoutException:
        raise LoginError(f"{what}: {request.url.host} did not answer in time") from None
    except httpx.TransportError as exc:
        raise LoginError(
            f"{what}: cannot reach {request.url.host} ({type(exc).__name__})"
        ) from None
