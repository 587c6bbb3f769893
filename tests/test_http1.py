"""login.http1, the strict HTTP/1.1 head reading the relay's client and server and the doctor
share: where two readers could disagree on a message's end or fields, it refuses."""

from __future__ import annotations

import pytest

from login import http1


def block(*lines: str) -> bytes:
    return "".join(f"{line}\r\n" for line in lines).encode("latin-1")


def test_plain_fields_keep_their_order_case_and_values() -> None:
    head = http1.fields(block("Content-Type: application/json", "X-A:  b c \t", "x-a: d"))
    assert head.headers == [("Content-Type", "application/json"), ("X-A", "b c"), ("x-a", "d")]
    assert (head.chunked, head.length, head.ambiguous) == (False, None, False)
    assert http1.fields(b"").headers == []


@pytest.mark.parametrize(
    "lines",
    [
        ("Content-Length: 42", "content-length: 42"),
        ("Content-Length: 42, 42",),
        ("Content-Length: 42", "X-A: b", "Content-Length: 42,42"),
    ],
    ids=["two-lines", "list", "list-and-line"],
)
def test_identical_content_lengths_are_merged_into_one(lines: tuple[str, ...]) -> None:
    head = http1.fields(block(*lines))
    assert head.length == 42
    assert [(k, v) for k, v in head.headers if k.lower() == "content-length"] == [
        ("Content-Length", "42")
    ]


@pytest.mark.parametrize(
    "lines",
    [
        ("Content-Length: 42", "Content-Length: 43"),
        ("Content-Length: 42, 43",),
        ("Content-Length: 42", "Content-Length: 042"),
        ("Content-Length: 5,",),
    ],
    ids=["two-lines", "list", "leading-zero", "trailing-comma"],
)
def test_differing_content_lengths_are_refused(lines: tuple[str, ...]) -> None:
    with pytest.raises(http1.Malformed, match="Content-Length"):
        http1.fields(block(*lines))


@pytest.mark.parametrize("value", ["", "+5", "-5", "0x10", "1 2", "1_0", "²", "1" * 19])
def test_a_content_length_that_is_not_plain_digits_is_refused(value: str) -> None:
    with pytest.raises(http1.Malformed, match="Content-Length"):
        http1.fields(block(f"Content-Length: {value}"))


def test_chunked_beside_a_content_length_governs_and_is_marked() -> None:
    head = http1.fields(block("Content-Length: 10", "Transfer-Encoding: chunked", "X-A: b"))
    assert (head.chunked, head.length, head.ambiguous) == (True, None, True)
    assert head.headers == [("Transfer-Encoding", "chunked"), ("X-A", "b")]


@pytest.mark.parametrize(
    "value", ["gzip, chunked", "chunked, chunked", "identity", "chunked, gzip", ""]
)
def test_any_transfer_coding_but_chunked_alone_is_refused(value: str) -> None:
    with pytest.raises(http1.Malformed, match="Transfer-Encoding"):
        http1.fields(block(f"Transfer-Encoding: {value}"))
    assert http1.fields(block("Transfer-Encoding: Chunked")).chunked


@pytest.mark.parametrize(
    "raw",
    [
        b"X-A : b\r\n",  # a space before the colon
        b"X A: b\r\n",
        b": b\r\n",
        b"X-A\r\n",
        b"X(A): b\r\n",
        b"X-A: b\r\n c\r\n",  # obs-fold
        b"X-A: b\r\n\tc\r\n",
        b"X-A: b\nX-B: c\r\n",  # a bare LF
        b"X-A: b\rc\r\n",
        b"X-A: b\x00c\r\n",
        b"X-\xe4: b\r\n",
    ],
)
def test_malformed_header_lines_are_refused(raw: bytes) -> None:
    with pytest.raises(http1.Malformed, match="malformed header line"):
        http1.fields(raw)


def test_status_lines() -> None:
    assert http1.status_line(b"HTTP/1.1 200 OK") == (1, 200, "OK")
    assert http1.status_line(b"HTTP/1.0 404 Not  Found") == (0, 404, "Not  Found")
    assert http1.status_line(b"HTTP/1.1 204") == (1, 204, "")
    assert http1.status_line(b"HTTP/1.1 200 ") == (1, 200, "")
    for bad in (b"HTTP/2 200 OK", b"HTTP/1.1 2000 OK", b"HTTP/1.1 \xb200 OK", b"HTTP/1.1 20 OK"):
        with pytest.raises(http1.Malformed):
            http1.status_line(bad)
    with pytest.raises(http1.Malformed):
        http1.status_line(b"HTTP/1.1 200 O\x00K")


def test_request_lines() -> None:
    assert http1.request_method(b"POST /v1/messages HTTP/1.1") == "POST"
    for bad in (b"POST /v1 HTTP/2.0", b"POST HTTP/1.1", b"/v1 HTTP/1.1", b"POST /v1 HTTP/1.1 "):
        with pytest.raises(http1.Malformed):
            http1.request_method(bad)


def test_chunk_sizes() -> None:
    assert http1.chunk_size(b"1a\r\n") == 26
    assert http1.chunk_size(b"1A;name=value\r\n") == 26
    assert http1.chunk_size(b"0\r\n") == 0
    for bad in (b"0x1a\r\n", b"+5\r\n", b"-5\r\n", b"1_0\r\n", b" 5\r\n", b"\r\n", b"5"):
        with pytest.raises(http1.Malformed, match="chunk size"):
            http1.chunk_size(bad)


def test_what_may_be_sent() -> None:
    assert http1.sendable("X-Api-Key", "a b\tc")
    for name, value in [("X A", "b"), ("X:A", "b"), ("", "b"), ("X", "b\r\nY: c"), ("X", "\x00")]:
        assert not http1.sendable(name, value)


def test_a_built_head_is_well_formed_only_with_the_lines_it_was_built_from() -> None:
    lines = ["GET / HTTP/1.1", "Host: h", "X-A: b"]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    assert http1.well_formed(head, len(lines))
    assert http1.well_formed(b"GET / HTTP/1.1\r\n\r\n", 1)
    smuggled = ["GET / HTTP/1.1", "X-A: b\r\nContent-Length: 5"]  # two lines where one was
    assert not http1.well_formed(("\r\n".join(smuggled) + "\r\n\r\n").encode(), len(smuggled))
    for bad in ("X A: b", "X-A: b\nc", "X-A: \x00", ": b"):
        assert not http1.well_formed(f"GET / HTTP/1.1\r\n{bad}\r\n\r\n".encode(), 2)
