"""Device authorization grant, RFC 8628."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from ..errors import LoginError
from ..redact import redact
from .http import body_of, error_code, error_text, send

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
_ACCEPT = {"Accept": "application/json"}


@dataclass(frozen=True)
class DeviceCode:
    device_code: str
    user_code: str
    verification_uri: str
    expires_in: float
    interval: float
    verification_uri_complete: str | None = None


async def request_code(
    client: httpx.AsyncClient, url: str, client_id: str, scope: str
) -> DeviceCode:
    req = client.build_request(
        "POST", url, data={"client_id": client_id, "scope": scope}, headers=_ACCEPT
    )
    resp = await send(client, req, "requesting a device code")
    data = body_of(resp)
    if resp.status_code != 200 or "device_code" not in data:
        raise LoginError(f"requesting a device code failed: {error_text(data) or resp.status_code}")
    return DeviceCode(
        device_code=str(data["device_code"]),
        user_code=str(data["user_code"]),
        verification_uri=str(data.get("verification_uri") or data.get("verification_url") or ""),
        verification_uri_complete=data.get("verification_uri_complete"),
        expires_in=float(data.get("expires_in") or 900),
        # RFC 8628 §3.5: absent interval means 5 seconds.
        interval=float(data.get("interval") or 5),
    )


async def poll_token(
    client: httpx.AsyncClient,
    url: str,
    client_id: str,
    code: DeviceCode,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> dict[str, Any]:
    """Poll until the user approves; honours `interval`, and `slow_down` adds 5 s for this and
    every later poll (RFC 8628 §3.5)."""
    interval = code.interval
    deadline = time.monotonic() + code.expires_in
    form = {"client_id": client_id, "device_code": code.device_code, "grant_type": DEVICE_GRANT}
    while True:
        await sleep(interval)
        req = client.build_request("POST", url, data=form, headers=_ACCEPT)
        resp = await send(client, req, "waiting for authorization")
        data = body_of(resp)
        err = error_code(data)
        if err is None and data.get("access_token"):
            return data
        if err == "authorization_pending":
            pass
        elif err == "slow_down":
            interval = max(interval + 5, float(data.get("interval") or 0))
        elif err == "expired_token":
            raise LoginError("the device code expired before it was approved; run the login again")
        elif err == "access_denied":
            raise LoginError("authorization was denied")
        else:
            # The answer may quote the device code, which is as good as the login until used.
            why = redact(error_text(data), (code.device_code,)) or resp.status_code
            raise LoginError(f"authorization failed: {why}")
        if time.monotonic() + interval > deadline:
            raise LoginError("the device code expired before it was approved; run the login again")
