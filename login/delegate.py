"""Hand an auth-code login to a running keyswap proxy, so the CLI and the status page share
one callback listener (no port clash). Without a proxy the CLI runs the flow itself."""

from __future__ import annotations

import asyncio
import os
from urllib.parse import urlsplit

import httpx

from .config import DEFAULT_PORT, is_loopback_host, load_config
from .errors import KeyswapError, LoginError
from .page import PAGE, manage_secret
from .providers import PROVIDERS
from .ui import Console

_POLL = 0.5


def _proxy() -> str:
    """The proxy this shell uses (after `eval "$(keyswap env)"`), else the default."""
    for var in ("HTTPS_PROXY", "https_proxy"):
        url = os.environ.get(var, "")
        if url and is_loopback_host(urlsplit(url).hostname or ""):
            return url
    try:
        port = load_config().proxy.port
    except KeyswapError:
        port = DEFAULT_PORT
    return f"http://127.0.0.1:{port}"


async def delegate(provider: str, bucket: str, ui: Console, timeout: float) -> str | None:
    """Run the login through the proxy. None: no keyswap proxy of this user is running (the
    caller logs in itself); else the account name ("" if unknown)."""
    try:
        secret = manage_secret()
    except KeyswapError:
        return None  # no proxy of this user has run, or its secret is unusable
    # Every call carries the secret: the API answers nothing without it.
    headers = {"X-Keyswap-Secret": secret}
    async with httpx.AsyncClient(
        proxy=_proxy(), trust_env=False, timeout=10, headers=headers
    ) as client:
        try:
            resp = await client.post(f"{PAGE}/api/auth/login/{provider}", params={"bucket": bucket})
        except httpx.TransportError:
            return None
        if resp.status_code in (401, 403, 404, 407) or "login" not in resp.text:
            return None  # not a keyswap proxy of this user
        login = resp.json()["login"]
        if login["state"] == "failed":
            raise LoginError(login.get("error") or "the login failed")
        ui.step(
            "The running keyswap proxy handles this sign-in (`keyswap page` opens its status page)"
        )
        if login.get("authorize_url"):
            ui.authorize_url(login["authorize_url"], PROVIDERS[provider].title, login["listening"])
        pasting = asyncio.ensure_future(_forward_pastes(client, provider, bucket, ui))
        try:
            return await asyncio.wait_for(_outcome(client, provider, login["id"]), timeout)
        except TimeoutError:
            await client.post(f"{PAGE}/api/auth/cancel/{provider}", params={"bucket": bucket})
            raise LoginError(f"no authorization arrived within {int(timeout)} s") from None
        finally:
            pasting.cancel()


async def _forward_pastes(
    client: httpx.AsyncClient, provider: str, bucket: str, ui: Console
) -> None:
    async for line in ui.pasted():
        if line.strip():
            await client.post(
                f"{PAGE}/api/auth/paste/{provider}",
                params={"bucket": bucket},
                json={"code": line.strip()},
            )


async def _outcome(client: httpx.AsyncClient, provider: str, login_id: str) -> str:
    while True:
        await asyncio.sleep(_POLL)
        status = (await client.get(f"{PAGE}/api/auth/status/{provider}")).json()
        login = next((x for x in status.get("logins", []) if x.get("id") == login_id), None)
        if login is None or login["state"] in ("waiting", "starting"):
            continue
        if login["state"] == "done":
            return str(login.get("account") or "")
        raise LoginError(login.get("error") or f"the login was {login['state']}")
