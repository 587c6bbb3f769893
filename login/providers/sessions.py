"""Which conversation a request belongs to, read cheaply from what clients already send.

A request body can be 100+ KB (a long Claude Code session), and this runs on every request
before a bucket is chosen, so nothing here parses a whole body: a field is found with
`bytes.rfind` from the end (clients put their session fields after the conversation) and
only its own small value is decoded. What is returned is namespaced by its source
("session:<id>", "prompt_cache_key:<key>", ...), so that ids from different fields never
name the same conversation by accident.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator

# The longest value read: a session id or cache key is short; anything longer is not one.
MAX_VALUE = 1024
# How many occurrences of a field name to look at, from the end, before giving up (the name
# may also appear as a key inside the conversation, e.g. in a tool's input).
_TRIES = 4
# `: "value"` right after a field name: a JSON string of at most MAX_VALUE bytes.
_STRING_VALUE = re.compile(rb'\s*:\s*"((?:[^"\\]|\\.){1,%d})"' % MAX_VALUE)
# A session id in Claude Code's older `metadata.user_id` form (a uuid; gateways' tests also
# show shorter ones).
_CLAUDE_SESSION = re.compile(r"[0-9A-Za-z-]{1,128}")
# An id as keyswap keeps it: printable, no spaces, bounded.
_ID = re.compile(r"[\x21-\x7e]{1,256}")


def strings(body: bytes, name: str) -> Iterator[str]:
    """The string values of `"name": "..."` in a JSON body, last first (at most a few)."""
    needle = b'"' + name.encode() + b'"'
    end = len(body)
    for _ in range(_TRIES):
        at = body.rfind(needle, 0, end)
        if at < 0:
            return
        end = at
        found = _STRING_VALUE.match(body, at + len(needle))
        if found is not None:
            text = _text(found[1])
            if text is not None:
                yield text


def body_id(body: bytes, name: str) -> str | None:
    """The last string value of the field `name` that is a usable id, or None."""
    return next((s for s in strings(body, name) if _ID.fullmatch(s)), None)


def header_id(headers: Iterable[tuple[str, str]], *names: str) -> str | None:
    """The value of the first of `names` (lower-case) the request carries, if it is an id."""
    found: dict[str, str] = {}
    for key, value in headers:
        lower = key.lower()
        if lower in names and lower not in found:
            found[lower] = value.strip()
    for name in names:
        said = found.get(name)
        if said and _ID.fullmatch(said):
            return said
    return None


def claude_session(body: bytes) -> str | None:
    """The session id Claude Code puts in `metadata.user_id` (docs/providers.md §5.3): the
    older `user_<hex>_account_<uuid>_session_<uuid>` or the newer JSON text whose
    `session_id` names it. None when there is none (e.g. a plain user id)."""
    for value in strings(body, "user_id"):
        session = claude_session_of(value)
        if session is not None:
            return session
    return None


def claude_session_of(user_id: str) -> str | None:
    """The session id within one `metadata.user_id` value (either form), or None."""
    if user_id.startswith("{"):
        try:
            data = json.loads(user_id)
        except (ValueError, RecursionError):
            return None
        session = data.get("session_id") if isinstance(data, dict) else None
        return session if isinstance(session, str) and _ID.fullmatch(session) else None
    # user_<sha256 hex>_account_<account uuid or empty>_session_<session uuid>
    if not user_id.startswith("user_") or "_account_" not in user_id:
        return None
    head, sep, session = user_id.rpartition("_session_")
    if not sep or "_account_" not in head or not _CLAUDE_SESSION.fullmatch(session):
        return None
    return session


def _text(raw: bytes) -> str | None:
    """A JSON string's content (without its quotes) as text; None if it is not valid."""
    try:
        if b"\\" not in raw:
            return raw.decode()
        text = json.loads(b'"' + raw + b'"')
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return text if isinstance(text, str) else None
