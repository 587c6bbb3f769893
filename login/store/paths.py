"""Where keyswap keeps its files, created private (0700 dirs, 0600 files)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import platformdirs

from ..errors import StoreError

# The status page's per-install secret (see addon/manage.py), next to the tokens.
MANAGE_SECRET = "manage.secret"


def data_dir() -> Path:
    return Path(platformdirs.user_data_dir("keyswap", appauthor=False))


def private_dir(path: Path) -> Path:
    """Create `path` (0700) if needed and refuse it if others can read or write it."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_private(path)
    return path


def check_private(path: Path) -> None:
    if os.name != "posix":
        return
    st = path.stat()
    if st.st_mode & 0o077:
        fix = "chmod 700" if stat.S_ISDIR(st.st_mode) else "chmod 600"
        raise StoreError(
            f"{path} is readable or writable by other users (mode {stat.S_IMODE(st.st_mode):o}); "
            f"refusing to use it. Fix: {fix} {path}"
        )
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise StoreError(f"{path} belongs to another user; refusing to use it")


def write_private(path: Path, data: bytes) -> None:
    """Atomically replace `path` with `data` (mode 0600): a crash leaves the old file or the new
    one, never a torn one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if os.name == "posix":
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def read_private(path: Path) -> bytes:
    check_private(path)
    return path.read_bytes()
