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

__all__ = [
    "FileStore",
    "KeyringStore",
    "Store",
    "async_file_lock",
    "entry_name",
    "file_lock",
    "open_store",
]


def open_store() -> Store:
    forced = os.environ.get("KEYSWAP_STORE", "").strip().lower()
    if forced == "file":
        return FileStore()
    if forced == "keyring":
        why = probe()
        if why:
            raise StoreError(f"KEYSWAP_STORE=keyring, but the keyring does not work: {why}")
        return KeyringStore()
    if forced:
        raise StoreError(f"KEYSWAP_STORE={forced!r} is not valid; use 'keyring' or 'file'")
    return KeyringStore() if probe() is None else FileStore()
