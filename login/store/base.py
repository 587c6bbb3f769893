"""The interface both token stores implement."""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractAsyncContextManager

from pydantic import ValidationError

from ..credential import Credential
from ..errors import CorruptEntry
from . import lock


def entry_name(provider: str, bucket: str) -> str:
    return f"{provider}:{bucket}"


class Store(ABC):
    """Credentials by provider and bucket. Methods block (keyring talks D-Bus, files fsync);
    async callers run them in a thread."""

    kind: str

    @abstractmethod
    def _read(self, name: str) -> bytes | None: ...

    @abstractmethod
    def _write(self, name: str, data: bytes) -> None: ...

    @abstractmethod
    def _remove(self, name: str) -> bool: ...

    @abstractmethod
    def names(self) -> list[str]:
        """Every stored entry as "provider:bucket", sorted."""

    def load(self, provider: str, bucket: str) -> Credential | None:
        name = entry_name(provider, bucket)
        data = self._read(name)
        if data is None:
            return None
        try:
            cred = Credential.from_json(data)
        except (ValidationError, ValueError):
            raise CorruptEntry(name, "not a keyswap credential") from None
        if (cred.provider, cred.bucket) != (provider, bucket):
            raise CorruptEntry(name, f"it holds {cred.name}")
        return cred

    def save(self, cred: Credential) -> None:
        self._write(cred.name, cred.to_json().encode())
        self._mark()

    def delete(self, provider: str, bucket: str) -> bool:
        removed = self._remove(entry_name(provider, bucket))
        self._mark()
        return removed

    def _mark(self) -> None:
        """Tell the other processes using this store that an entry changed (`changes`)."""
        lock.mark_changed()

    def changes(self) -> bytes:
        """A value that moves whenever any process saves or deletes an entry."""
        return lock.changes()

    def lock(self, name: str) -> AbstractAsyncContextManager[None]:
        """The lock every process using this store takes to refresh or replace `name`."""
        return lock.async_file_lock(name)

    def buckets(self, provider: str) -> list[str]:
        prefix = f"{provider}:"
        return [n.removeprefix(prefix) for n in self.names() if n.startswith(prefix)]
