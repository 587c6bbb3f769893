"""The relay's loopback server against callers that are not keyswap's addon: any process on
the machine can connect to it, and without a live ticket it must give nothing away."""

from __future__ import annotations

import asyncio
from typing import Any

from addon.relay import TICKET_HEADER, Relay


async def _exchange(port: int, *requests: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for request in requests:
            writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536 * 4), 5)
    finally:
        writer.close()


def _serve(check: Any) -> None:
    async def main() -> None:
        relay = Relay(None)  # no job is ever taken
        port = relay.start()
        try:
            await check(port)
        finally:
            relay.stop()

    asyncio.run(main())


def test_unknown_tickets_get_403_and_the_connection_stays_usable() -> None:
    async def check(port: int) -> None:
        one = f"GET / HTTP/1.1\r\n{TICKET_HEADER}: made-up\r\n\r\n".encode()
        none = b"POST /v1/messages HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(one)
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.write(none)
        second = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.close()
        for answer in (first, second):
            assert answer.startswith(b"HTTP/1.1 403 Forbidden\r\n")
            assert b"content-length: 0" in answer

    _serve(check)


def test_what_the_addon_never_sends_closes_the_connection() -> None:
    async def check(port: int) -> None:
        chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        assert await _exchange(port, chunked) == b""
        huge = b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"
        assert await _exchange(port, huge) == b""
        endless = b"GET / HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 70_000
        assert await _exchange(port, endless) == b""

    _serve(check)
