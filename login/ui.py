"""How a login flow talks to a person. `Console` is the terminal (one clear line per step,
on stderr, pasted answers on stdin); the proxy's status page has its own `LoginUI`."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import threading
import webbrowser
from collections.abc import AsyncIterator
from typing import Protocol, TextIO

import httpx


class LoginUI(Protocol):
    def step(self, line: str) -> None:
        """A short progress or problem line."""

    async def device_code(self, user_code: str, verification_uri: str) -> None:
        """Show the one-time code and where to enter it."""

    def authorize_url(self, url: str, title: str, listening: bool) -> None:
        """Show (or open) the sign-in URL; `listening` says a loopback callback waits."""

    def pasted(self) -> AsyncIterator[str]:
        """Lines the person pastes (redirect URLs or codes), until they stop."""


class Console:
    def __init__(self, out: TextIO | None = None, *, no_browser: bool = False) -> None:
        self.out = out or sys.stderr
        self.no_browser = no_browser or not can_open_browser()
        self.interactive = sys.stdin.isatty()
        # `--no-browser` says the answer will be pasted, from a terminal or a pipe.
        self.can_paste = no_browser or self.interactive

    @property
    def stranded(self) -> bool:
        """No browser opens here and nothing can be pasted: a browser sign-in cannot finish."""
        return self.no_browser and not self.can_paste

    async def device_code(self, user_code: str, verification_uri: str) -> None:
        self.step(f"First copy your one-time code: {user_code}")
        if self.interactive and not self.no_browser:
            self.say(f"Press Enter to open {httpx.URL(verification_uri).host} in your browser...")
            await asyncio.to_thread(sys.stdin.readline)
            if not self.open(verification_uri):
                self.step(f"Could not open a browser; open {verification_uri} and enter the code")
        else:
            self.say(f"Open {verification_uri} in a browser and enter the code.")
        self.say("Waiting for authorization...")

    def authorize_url(self, url: str, title: str, listening: bool) -> None:
        if self.open(url):
            self.step(f"Opened {httpx.URL(url).host} in your browser. If it did not open, visit:")
        else:
            self.step(f"Open this URL in a browser to sign in to {title}:")
        self.say(f"  {url}")
        if listening:
            self.say("Waiting for the browser... (or paste the redirect URL here)")
        else:
            self.say("Then paste the code it shows here:")

    async def pasted(self) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | None] = asyncio.Queue()

        def read() -> None:
            for line in sys.stdin:
                loop.call_soon_threadsafe(queue.put_nowait, line)
            loop.call_soon_threadsafe(queue.put_nowait, None)

        threading.Thread(target=read, daemon=True).start()
        while (line := await queue.get()) is not None:
            yield line

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def step(self, line: str) -> None:
        self.say(f"! {line}")

    def done(self, line: str) -> None:
        self.say(f"✓ {line}")

    def open(self, url: str) -> bool:
        """Open `url` in a browser if we may; False means the user must open it."""
        if self.no_browser:
            return False
        try:
            return webbrowser.open(url)
        except webbrowser.Error:
            return False


def can_open_browser() -> bool:
    """False on SSH sessions, headless Linux, or when the user said so (KEYSWAP_NO_BROWSER)."""
    if os.environ.get("KEYSWAP_NO_BROWSER", "").strip() not in ("", "0"):
        return False
    graphical = sys.platform in ("darwin", "win32") or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )
    if os.environ.get("SSH_CONNECTION") and not os.environ.get("DISPLAY"):
        return False
    if not graphical and not os.environ.get("BROWSER"):
        return False
    try:
        webbrowser.get()
    except webbrowser.Error:
        return False
    return sys.platform != "linux" or bool(shutil.which("xdg-open") or os.environ.get("BROWSER"))
