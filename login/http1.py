"""HTTP/1.1 message heads, read strictly: shared by keyswap's hand-written HTTP/1.1 (the
relay's client `addon.outbound`, its server `addon.relay`, and the doctor).

h11 would do this as well, but costs 0.06-0.13 ms more CPU per request than these parsers
(`python -m bench.micro`, bench/RESULTS.md), up to a quarter of what keyswap adds to a request.
So the parsers stay, and this is where they are strict: wherever two readers could disagree
on where a message ends or which fields it has (request smuggling, response splitting), the
message is refused instead of guessed at. RFC 9112 §2-§7, RFC 9110 §5 and §8.6.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# RFC 9110 §5.1: a field name is a token; §5.5: CR, LF and NUL never belong in a value.
# One line each, so a name with a space before its colon, an empty name, and a line folded
# onto the one before (obs-fold, RFC 9112 §5.2: begins with a space) all fail to match.
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_FIELD_LINES = re.compile(rb"(?:" + _TOKEN + rb":[^\r\n\x00]*\r\n)*")
_NAME = re.compile(_TOKEN.decode())
_VALUE = re.compile(r"[^\r\n\x00]*")
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([^\r\n\x00]*))?")
# The relay reads only the method: the target may be odd (mitmproxy passes on what an HTTP/2
# client sent), it has no say in the framing.
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") [^\r\n\x00]+ HTTP/1\.[01]")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})[ \t]*(?:;[^\r\n\x00]*)?\r\n")
_LENGTH = re.compile(r"[0-9]{1,18}")  # ASCII digits only (str.isdigit also takes "²")


class Malformed(ValueError):
    """A head whose framing cannot be trusted. The message is refused, and the connection
    it came on is closed: where the message ends, and so where the next begins, is unknown."""


@dataclass(frozen=True, slots=True)
class Head:
    """A message's fields and how its body is framed."""

    # As sent, except: Content-Length at most once, and not beside Transfer-Encoding.
    headers: list[tuple[str, str]]
    chunked: bool  # Transfer-Encoding: chunked (the only transfer coding accepted)
    length: int | None  # Content-Length; None if absent or overruled by chunked
    # Transfer-Encoding and Content-Length were both sent. Chunked governs (RFC 9112 §6.3),
    # but the sender and something in between may have disagreed on that: a request is
    # refused, and after an answer the connection is not used again (RFC 9112 §6.1).
    ambiguous: bool = False


def well_formed(head: bytes, lines: int) -> bool:
    """Whether `head` (a start line and field lines, each ending in CRLF, then CRLF), built
    from `lines` lines, has exactly those lines, each field line a name token, a colon and
    a value without CR, LF or NUL. (A name with a colon in it still passes: check names.)"""
    if head.count(b"\r\n") != lines + 1:
        return False
    return _FIELD_LINES.fullmatch(head, head.index(b"\r\n") + 2, len(head) - 2) is not None


def sendable(name: str, value: str) -> bool:
    """Whether a field goes out as itself: a token for a name, no CR, LF or NUL in the
    value (else it could end the head early or add fields of its own)."""
    return _NAME.fullmatch(name) is not None and _VALUE.fullmatch(value) is not None


def fields(block: bytes) -> Head:
    """The header fields in `block` (the lines after the start line, each ending in CRLF,
    without the empty line), checked and with the body's framing worked out.

    Content-Length sent more than once (also as a list, "42, 42") is merged when every value
    is the same, as RFC 9110 §8.6 allows, and refused when they differ: a reader that took
    the other value would see a different end of the message.
    """
    if _FIELD_LINES.fullmatch(block) is None:
        raise Malformed("a malformed header line (bad name, folded line, or CR/LF/NUL)")
    headers: list[tuple[str, str]] = []
    lengths: list[str] = []
    codings: list[str] = []
    for line in block.decode("latin-1").split("\r\n")[:-1]:
        name, _, value = line.partition(":")
        value = value.strip(" \t")  # OWS only: str.strip would also take "\xa0"
        lower = name.lower()
        if lower == "content-length":
            lengths.extend(v.strip(" \t") for v in value.split(","))
        elif lower == "transfer-encoding":
            codings.extend(c.strip(" \t").lower() for c in value.split(","))
        headers.append((name, value))
    length = _length(lengths) if lengths else None
    if codings and codings != ["chunked"]:
        # Anything else (gzip, chunked twice, identity) the relay could not undo, or is a
        # trick: RFC 9112 §6.1 allows no coding after chunked, and needs chunked last.
        raise Malformed(f"unsupported Transfer-Encoding ({', '.join(codings)[:40]})")
    if codings and length is not None:
        kept = [(k, v) for k, v in headers if k.lower() != "content-length"]
        return Head(kept, True, None, ambiguous=True)
    if len(lengths) > 1:
        headers = _merged(headers, length)
    return Head(headers, bool(codings), length)


def _length(values: list[str]) -> int:
    if len(set(values)) > 1:
        raise Malformed("conflicting Content-Length headers")
    if _LENGTH.fullmatch(values[0]) is None:
        raise Malformed(f"a bad Content-Length ({values[0][:20]!r})")
    return int(values[0])


def _merged(headers: list[tuple[str, str]], length: int | None) -> list[tuple[str, str]]:
    """Content-Length once, where it first was, with its one value."""
    out, seen = [], False
    for name, value in headers:
        if name.lower() == "content-length":
            if seen:
                continue
            seen, value = True, str(length)
        out.append((name, value))
    return out


def status_line(line: bytes) -> tuple[int, int, str]:
    """HTTP/1.x's minor version, the status and the reason of an answer's first line."""
    found = _STATUS_LINE.fullmatch(line)
    if found is None:
        raise Malformed("not an HTTP/1.1 status line")
    return int(found[1]), int(found[2]), (found[3] or b"").decode("latin-1")


def request_method(line: bytes) -> str:
    """The method of a request's first line (method, target, HTTP/1.x)."""
    found = _REQUEST_LINE.fullmatch(line)
    if found is None:
        raise Malformed("not an HTTP/1.1 request line")
    return found[1].decode("ascii")


def chunk_size(line: bytes) -> int:
    """The size in a chunk's first line (hex digits, then any extension, then CRLF).
    int(x, 16) alone would also take "0x1a", "+5", "-5", "1_0" and spaces."""
    found = _CHUNK_SIZE.fullmatch(line)
    if found is None:
        raise Malformed("a malformed chunk size")
    return int(found[1], 16)
