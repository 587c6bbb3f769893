"""Request paths a token may follow: only those that every server reads the same way.

A route approves a path by its prefix, and the provider's servers (and the proxies and CDNs
in front of them) resolve the path again on their side. Dot segments, their percent-encoded
forms, encoded slashes, backslashes, `;` parameters and look-alike Unicode are resolved
differently by different servers, so `/v1/responses/%2e%2e/%2e%2e/v1/files` could be approved
here as a Responses call and served there as `/v1/files`. keyswap does not guess which reading
the far side uses: a path that any of them could read as another path is refused (no API
client builds one), and the path that was checked is delivered exactly as it came.
"""

from __future__ import annotations

import re
import string
import unicodedata
from typing import NewType
from urllib.parse import unquote_to_bytes

from ..errors import ClientError

# A path (without the query) that `checked_path` accepted.
CheckedPath = NewType("CheckedPath", str)

# RFC 3986 path characters (unreserved, sub-delims, ":", "@") and "%" escapes. Anything else
# must reach keyswap percent-encoded; so the outbound side has nothing left to re-encode.
_PATH_CHARS = frozenset(string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/%")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# A server behind a proxy that decoded once may decode again: look through this many layers.
_DECODINGS = 3


def checked_path(path: str) -> CheckedPath:
    """`path` if no server could read it as another path; ClientError(400) saying why not."""
    if not path.startswith("/"):
        raise _refused(path, "does not start with `/`")
    if not _PATH_CHARS.issuperset(path):
        raise _refused(path, "has a character that must be percent-encoded")
    for segment in path.split("/"):
        if problem := _segment_problem(segment):
            raise _refused(path, f"has {problem}")
    return CheckedPath(path)


def _refused(path: str, why: str) -> ClientError:
    shown = path if len(path) <= 200 else path[:200] + "..."
    return ClientError(400, f"the request path {shown!r} {why}; keyswap sends no token with it")


def _segment_problem(segment: str) -> str | None:
    if "%" not in segment:
        # Most segments: nothing to decode, and only one with a dot can be a dot segment.
        return _reading_problem(segment) if "." in segment else None
    if _BAD_ESCAPE.search(segment):
        return "a `%` not followed by two hex digits"
    text = segment
    for _ in range(_DECODINGS + 1):
        if problem := _reading_problem(text):
            return problem
        decoded = unquote_to_bytes(text)
        try:
            text, before = decoded.decode(), text
        except UnicodeDecodeError:
            # Overlong forms such as %c0%ae ("." to some lenient decoders) are not UTF-8.
            return "an escape that is not UTF-8"
        if text == before:
            return None
    return "escapes nested too deeply"


def _reading_problem(text: str) -> str | None:
    """Why one reading of a segment (as sent, or decoded) could be read as another path."""
    if not text.isascii():
        # Servers that fold Unicode read U+FF0E as "." and U+2025 as "..".
        text = unicodedata.normalize("NFKC", text)
    if "/" in text or "\\" in text:
        return "an encoded `/` or `\\`"
    if _CONTROL.search(text):
        return "an encoded control character"
    # `..;x` is `..` to servers that take `;` parameters off a segment, and trailing dots and
    # spaces are dropped by some file-system-backed servers.
    name = text.partition(";")[0]
    if "." in name and not name.strip(". "):
        return "a `..` or `.` segment"
    return None


def under(path: str, prefix: str) -> bool:
    """Whether `path` is `prefix` or below it, segment-wise (`/v1/models` does not cover
    `/v1/models-x`; a prefix ending in "/" covers everything after it)."""
    if prefix.endswith("/"):
        return path.startswith(prefix)
    return path == prefix or path.startswith(prefix + "/")
