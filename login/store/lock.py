"""A lock per provider+bucket shared by every keyswap process of this user.

Refresh tokens that rotate are single-use: two processes refreshing the same
one at once would burn it. Whoever holds this lock re-reads the store before
refreshing, so the second process finds the first one's new tokens instead.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from ..errors import StoreError
from .paths import data_dir, private_dir

if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _lock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_LOCK, 1)

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX)

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _lock_path(name: str) -> Path:
    return private_dir(private_dir(data_dir()) / "locks") / f"{name.replace(':', '.')}.lock"


@contextmanager
def file_lock(name: str) -> Iterator[None]:
    fd = os.open(_lock_path(name), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        _lock(fd)
        try:
            yield
        finally:
            _unlock(fd)
    finally:
        os.close(fd)


@asynccontextmanager
async def async_file_lock(name: str) -> AsyncIterator[None]:
    """The same lock without blocking the event loop while another process holds it."""
    fd = os.open(_lock_path(name), os.O_RDWR | os.O_CREAT, 0o600)
    waiting = asyncio.ensure_future(asyncio.to_thread(_lock, fd))
    try:
        await asyncio.shield(waiting)
    except BaseException:
        # Cancelled while the thread still waits: release once it gets the lock.
        waiting.add_done_callback(lambda _: _release(fd))
        raise
    try:
        yield
    finally:
        _release(fd)


def _release(fd: int) -> None:
    try:
        _unlock(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- what changed in the store, for processes that keep tokens in memory ------------------


def _changes_path() -> Path:
    return private_dir(private_dir(data_dir()) / "locks") / "changes"


def mark_changed() -> None:
    """Say that an entry was saved or deleted: a new random value, so that a reader sees a
    change however coarse the file system's clock is. Best effort: the entry itself is what
    matters, and a reader that misses this sees it at the token's next refresh."""
    try:
        fd = os.open(_changes_path(), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, os.urandom(8).hex().encode())
        finally:
            os.close(fd)
    except (OSError, StoreError):
        pass


def changes() -> bytes:
    """The last `mark_changed` value (empty when there was none or it cannot be read)."""
    try:
        with open(_changes_path(), "rb") as f:
            return f.read(64)
    except (OSError, StoreError):
        return b""
