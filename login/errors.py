"""Exceptions keyswap raises. Each message says what happened and what to do, never a secret."""

from __future__ import annotations

# How messages name keyswap's commands: the console command `keyswap` that set-up installs.
# `keyswap login ...` is `keyswap login ...` and `keyswap proxy` is `keyswap proxy`.
CLI = "keyswap"


def command(*words: str) -> str:
    """A keyswap command line as messages show it: command("page") is `keyswap page`."""
    return " ".join((CLI, *words))


def login_command(provider: str, bucket: str, verb: str = "") -> str:
    """The command that logs in to provider/bucket again (`verb`: e.g. "import ")."""
    words = [verb.strip() or "login", provider] + ([] if bucket == "default" else [bucket])
    return command(*words)


class KeyswapError(Exception):
    """Base class: the message is safe to show to a user."""


class ConfigError(KeyswapError):
    """The config file is invalid. Names the file, the key and the reason."""

    def __init__(self, path: str, key: str, reason: str) -> None:
        self.path, self.key, self.reason = path, key, reason
        where = f"{path}: {key}" if key else path
        super().__init__(f"{where}: {reason}")


class LoginError(KeyswapError):
    """A login flow failed (denied, expired, wrong state, network)."""


class NeedsLogin(KeyswapError):
    """No usable credential: the user must run `keyswap login <provider> [bucket]`."""

    def __init__(self, provider: str, bucket: str, why: str, fix: str | None = None) -> None:
        self.provider, self.bucket, self.why = provider, bucket, why
        fix = fix or f"run `{login_command(provider, bucket)}`"
        super().__init__(f"{provider}/{bucket}: {why}; {fix}")


class RefreshFailed(KeyswapError):
    """Refreshing failed for a reason that may pass (network, 5xx); the stored login is kept."""


class ClientError(KeyswapError):
    """The client's request cannot be served as it is (answered with `status`)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


class StoreError(KeyswapError):
    """The token store cannot be used (unsafe permissions, no backend)."""


class BadEntry(StoreError):
    """One stored entry cannot be used; other entries are unaffected. `state` is what
    `login status` shows for it."""

    state = "corrupt"

    def __init__(self, name: str, message: str) -> None:
        self.name = name
        super().__init__(message)


class CorruptEntry(BadEntry):
    """One stored entry cannot be read."""

    def __init__(self, name: str, reason: str, fix: str | None = None) -> None:
        fix = fix or f"log in again or run `keyswap logout {name.replace(':', ' ')}`"
        super().__init__(name, f"stored login {name!r} is unreadable ({reason}); {fix}")


class UnsafeEntry(BadEntry):
    """One stored entry is refused because others could read or change it; `reason` says
    how to fix that."""

    state = "unsafe"

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(name, f"stored login {name!r} is refused: {reason}")
