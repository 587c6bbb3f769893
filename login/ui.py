"""What the login CLI says to a person: one clear line per step, on stderr."""

from __future__ import annotations

import os
import shutil
import sys
import webbrowser
from typing import TextIO


class Console:
    def __init__(self, out: TextIO | None = None, *, no_browser: bool = False) -> None:
        self.out = out or sys.stderr
        self.no_browser = no_browser or not can_open_browser()
        self.interactive = sys.stdin.isatty()

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
