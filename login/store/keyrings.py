"""The OS keyring store (macOS Keychain, Windows Credential Locker, Secret Service).

One entry per provider+bucket under service `keyswap`, user "provider:bucket".
Keyrings cannot list their entries, so an index entry (user `_index`) keeps the
names; it is updated under a cross-process lock.
"""

from __future__ import annotations

import json
import secrets

import keyring
import keyring.errors

from ..errors import StoreError
from .base import Store
from .lock import file_lock

SERVICE = "keyswap"
_INDEX = "_index"


def probe() -> str | None:
    """None if the keyring really stores and returns a secret, else why not."""
    backend = keyring.get_keyring()
    if type(backend).__module__.startswith(("keyring.backends.fail", "keyrings.alt")):
        return f"no secure keyring backend ({type(backend).__name__})"
    user, value = f"_probe-{secrets.token_hex(4)}", secrets.token_hex(8)
    try:
        keyring.set_password(SERVICE, user, value)
        try:
            ok = keyring.get_password(SERVICE, user) == value
        finally:
            keyring.delete_password(SERVICE, user)
    except Exception as exc:  # any backend failure means "not usable", with its reason
        return f"{type(backend).__name__}: {type(exc).__name__}"
    return None if ok else f"{type(backend).__name__} did not return what was written"


class KeyringStore(Store):
    kind = "keyring"

    def _read(self, name: str) -> bytes | None:
        value = self._get(name)
        return value.encode() if value is not None else None

    def _write(self, name: str, data: bytes) -> None:
        self._set(name, data.decode())
        self._update_index(add=name)

    def _remove(self, name: str) -> bool:
        try:
            keyring.delete_password(SERVICE, name)
            existed = True
        except keyring.errors.PasswordDeleteError:
            existed = False
        except keyring.errors.KeyringError as exc:
            raise StoreError(f"keyring: cannot delete {name}: {type(exc).__name__}") from None
        self._update_index(remove=name)
        return existed

    def names(self) -> list[str]:
        return sorted(self._index())

    def _index(self) -> set[str]:
        raw = self._get(_INDEX)
        try:
            names = json.loads(raw) if raw else []
        except ValueError:
            names = []  # a damaged index loses only the listing, never a token
        return {n for n in names if isinstance(n, str)}

    def _update_index(self, add: str | None = None, remove: str | None = None) -> None:
        with file_lock("index"):
            names = self._index()
            names.add(add) if add else names.discard(remove or "")
            self._set(_INDEX, json.dumps(sorted(names)))

    @staticmethod
    def _get(user: str) -> str | None:
        try:
            return keyring.get_password(SERVICE, user)
        except keyring.errors.KeyringError as exc:
            raise StoreError(f"keyring: cannot read {user}: {type(exc).__name__}") from None

    @staticmethod
    def _set(user: str, value: str) -> None:
        try:
            keyring.set_password(SERVICE, user, value)
        except keyring.errors.KeyringError as exc:
            raise StoreError(f"keyring: cannot write {user}: {type(exc).__name__}") from None
