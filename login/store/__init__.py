"""Token storage: the OS keyring when one works, else an encrypted file store.

`KEYSWAP_STORE=keyring|file` forces one.
"""

from __future__ import annotations

import os

from ..errors import StoreError
from .base import Store, entry_name
from .files import FileStore
from .keyrings import KeyringStore, probe
from .lock import async_file_lock, file_lock
from .redis_store import RedisStore, is_redis_url

__all__ = [
    "FileStore",
    "KeyringStore",
    "RedisStore",
    "Store",
    "async_file_lock",
    "entry_name",
    "file_lock",
    "open_store",
    "store_named",
]


def open_store(url: str | None = None) -> Store:
    """The store `KEYSWAP_STORE` names (keyring, file, or a redis:// URL), else the config's
    `[store] url` (`url`), else the keyring when one works, else the file store."""
    return store_named(os.environ.get("KEYSWAP_STORE", "").strip() or (url or ""))


def store_named(selector: str) -> Store:
    """The store `selector` names as KEYSWAP_STORE would ("" chooses)."""
    if is_redis_url(selector):
        return RedisStore(selector)
    forced = selector.lower()
    if forced == "file":
        return FileStore()
    if forced == "keyring":
        why = probe()
        if why:
            raise StoreError(f"KEYSWAP_STORE=keyring, but the keyring does not work: {why}")
        return KeyringStore()
    if forced:
        raise StoreError(
            f"KEYSWAP_STORE={forced!r} is not valid; use 'keyring', 'file' or a redis:// URL"
        )
    return KeyringStore() if probe() is None else FileStore()
