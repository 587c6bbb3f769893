"""Where another tool keeps a login keyswap can take over (`keyswap import`).

A provider names its sources (`Provider.import_sources`); each is the tool's name, the files
it writes (in the order the tool reads them), optionally a macOS keychain item holding the same
JSON, and a small parser from that JSON to what keyswap needs. Reading here is careful: a
missing, unreadable, oversized or damaged file becomes one line that names the file and what
is wrong, never a traceback, and never any of the file's values.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import KeyswapError

# Login files are a few KB; anything much larger is not one.
MAX_FILE = 1024 * 1024
# Hex digits of the SHA-256 fingerprint kept of an imported refresh token: enough to tell
# two tokens apart, too few to say anything about the token.
FINGERPRINT = 12

# What keyswap keeps in an imported credential's `extra` (none of it secret).
IMPORTED_FROM = "imported_from"  # the file (or keychain item) it came from
IMPORTED_BY = "imported_tool"  # the tool that wrote it
IMPORTED_FP = "imported_fp"  # fingerprint of the refresh token the source held then


class Unusable(Exception):
    """The source's JSON is not a login keyswap can use; the message says why, in a few words
    and without any of its values."""


@dataclass(frozen=True)
class Found:
    """One login read from a source, before keyswap checks it with the provider."""

    refresh: str
    access: str | None = None
    expires_at: float | None = None  # unix seconds
    account: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    # A word or two about the login worth showing (plan, subscription), never a secret.
    note: str | None = None


@dataclass(frozen=True)
class Source:
    """Another tool's login store for one provider.

    `files` are the candidate paths in the order the tool itself looks; every one that exists
    is read (`parse` gets each file's JSON and returns the logins in it; a file with several
    accounts returns several). `keychain` is a macOS generic-password service holding the same
    JSON, read only on macOS and only when no file exists. `login_how` says how the tool
    logs in, for the message when nothing is found."""

    tool: str
    login_how: str
    files: tuple[Path, ...]
    parse: Callable[[Any], list[Found]]
    keychain: str | None = None
    # The account's name when the tool keeps it beside the login (not in it); None if unknown.
    account: Callable[[], str | None] | None = None
    # Which logins in the files keyswap can use, when not all are (for the message when none is).
    wanted: str | None = None


@dataclass(frozen=True)
class Read:
    """What `read` found: each login with where it came from (a path or keychain item)."""

    source: Source
    where: str  # every place read, for messages
    logins: list[tuple[str, Found]]


def fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:FINGERPRINT]


def keychain_label(service: str) -> str:
    return f'the macOS keychain item "{service}"'


def read(source: Source, override: Path | None = None) -> Read | None:
    """The logins in `source` (or in the file `override`, read with the source's parser);
    None when no file (or keychain item) exists. KeyswapError, in one line naming the file,
    when one exists but cannot be used. The same login in two files is listed once."""
    files = (override,) if override is not None else source.files
    found: list[tuple[str, Found]] = []
    where: list[str] = []
    for path in files:
        data = _load(path)
        if data is _MISSING:
            continue
        found += [(str(path), f) for f in _parsed(source, data, str(path))]
        where.append(str(path))
    if not where and override is None and source.keychain and sys.platform == "darwin":
        text = _keychain(source.keychain)
        if text is not None:
            label = keychain_label(source.keychain)
            found += [(label, f) for f in _parsed(source, _json(text, label), label)]
            where.append(label)
    if not where:
        return None
    seen: set[tuple[str | None, str]] = set()
    unique = []
    for place, login in found:
        if (login.account, login.refresh) not in seen:
            seen.add((login.account, login.refresh))
            unique.append((place, login))
    return Read(source, " and ".join(where), unique)


def reread(source: Source, where: str) -> list[Found] | None:
    """The logins at `where` now (a path, or the keychain label `read` gave); None when it
    is gone or cannot be read (no error: this only adds to another message)."""
    try:
        if source.keychain and where == keychain_label(source.keychain):
            text = _keychain(source.keychain) if sys.platform == "darwin" else None
            return None if text is None else source.parse(_json(text, where))
        data = _load(Path(where))
        return None if data is _MISSING else source.parse(data)
    except (KeyswapError, Unusable):
        return None


def taken_back(extra: dict[str, str], account: str | None, sources: Sequence[Source]) -> str | None:
    """For an imported login (its `extra` says from where): the place it came from, when that
    now holds a different refresh token than the one imported, so its tool has refreshed (or
    logged in) since; None when it is unchanged, gone, unreadable, or the login not imported."""
    tool, where, mark = extra.get(IMPORTED_BY), extra.get(IMPORTED_FROM), extra.get(IMPORTED_FP)
    source = next((s for s in sources if s.tool == tool), None)
    if source is None or not where or not mark:
        return None
    now = reread(source, where)
    if not now:
        return None
    same_account = [f for f in now if account is None or f.account in (None, account)]
    if any(fingerprint(f.refresh) == mark for f in same_account or now):
        return None
    return where


def describe(paths: Sequence[Path], keychain: str | None) -> str:
    """The places a source is looked for, for a message."""
    places = [str(p) for p in paths]
    if keychain and sys.platform == "darwin":
        places.append(keychain_label(keychain))
    return " or ".join(places)


_MISSING: Any = object()


def _load(path: Path) -> Any:
    """The file's JSON; _MISSING when there is no such file."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE + 1)
    except FileNotFoundError:
        return _MISSING
    except PermissionError:
        raise KeyswapError(f"cannot read {path}: permission denied") from None
    except IsADirectoryError:
        raise KeyswapError(f"cannot read {path}: it is a directory, not a login file") from None
    except OSError as exc:
        raise KeyswapError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    if len(raw) > MAX_FILE:
        raise KeyswapError(f"{path} is larger than {MAX_FILE // 1024} KB: not a login file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise KeyswapError(f"{path} is damaged: not UTF-8 text") from None
    return _json(text, str(path))


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        # The position only: the message must not quote the file.
        raise KeyswapError(
            f"{where} is damaged: not valid JSON (line {exc.lineno}, column {exc.colno})"
        ) from None
    except RecursionError:
        raise KeyswapError(f"{where} is damaged: nested too deeply") from None


def _parsed(source: Source, data: Any, where: str) -> list[Found]:
    try:
        return source.parse(data)
    except Unusable as exc:
        raise KeyswapError(f"{where} is not a {source.tool} login keyswap can use: {exc}") from None


def _keychain(service: str) -> str | None:
    """The password of a macOS generic-password item (`security find-generic-password -s
    SERVICE -w`); None when there is no such item."""
    try:
        done = subprocess.run(
            ["security", "find-generic-password", "-s", service, "-w"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KeyswapError(f"cannot read {keychain_label(service)}: {type(exc).__name__}") from None
    if done.returncode == 44:  # errSecItemNotFound
        return None
    if done.returncode != 0:
        # stderr is the tool's own text about the item, never its password.
        why = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        raise KeyswapError(f"cannot read {keychain_label(service)}: {why[0]}")
    return done.stdout.strip()


def side_file(path: Path, limit: int = 16 * MAX_FILE) -> Any:
    """The JSON of a file read only for details (an account's name): None whenever it cannot
    be read, since the login itself does not depend on it."""
    try:
        with path.open("rb") as f:
            raw = f.read(limit + 1)
        return None if len(raw) > limit else json.loads(raw)
    except (OSError, ValueError, RecursionError):
        return None


# -- small helpers for parsers ---------------------------------------------------------


def obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Unusable(f"{what} is not a JSON object")
    return value


def text(data: dict[str, Any], key: str, what: str | None = None) -> str:
    """A non-empty string field; Unusable naming it otherwise."""
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise Unusable(f"{what or key} is missing")
    return value.strip()


def optional_text(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value.strip() if isinstance(value, str) and value.strip() else None


def millis(value: Any) -> float | None:
    """An expiry in milliseconds since the epoch (as Node tools write it) in seconds."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) / 1000.0
