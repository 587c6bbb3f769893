"""The encrypted file store, for machines without a working keyring.

Each entry is `<data dir>/tokens/<provider>/<bucket>.tok`: AES-256-GCM with a
random key kept in `<data dir>/store.key`, the entry's name bound in as
associated data (so a file copied over another's name does not decrypt).
The key sits next to the tokens: this protects against a token file leaking on
its own (pasted, synced, grepped), not against a program running as you.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import CorruptEntry, StoreError, UnsafeEntry
from .base import Store
from .lock import file_lock
from .paths import check_private, data_dir, private_dir, read_private, write_private

_NONCE = 12
_SUFFIX = ".tok"


class FileStore(Store):
    kind = "file"

    def __init__(self, root: Path | None = None) -> None:
        self.root = private_dir(root or data_dir())
        self.tokens = private_dir(self.root / "tokens")
        self._aead = AESGCM(self._key())

    def _key(self) -> bytes:
        path = self.root / "store.key"
        with file_lock("store-key"):
            if not path.exists():
                write_private(path, AESGCM.generate_key(bit_length=256))
        key = read_private(path)
        if len(key) != 32:
            raise StoreError(f"{path} is damaged (wrong length); remove it and log in again")
        return key

    def _path(self, name: str) -> Path:
        provider, bucket = name.split(":", 1)
        return self.tokens / provider / f"{bucket}{_SUFFIX}"

    def _read(self, name: str) -> bytes | None:
        """One entry's plaintext. Whatever is wrong with its file is that entry's problem
        (BadEntry, with the fix), never the whole store's."""
        path = self._path(name)
        _refuse_directory(name, path)
        try:
            check_private(path.parent)
            blob = read_private(path)
        except FileNotFoundError:
            return None
        except StoreError as exc:  # others could read or change it: the message has the fix
            raise UnsafeEntry(name, str(exc)) from None
        except OSError as exc:
            raise CorruptEntry(name, f"{path}: {exc.strerror or type(exc).__name__}") from None
        try:
            return self._aead.decrypt(blob[:_NONCE], blob[_NONCE:], name.encode())
        except (InvalidTag, ValueError):
            raise CorruptEntry(name, f"{path} does not decrypt") from None

    def _write(self, name: str, data: bytes) -> None:
        path = self._path(name)
        private_dir(path.parent)
        nonce = os.urandom(_NONCE)
        write_private(path, nonce + self._aead.encrypt(nonce, data, name.encode()))

    def _remove(self, name: str) -> bool:
        path = self._path(name)
        _refuse_directory(name, path)  # not ours to delete: it may hold someone's files
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def names(self) -> list[str]:
        return sorted(
            f"{d.name}:{f.name.removesuffix(_SUFFIX)}"
            for d in self.tokens.iterdir()
            if d.is_dir()
            for f in d.iterdir()
            if f.name.endswith(_SUFFIX) and not f.name.startswith(".")
        )


def _refuse_directory(name: str, path: Path) -> None:
    """A directory where an entry's file belongs is that entry's problem, with its fix."""
    if path.is_dir():
        fix = f"move it away (`mv {path} {path}.bak`), then log in again"
        raise CorruptEntry(name, f"{path} is a directory", fix)
