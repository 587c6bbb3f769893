"""The relay's HTTP/1.1 client: keep-alive connections to the providers' API hosts.

Every injected request goes through here, so it is kept lean: asyncio streams with
asyncio's own TLS, one pool of idle connections per destination, the response body handed
on as it arrives. httpx stays in use for logins and refreshes, which are rare; through it
this hop cost about as much CPU as all of mitmproxy (bench/RESULTS.md).
"""

from __future__ import annotations

import asyncio
import base64
import math
import select
import ssl
import time
import zlib
from asyncio import sslproto
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, urlsplit

from login import http1

_IDLE_SECONDS = 50.0  # below the usual server keep-alive timeouts (60 s and up)
_MAX_IDLE = 256  # per destination; a busy proxy keeps one per request in flight
# The most recently used idle connections per destination stay _IDLE_SECONDS; the rest, what
# a burst left behind, close after _SURPLUS_SECONDS, so its memory goes back soon after.
_WARM = 8
_SURPLUS_SECONDS = 15.0
_SWEEP_SECONDS = 5.0
# asyncio's TLS reads into a 256 KiB buffer it allocates (zeroed, so resident) for every
# connection, idle ones included: a TLS record is at most 16 KiB, so this one holds two.
_TLS_BUFFER = 32 * 1024
_MAX_HEAD = 256 * 1024
_READ_SIZE = 64 * 1024
_NO_BODY = {204, 304}
# Sent again on a kept-alive connection that dies without an answer: requests with no
# effect (RFC 9110 §9.2.1), so a provider that did read one has done nothing twice.
_SAFE = {"GET", "HEAD"}
_BROKEN = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError)

Resolver = Callable[[str, int], "tuple[str, int] | None"]


class UpstreamError(Exception):
    """The provider could not be reached, or broke off an answer."""


class UpstreamTimeout(UpstreamError):
    """The provider did not answer (or connect) in time."""


class Withdrawn(Exception):
    """The caller withdrew the request before a byte of it was written."""


@dataclass(frozen=True)
class Target:
    """Where a request goes: origin and request target (path and query)."""

    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def of(cls, base_url: str, path: str, query: Iterable[tuple[str, str]] = ()) -> Target:
        parts = urlsplit(base_url + path)
        if not parts.hostname:
            raise UpstreamError(f"no host in {base_url!r}")
        scheme = parts.scheme.lower()
        port = parts.port or (443 if scheme == "https" else 80)
        target = quote(parts.path or "/", safe="/:@!$&'()*+,;=-._~%")
        pairs = [*_split_query(parts.query), *query]
        if pairs:
            target += "?" + "&".join(f"{_q(k)}={_q(v)}" for k, v in pairs)
        return cls(scheme, parts.hostname.lower(), port, target)

    @property
    def authority(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def basic_auth(auth: str) -> str:
    """`user:password` as a Basic credential: the whole string in UTF-8, base64-encoded, as
    mitmproxy encodes `upstream_auth`, so the proxy sees one credential from both."""
    return "Basic " + base64.b64encode(auth.encode()).decode("ascii")


def _q(text: str) -> str:
    return quote(text, safe="-._~:/@!$'()*,;")


def _split_query(query: str) -> list[tuple[str, str]]:
    return parse_qsl(query, keep_blank_values=True) if query else []


class _TLS(sslproto.SSLProtocol):
    """asyncio's own TLS protocol, with a smaller read buffer (see _TLS_BUFFER)."""

    max_size = _TLS_BUFFER


class _Stream(asyncio.StreamReaderProtocol):
    """Keeps the transport it is handed (the TLS one), for the StreamWriter."""

    transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        super().connection_made(transport)


class _Connection:
    __slots__ = (
        "_poll",
        "deadline",
        "expired",
        "idle_since",
        "loop",
        "reader",
        "reused",
        "timeout",
        "timer",
        "writer",
    )

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float
    ) -> None:
        self.reader, self.writer = reader, writer
        self.idle_since = 0.0
        self.reused = False
        # Asks the kernel about the socket without reading it (no kernel object is held).
        self._poll = select.poll()
        if (sock := writer.get_extra_info("socket")) is not None:
            self._poll.register(sock.fileno(), select.POLLIN)
        # Each read must end within `timeout`. One timer per exchange, moved on lazily:
        # an asyncio.timeout per read (per stream chunk) cost more than the read itself.
        self.loop = asyncio.get_running_loop()
        self.timeout = timeout
        self.deadline = math.inf
        self.timer: asyncio.TimerHandle | None = None
        self.expired = False

    def usable(self, now: float) -> bool:
        if self.reader.at_eof() or self.writer.is_closing():
            return False
        return now - self.idle_since < _IDLE_SECONDS

    def quiet(self) -> bool:
        """Nothing arrived since the last answer: no byte, EOF or reset, neither read by the
        loop nor waiting in the kernel. An idle connection that heard anything is closing
        (or out of step), and a request written to it might be read and then lost."""
        if self.reader.at_eof() or self.writer.is_closing():
            return False
        # A StreamReader has no public size; bytes it holds came unasked (a 408, say).
        if getattr(self.reader, "_buffer", None):
            return False
        return not self._poll.poll(0)

    def reading(self) -> None:
        """A read starts: it must end within `timeout`, else the connection is aborted
        (the read then fails, and `expired` says why)."""
        self.deadline = self.loop.time() + self.timeout
        if self.timer is None:
            self.timer = self.loop.call_at(self.deadline, self._check)

    def read(self) -> None:
        """The read ended."""
        self.deadline = math.inf

    def _check(self) -> None:
        self.timer = None
        if self.deadline == math.inf:
            return
        if self.loop.time() < self.deadline:  # a later read: look again then
            self.timer = self.loop.call_at(self.deadline, self._check)
            return
        self.expired = True
        self.writer.transport.abort()

    def done(self) -> None:
        """The exchange is over: no more timer (nor a reference to this from the loop)."""
        self.deadline = math.inf
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def close(self) -> None:
        self.done()
        self.writer.close()


class Response:
    """An upstream answer whose body is read on demand. Close it (or read it to the end)."""

    def __init__(
        self,
        status: int,
        reason: str,
        headers: list[tuple[str, str]],
        body: AsyncIterator[bytes],
        close: Callable[[], None],
    ) -> None:
        self.status, self.reason, self.headers = status, reason, headers
        # Lower-cased names; for a repeated header the last value.
        self.lookup = {k.lower(): v for k, v in headers}
        self._body, self._close = body, close

    def aiter_raw(self) -> AsyncIterator[bytes]:
        """The body as sent (framing removed, content encoding kept), chunk by chunk."""
        return self._body

    async def aiter_decoded(self) -> AsyncIterator[bytes]:
        """The body with gzip or deflate undone; the relay asks for no other encoding
        where it reads bodies."""
        encoding = self.lookup.get("content-encoding", "identity").strip().lower()
        if encoding in ("", "identity"):
            async for chunk in self._body:
                yield chunk
            return
        if encoding not in ("gzip", "x-gzip", "deflate"):
            raise UpstreamError(f"the provider answered in an unexpected encoding ({encoding})")
        wbits = 16 + zlib.MAX_WBITS if "gzip" in encoding else zlib.MAX_WBITS
        decoder = zlib.decompressobj(wbits)
        try:
            async for chunk in self._body:
                if out := decoder.decompress(chunk):
                    yield out
            if out := decoder.flush():
                yield out
        except zlib.error:
            raise UpstreamError("the provider sent a corrupt compressed body") from None

    async def read(self, limit: int) -> bytes:
        """Up to `limit` bytes of the body, then closed; b"" on a broken stream."""
        data = bytearray()
        try:
            async for chunk in self._body:
                data += chunk
                if len(data) >= limit:
                    break
        except UpstreamError:
            pass
        finally:
            self.aclose()
        return bytes(data)

    def aclose(self) -> None:
        self._close()


class Outbound:
    """Sends requests upstream over pooled keep-alive HTTP/1.1 connections.

    `resolve` maps (host, port) to the address to dial (SNI and Host keep the name);
    `proxy` is an http:// or https:// proxy URL without credentials to tunnel through
    (mitmproxy's `upstream:` mode), and `proxy_auth` its `user:password` (mitmproxy's
    `upstream_auth`), sent as Basic Proxy-Authorization.
    """

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        *,
        resolve: Resolver | None = None,
        proxy: str | None = None,
        proxy_auth: str | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 600.0,
    ) -> None:
        ssl_context.set_alpn_protocols(["http/1.1"])
        self._ssl = ssl_context
        self._resolve = resolve
        self._proxy = urlsplit(proxy) if proxy else None
        self._proxy_auth = basic_auth(proxy_auth) if proxy_auth else None
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self.swept = 0  # idle connections closed for their age
        self._closed = False

    async def send(
        self,
        method: str,
        target: Target,
        headers: list[tuple[str, str]],
        body: bytes,
        withdraw: Callable[[], bool] | None = None,
    ) -> Response:
        """Send one request. `withdraw` is asked before dialling and again right before the
        request is written; if it says yes, Withdrawn is raised and nothing was sent.

        A request goes out at most once, except GET and HEAD: a kept-alive connection
        that breaks after the request was written may have delivered it, so only requests
        without effect are sent again."""
        head = self._head(method, target, headers, body)
        for attempt in range(2):
            if withdraw is not None and withdraw():
                raise Withdrawn
            conn = await self._take(target, fresh=attempt > 0)
            if withdraw is not None and withdraw():
                self._put(target, conn)  # unused: the next request may have it
                raise Withdrawn
            try:
                conn.writer.write(head + body if len(body) < 65536 else head)
                if len(body) >= 65536:
                    conn.writer.write(body)
                return await self._response(conn, target, method)
            except _Stale:
                conn.close()
                if method not in _SAFE:
                    why = "the request may have been processed, so it was not sent again"
                    raise UpstreamError(f"{target.host} dropped the connection; {why}") from None
            except BaseException:
                conn.close()
                raise
        raise UpstreamError(f"{target.host} closed the connection without an answer")

    def close(self) -> None:
        """Close the idle connections; those in use close when their answer is done."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

    # -- connections ---------------------------------------------------------------------

    async def _take(self, target: Target, fresh: bool = False) -> _Connection:
        key = (target.scheme, target.host, target.port)
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle and not fresh:
            conn = idle.pop()
            # The last look before the request is written (the caller writes without
            # yielding): a connection the server is closing is dropped here, not written to.
            if conn.usable(now) and conn.quiet():
                conn.reused = True
                return conn
            conn.close()
        try:
            async with asyncio.timeout(self.connect_timeout):
                return await self._dial(target)
        except TimeoutError:
            raise UpstreamTimeout(f"connecting to {target.host} timed out") from None
        except ssl.SSLError as exc:
            why = exc.reason or type(exc).__name__
            raise UpstreamError(f"TLS with {target.host} failed ({why})") from None
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {target.host} ({_why(exc)})") from None

    async def _dial(self, target: Target) -> _Connection:
        tls = self._ssl if target.scheme == "https" else None
        sni = target.host if tls else None
        if self._proxy is not None:
            return await self._tunnel(target, tls)
        host, port = target.host, target.port
        if self._resolve is not None and (to := self._resolve(host, port)) is not None:
            host, port = to
        if tls is None:
            reader, writer = await asyncio.open_connection(host, port, limit=_MAX_HEAD)
            return _Connection(reader, writer, self.read_timeout)
        # asyncio.open_connection(ssl=...), with asyncio's TLS protocol made leaner (_TLS).
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=_MAX_HEAD, loop=loop)
        stream = _Stream(reader, loop=loop)
        handshake = loop.create_future()
        protocol = _TLS(loop, stream, tls, handshake, server_hostname=sni)
        raw, _ = await loop.create_connection(lambda: protocol, host, port)
        try:
            await handshake
        except BaseException:
            raw.close()
            raise
        assert isinstance(stream.transport, asyncio.Transport)
        writer = asyncio.StreamWriter(stream.transport, stream, reader, loop)
        return _Connection(reader, writer, self.read_timeout)

    async def _tunnel(self, target: Target, tls: ssl.SSLContext | None) -> _Connection:
        proxy = self._proxy
        assert proxy is not None and proxy.hostname
        secure = proxy.scheme == "https"
        port = proxy.port or (443 if secure else 80)
        reader, writer = await asyncio.open_connection(
            proxy.hostname, port, ssl=self._ssl if secure else None, limit=_MAX_HEAD
        )
        conn = _Connection(reader, writer, self.read_timeout)
        if tls is None:
            return conn  # plain http goes to the proxy in absolute form (see _head)
        try:
            authority = f"{target.host}:{target.port}"
            lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
            if self._proxy_auth:
                lines.append(f"Proxy-Authorization: {self._proxy_auth}")
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            _, status, _, _ = _parse_head(await _read_head(reader))
            if not 200 <= status < 300:
                raise UpstreamError(self._refused(target, status))
            await writer.start_tls(tls, server_hostname=target.host)
        except BaseException:
            writer.close()
            raise
        return conn

    def _refused(self, target: Target, status: int) -> str:
        """Why the proxy refused the tunnel, naming the fix for a 407 (never the credential)."""
        why = f"the upstream proxy refused {target.host} ({status})"
        if status != 407:
            return why
        if self._proxy_auth:
            return f"{why}: it did not accept upstream_auth"
        return f"{why}: it wants credentials; set upstream_auth (--upstream-auth USER:PASS)"

    def _put(self, target: Target, conn: _Connection) -> None:
        if self._closed:
            conn.close()
            return
        conn.done()
        now = conn.idle_since = time.monotonic()
        idle = self._idle.setdefault((target.scheme, target.host, target.port), [])
        # The least recently used come first: drop those gone stale, or one over the cap.
        while idle and (len(idle) >= _MAX_IDLE or not idle[0].usable(now)):
            idle.pop(0).close()
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = conn.loop.call_later(_SWEEP_SECONDS, self._sweep)

    def _sweep(self) -> None:
        """Close idle connections past their time (see _WARM); look again while any are left."""
        self._sweeper = None
        now = time.monotonic()
        for key, idle in list(self._idle.items()):
            kept = []
            for i, conn in enumerate(idle):  # the least recently used first
                allowed = _IDLE_SECONDS if len(idle) - i <= _WARM else _SURPLUS_SECONDS
                if conn.usable(now) and now - conn.idle_since < allowed:
                    kept.append(conn)
                else:
                    conn.close()
                    self.swept += 1
            if kept:
                self._idle[key] = kept
            else:
                del self._idle[key]
        if self._idle:
            self._sweeper = asyncio.get_running_loop().call_later(_SWEEP_SECONDS, self._sweep)

    # -- one exchange --------------------------------------------------------------------

    def _head(
        self, method: str, target: Target, headers: list[tuple[str, str]], body: bytes
    ) -> bytes:
        path = target.path
        if self._proxy is not None and target.scheme == "http":
            path = f"http://{target.authority}{path}"
        lines = [f"{method} {path} HTTP/1.1", f"Host: {target.authority}"]
        lines.extend(f"{key}: {value}" for key, value in headers)
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        if self._proxy is not None and target.scheme == "http" and self._proxy_auth:
            lines.append(f"Proxy-Authorization: {self._proxy_auth}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        # A line break or NUL in a value, or a name that is not a token, could end the head
        # early or add fields (a second Content-Length): refused before anything is sent.
        # One pass over the whole head; each header is looked at only to name the culprit.
        if not http1.well_formed(head, len(lines)) or any(":" in k for k, _ in headers):
            _refuse_fields(headers)
        return head

    async def _response(self, conn: _Connection, target: Target, method: str) -> Response:
        try:
            while True:
                conn.reading()
                raw = await _read_head(conn.reader, stale=conn.reused)
                conn.read()
                old, status, reason, head = _parse_head(raw)
                if not 100 <= status < 200 or status == 101:
                    break
        except (UpstreamError, _Stale):
            if conn.expired:
                raise UpstreamTimeout(f"{target.host} did not answer in time") from None
            raise
        connection = ",".join(v for k, v in head.headers if k.lower() == "connection").lower()
        # HTTP/1.0 closes unless it says keep-alive; HTTP/1.1 keeps alive unless it says close.
        # An answer with both Transfer-Encoding and Content-Length is read as chunked (RFC 9112
        # §6.3), but whoever sent it may have meant the length: what follows on this
        # connection might be the rest of this answer, so the connection is not used again.
        closes = "close" in connection or (old and "keep-alive" not in connection)
        closes = closes or head.ambiguous
        if method == "HEAD" or status in _NO_BODY:
            body: AsyncIterator[bytes] = _nothing()
            length: int | None = 0
        elif head.chunked:
            body, length = self._chunked(conn), None
        elif head.length is not None:
            length = head.length
            body = self._sized(conn, length)
        else:
            body, length, closes = self._until_close(conn), None, True

        finished = False

        def done() -> None:
            nonlocal finished
            finished = True

        def close() -> None:
            if not finished:
                conn.close()

        async def tracked() -> AsyncIterator[bytes]:
            try:
                async for chunk in body:
                    yield chunk
            except http1.Malformed as exc:
                raise UpstreamError(f"{target.host} sent a malformed answer: {exc}") from None
            except _BROKEN as exc:
                if conn.expired:
                    raise UpstreamTimeout(f"{target.host} stopped sending") from None
                raise UpstreamError(f"{target.host} broke off the answer ({_why(exc)})") from None
            done()
            if closes:
                conn.close()
            else:
                self._put(target, conn)

        if length == 0:
            done()
            if closes:
                conn.close()
            else:
                self._put(target, conn)
            return Response(status, reason, head.headers, _nothing(), close)
        return Response(status, reason, head.headers, tracked(), close)

    async def _sized(self, conn: _Connection, length: int) -> AsyncIterator[bytes]:
        left = length
        while left > 0:
            conn.reading()
            chunk = await conn.reader.read(min(left, _READ_SIZE))
            conn.read()
            if not chunk:
                raise asyncio.IncompleteReadError(b"", left)
            left -= len(chunk)
            yield chunk

    async def _chunked(self, conn: _Connection) -> AsyncIterator[bytes]:
        reader = conn.reader
        while True:
            conn.reading()
            size = http1.chunk_size(await reader.readuntil(b"\r\n"))
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailers
                conn.read()
                return
            data = await reader.readexactly(size + 2)
            conn.read()
            if data[-2:] != b"\r\n":
                raise http1.Malformed("a chunk longer than its size")
            yield data[:-2]

    async def _until_close(self, conn: _Connection) -> AsyncIterator[bytes]:
        while True:
            conn.reading()
            chunk = await conn.reader.read(_READ_SIZE)
            conn.read()
            if not chunk:
                if conn.expired:  # aborted: not the end of the answer
                    raise asyncio.IncompleteReadError(b"", None)
                return
            yield chunk


class _Stale(Exception):
    """A reused connection closed before any byte of the answer (the request may or may
    not have been read)."""


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator


async def _read_head(reader: asyncio.StreamReader, stale: bool = False) -> bytes:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if stale and not exc.partial:
            raise _Stale from None
        raise UpstreamError("the connection closed before a complete answer") from None
    except asyncio.LimitOverrunError:
        raise UpstreamError("the answer's headers are too large") from None
    except OSError as exc:
        if stale and isinstance(exc, ConnectionError):
            raise _Stale from None
        raise UpstreamError(f"the connection broke ({_why(exc)})") from None


def _parse_head(raw: bytes) -> tuple[bool, int, str, http1.Head]:
    """An answer's head: whether it is HTTP/1.0, its status, reason and fields. Anything
    malformed is refused (login.http1): the answer cannot be trusted, nor the connection."""
    start, _, block = raw[:-2].partition(b"\r\n")
    try:
        minor, status, reason = http1.status_line(start)
        return minor == 0, status, reason, http1.fields(block)
    except http1.Malformed as exc:
        raise UpstreamError(f"the provider sent a malformed answer: {exc}") from None


def _refuse_fields(headers: list[tuple[str, str]]) -> None:
    for key, value in headers:
        if not http1.sendable(key, value):
            why = "a line break, NUL or a name that is not a token"
            raise UpstreamError(f"refusing a header with {why}: {key[:40]!r}")
    raise UpstreamError("refusing a malformed request head")


def _why(exc: BaseException) -> str:
    return type(exc).__name__
