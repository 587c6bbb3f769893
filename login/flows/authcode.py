"""Authorization code grant with PKCE (RFC 7636, S256).

The code arrives on a loopback callback listener at the provider's registered
redirect URI, or is pasted by the user (the full redirect URL, `code#state`,
or the bare code) — whichever comes first.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from ..config import is_loopback_host
from ..errors import LoginError
from ..ui import LoginUI


@dataclass(frozen=True)
class Pkce:
    verifier: str
    challenge: str

    @classmethod
    def new(cls) -> Pkce:
        verifier = secrets.token_urlsafe(64)  # 86 chars, inside RFC 7636's 43..128
        digest = hashlib.sha256(verifier.encode("ascii")).digest()
        return cls(verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii"))


def new_state() -> str:
    return secrets.token_urlsafe(32)


_CODE = re.compile(r"[A-Za-z0-9._~+/=-]{6,}")


@dataclass(frozen=True)
class Callback:
    code: str | None
    state: str | None
    error: str | None = None


def parse_pasted(text: str) -> Callback | None:
    """A redirect URL (`...?code=..&state=..`), `code#state`, or a bare code."""
    text = text.strip()
    if not text:
        return None
    if "://" in text or text.startswith("?"):
        query = parse_qs(urlsplit(text).query)
        fragment = parse_qs(urlsplit(text).fragment)
        fields = {k: v[0] for k, v in (fragment | query).items() if v}
        if "code" not in fields and "error" not in fields:
            return None
        return Callback(fields.get("code"), fields.get("state"), fields.get("error"))
    code, _, state = text.partition("#")
    if not _CODE.fullmatch(code):
        return None
    return Callback(code, state or None)


class CannotListen(LoginError):
    """The loopback callback cannot be listened on. `reason` says why in a few words (the
    port is taken, ...); the message adds what to do."""

    def __init__(self, reason: str, busy: bool) -> None:
        self.reason = reason
        ask = "is another login running? Close it, or run" if busy else "run"
        super().__init__(f"{reason}: {ask} with --no-browser and paste the redirect URL or code")


class _CallbackHandler(RequestHandler):
    def initialize(self, listener: CallbackListener) -> None:
        self.listener = listener

    def get(self) -> None:
        args = {k: self.get_query_argument(k, None) for k in ("code", "state", "error")}
        result = Callback(args["code"], args["state"], args["error"])
        accepted, message = self.listener.offer(result)
        self.set_status(200 if accepted else 400)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(
            "<!doctype html><meta charset=utf-8><title>keyswap</title>"
            f"<p style='font:16px system-ui;margin:3em'>{message}</p>"
        )


class CallbackListener:
    """Listens on the loopback redirect URI. Answers only its own path; a callback whose
    `state` is wrong is refused and the listener keeps waiting for the real one."""

    def __init__(self, redirect_uri: str, state: str) -> None:
        self.redirect_uri = redirect_uri
        self.state = state
        self.result: asyncio.Future[Callback] = asyncio.get_running_loop().create_future()
        self._server: HTTPServer | None = None

    @classmethod
    def bind(
        cls, redirect_uri: str, state: str, fallback_ports: tuple[int, ...] = ()
    ) -> CallbackListener:
        parts = urlsplit(redirect_uri)
        host = parts.hostname or "127.0.0.1"
        address = "127.0.0.1" if host == "localhost" else host
        ports = [parts.port if parts.port is not None else 80, *fallback_ports]
        last: OSError | None = None
        for port in ports:
            try:
                sockets = bind_sockets(port, address)
            except OSError as exc:
                if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                    raise CannotListen(
                        f"cannot listen on {address}:{port} ({exc.strerror})", busy=False
                    ) from None
                last = exc
                continue
            bound = sockets[0].getsockname()[1]
            netloc = f"{host}:{bound}" if ":" not in host else f"[{host}]:{bound}"
            uri = urlunsplit((parts.scheme, netloc, parts.path or "/", "", ""))
            listener = cls(uri, state)
            app = Application([(parts.path or "/", _CallbackHandler, {"listener": listener})])
            listener._server = HTTPServer(app)
            listener._server.add_sockets(sockets)
            return listener
        tried = ", ".join(str(p) for p in ports)
        raise CannotListen(
            f"port {tried} on {address} is in use ({last.strerror if last else 'busy'})",
            busy=True,
        )

    def offer(self, cb: Callback) -> tuple[bool, str]:
        if self.result.done():
            return False, "This login has already finished. You can close this tab."
        if cb.state != self.state:
            return False, "This sign-in link is stale or forged (state mismatch) and was ignored."
        self.result.set_result(cb)
        if cb.error:
            return True, "Sign-in was not completed. You can close this tab."
        return True, "Signed in to keyswap. You can close this tab and return to the terminal."

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


async def _pasted(state: str, ui: LoginUI) -> Callback:
    """Wait for a usable pasted answer; a wrong one is reported and ignored."""
    async for line in ui.pasted():
        cb = parse_pasted(line)
        if cb is None:
            if line.strip():
                ui.step("That is not a code or redirect URL; paste it again")
            continue
        if cb.state is not None and cb.state != state:
            ui.step("That code belongs to another login (state mismatch); paste the latest one")
            continue
        return cb
    await asyncio.Event().wait()  # nothing more will be pasted: only the callback can finish
    raise AssertionError("unreachable")


async def wait_for_code(
    listener: CallbackListener | None, state: str, ui: LoginUI, timeout: float
) -> str:
    """The authorization code from the callback or from stdin, whichever comes first."""
    waiters: list[asyncio.Future[Callback]] = [asyncio.ensure_future(_pasted(state, ui))]
    if listener is not None:
        waiters.append(listener.result)
    try:
        done, _ = await asyncio.wait(waiters, timeout=timeout, return_when="FIRST_COMPLETED")
    finally:
        for w in waiters:
            if not w.done():
                w.cancel()
        if listener is not None:
            listener.close()
    if not done:
        raise LoginError(f"no authorization arrived within {int(timeout)} s; run the login again")
    cb = done.pop().result()
    if cb.error:
        if cb.error == "access_denied":
            raise LoginError("authorization was denied")
        raise LoginError(f"authorization failed: {cb.error}")
    if not cb.code:
        raise LoginError("the callback carried no authorization code")
    return cb.code


def authorize_url(base: str, params: dict[str, Any]) -> str:
    from urllib.parse import urlencode

    sep = "&" if "?" in base else "?"
    return f"{base}{sep}{urlencode(params)}"


def listens(redirect_uri: str) -> bool:
    parts = urlsplit(redirect_uri)
    return parts.scheme == "http" and is_loopback_host(parts.hostname or "")
