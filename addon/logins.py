"""Logins that run inside the proxy: started from the status page, or by a request that
needs a provider nobody is logged in to (`enabled = true`). One flow per provider+bucket;
requests that need the same provider share it."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import webbrowser
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from login.errors import KeyswapError
from login.providers.base import Provider
from login.tokens import TokenService
from login.ui import can_open_browser

log = logging.getLogger(__name__)

LOGIN_TIMEOUT = 600.0  # how long an auth-code login waits for the browser or a paste

LoginState = Literal["starting", "waiting", "done", "failed", "cancelled"]
Key = tuple[str, str]


@dataclass
class LoginSession:
    """One login running inside the proxy, and what a person needs to see for it."""

    provider: Provider
    bucket: str
    # Started by a request (lazy login): say it on the proxy's console, open a browser.
    announce: bool = False
    id: str = field(default_factory=lambda: secrets.token_hex(8))
    started: float = field(default_factory=time.time)
    ended: float | None = None
    state: LoginState = "starting"
    user_code: str | None = None
    verification_uri: str | None = None
    authorize_url: str | None = None
    listening: bool = False
    account: str | None = None
    error: str | None = None
    steps: list[str] = field(default_factory=list)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    pastes: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None

    @property
    def active(self) -> bool:
        return self.state in ("starting", "waiting")

    @property
    def finished(self) -> asyncio.Task[None]:
        assert self.task is not None
        return self.task

    def public(self) -> dict[str, Any]:
        p = self.provider
        return {
            "id": self.id,
            "provider": p.name,
            "bucket": self.bucket,
            "flow": p.flow,
            "state": self.state,
            "started": self.started,
            "ended": self.ended,
            "user_code": self.user_code,
            "verification_uri": self.verification_uri,
            "authorize_url": self.authorize_url,
            "listening": self.listening,
            # A code can be pasted into any auth-code login (the redirect URL works too).
            "accepts_paste": p.flow == "auth_code",
            "account": self.account,
            "error": self.error,
            "steps": list(self.steps),
        }


class SessionUI:
    """The `LoginUI` of a login inside the proxy: it records what the person must see (the
    status page shows it; a lazy login also prints it once on the console) and takes pasted
    answers from the page."""

    def __init__(self, session: LoginSession) -> None:
        self.session = session
        self._opening: asyncio.Task[None] | None = None

    def step(self, line: str) -> None:
        self.session.steps = [*self.session.steps[-9:], line]

    async def device_code(self, user_code: str, verification_uri: str) -> None:
        s = self.session
        s.user_code, s.verification_uri, s.state = user_code, verification_uri, "waiting"
        if s.announce:
            log.warning(
                "keyswap: a request needs %s: open %s and enter the code %s "
                "(or run `keyswap page` for the status page)",
                s.provider.title,
                verification_uri,
                user_code,
            )
            await _open(verification_uri)
        s.ready.set()

    def authorize_url(self, url: str, title: str, listening: bool) -> None:
        s = self.session
        s.authorize_url, s.listening, s.state = url, listening, "waiting"
        if s.announce:
            log.warning(
                "keyswap: a request needs %s: sign in at %s "
                "(or run `keyswap page` for the status page)",
                title,
                url,
            )
            self._opening = asyncio.ensure_future(_open(url))
        s.ready.set()

    async def pasted(self) -> AsyncIterator[str]:
        while True:
            yield await self.session.pastes.get()


async def _open(url: str) -> None:
    if can_open_browser():
        await asyncio.to_thread(webbrowser.open, url)


class Logins:
    def __init__(self, tokens: TokenService, on_login: Callable[[str, str], None]) -> None:
        self.tokens = tokens
        self.sessions: dict[Key, LoginSession] = {}
        self._on_login = on_login

    def running(self, provider: str) -> LoginSession | None:
        return next((s for (p, _), s in self.sessions.items() if p == provider and s.active), None)

    async def start(
        self, provider: Provider, bucket: str, *, replace: bool, announce: bool = False
    ) -> LoginSession:
        """A new login for provider/bucket. `replace=True` stops one already running for that
        bucket (the page's "Log in" again); `replace=False` joins any running login of the
        provider (requests waiting for a lazy login share one flow)."""
        if not replace and (running := self.running(provider.name)):
            return running
        key = (provider.name, bucket)
        old = self.sessions.get(key)
        if old is not None and old.active:
            await self.cancel(old)  # frees its callback port before the new one binds it
        session = self.sessions[key] = LoginSession(provider, bucket, announce=announce)
        session.task = asyncio.get_running_loop().create_task(self._run(session))
        return session

    async def _run(self, session: LoginSession) -> None:
        p, bucket = session.provider, session.bucket
        try:
            cred = await self.tokens.login(
                p.name, bucket, SessionUI(session), timeout=LOGIN_TIMEOUT
            )
        except asyncio.CancelledError:
            if session.state != "cancelled":
                session.state, session.error = "cancelled", "the login was stopped"
            raise
        except KeyswapError as exc:
            session.state, session.error = "failed", str(exc)
            log.info("keyswap: login %s/%s failed: %s", p.name, bucket, exc)
        except Exception as exc:
            session.state, session.error = "failed", f"internal error ({type(exc).__name__})"
            log.exception("keyswap: login %s/%s", p.name, bucket)
        else:
            session.state, session.account = "done", cred.account
            log.info("keyswap: %s/%s logged in", p.name, bucket)
            self._on_login(p.name, bucket)
        finally:
            session.ended = time.time()
            session.ready.set()

    async def cancel(self, session: LoginSession) -> None:
        session.state, session.error = "cancelled", "the login was stopped"
        if session.task is not None and not session.task.done():
            session.task.cancel()
            await asyncio.wait([session.task], timeout=5)

    def forget(self, provider: str, bucket: str) -> None:
        """Drop a finished login from the list (after a logout)."""
        session = self.sessions.get((provider, bucket))
        if session is not None and not session.active:
            del self.sessions[provider, bucket]

    def stop(self) -> None:
        for session in self.sessions.values():
            if session.task is not None:
                session.task.cancel()
