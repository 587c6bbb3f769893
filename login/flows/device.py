"""Device authorization: show a code, poll until the person approves it elsewhere.

`poll` is the loop every device flow shares (the wait between polls, `slow_down`, the overall
limit); a flow gives it the request to send and a judge of each answer. `request_code` and
`poll_token` are the RFC 8628 flow built on it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from ..errors import LoginError
from ..redact import redact
from .http import body_of, error_code, error_text, send

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
EXPIRED = "the device code expired before it was approved; run the login again"
_ACCEPT = {"Accept": "application/json"}

# What a judge makes of one poll's answer: the answer itself when it is the result, "pending"
# to poll again, "slow_down" to poll again less often (RFC 8628 §3.5). A judge raises
# LoginError for an answer that ends the login.
Verdict = dict[str, Any] | Literal["pending", "slow_down"]
Judge = Callable[[httpx.Response, dict[str, Any]], Verdict]


def interval_of(value: object, default: float = 5.0) -> float:
    """A poll interval as a server sent it: a number or a numeric string ("5"); `default`
    for anything else, and for zero or less (which would poll without pause)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return default
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return default
    return number if math.isfinite(number) and number > 0 else default


async def poll(
    client: httpx.AsyncClient,
    request: Callable[[], httpx.Request],
    judge: Judge,
    *,
    interval: float,
    limit: float,
    expired: str = EXPIRED,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> dict[str, Any]:
    """Send `request()` every `interval` seconds until `judge` accepts an answer; LoginError
    with `expired` once the next poll would come after `limit` seconds. `slow_down` adds 5 s
    (or takes the answer's longer `interval`) for this and every later poll."""
    deadline = time.monotonic() + limit
    while True:
        await sleep(interval)
        resp = await send(client, request(), "waiting for authorization")
        data = body_of(resp)
        verdict = judge(resp, data)
        if isinstance(verdict, dict):
            return verdict
        if verdict == "slow_down":
            interval = max(interval + 5, interval_of(data.get("interval"), 0.0))
        if time.monotonic() + interval > deadline:
            raise LoginError(expired)


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
        interval=interval_of(data.get("interval")),
    )


async def poll_token(
    client: httpx.AsyncClient,
    url: str,
    client_id: str,
    code: DeviceCode,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> dict[str, Any]:
    """Poll the token endpoint until the user approves (RFC 8628 §3.4, §3.5)."""
    form = {"client_id": client_id, "device_code": code.device_code, "grant_type": DEVICE_GRANT}

    def judge(resp: httpx.Response, data: dict[str, Any]) -> Verdict:
        err = error_code(data)
        if err is None and data.get("access_token"):
            return data
        if err in ("authorization_pending", "slow_down"):
            return "pending" if err == "authorization_pending" else "slow_down"
        if err == "expired_token":
            raise LoginError(EXPIRED)
        if err == "access_denied":
            raise LoginError("authorization was denied")
        # The answer may quote the device code, which is as good as the login until used.
        why = redact(error_text(data), (code.device_code,)) or resp.status_code
        raise LoginError(f"authorization failed: {why}")

    return await poll(
        client,
        lambda: client.build_request("POST", url, data=form, headers=_ACCEPT),
        judge,
        interval=code.interval,
        limit=code.expires_in,
        sleep=sleep,
    )
