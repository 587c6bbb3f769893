"""The `keyswap_config` option: keyswap's config file, validated and reloaded when it changes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mitmproxy import ctx, exceptions

from login import providers
from login.config import Config, default_config_path, load_config
from login.errors import KeyswapError

log = logging.getLogger(__name__)


class Settings:
    """The `keyswap_config` option: loads and validates the config file, reloads it when it
    changes, and keeps the last good one when a new one is invalid."""

    def __init__(self) -> None:
        self.config = Config()
        self.path: Path | None = None
        self._mtime: float | None = None
        self._running = False

    def running(self) -> None:
        self._running = True

    def load(self, loader: Any) -> None:
        loader.add_option(
            "keyswap_config",
            str,
            "",
            "keyswap's config file (TOML). Default: $KEYSWAP_CONFIG, else the user config "
            "dir's keyswap/config.toml.",
        )

    def configure(self, updated: set[str]) -> None:
        if "keyswap_config" not in updated:
            return
        explicit = ctx.options.keyswap_config or None
        try:
            self.config = load_config(explicit)
        except KeyswapError as exc:
            if self._running:  # a `set` at runtime: refuse it, keep the last good config
                raise exceptions.OptionsError(str(exc)) from None  # type: ignore[no-untyped-call]
            # At start-up an error log makes mitmdump exit, with one clear line.
            log.error("keyswap: %s", exc)
            return
        providers.use(self.config.defined)
        self.path = Path(explicit) if explicit else default_config_path()
        self._mtime = _mtime(self.path)

    def changed(self) -> bool:
        """Reload if the file changed; True when a new config took effect."""
        if self.path is None:
            return False
        mtime = _mtime(self.path)
        if mtime == self._mtime:
            return False
        self._mtime = mtime
        try:
            self.config = load_config(str(self.path) if mtime is not None else None)
        except KeyswapError as exc:
            log.error("keyswap: %s; keeping the last good config", exc)
            return False
        providers.use(self.config.defined)
        log.info("keyswap: reloaded %s", self.path)
        return True


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None
