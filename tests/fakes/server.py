"""A small in-process HTTP(S) server that protocol fakes build on.

A fake subclasses `FakeServer`, registers `Route`s (optionally only for some `Host`s) and
answers each `Request` with a `Reply` (or raises `HttpError`); a `Reply` with `stream` set is
sent chunked, one chunk per item as the iterable produces it, outside the lock. Every request
is recorded as a `Call`, labelled with the provider and a short endpoint name. Handlers run
one at a time under `self._lock` (a `threading.Condition`), so fake state needs no further
locking; public methods that touch state take the same lock.
"""

from __future__ import annotations

import json
import re
import select
import ssl
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Literal, Self
from urllib.parse import parse_qs, urlencode, urlsplit

if TYPE_CHECKING:
    from types import TracebackType

    import trustme

Json = dict[str, Any]
MAX_BODY = 16 * 1024 * 1024


@dataclass(frozen=True)
class Call:
    """One request the fake received. `headers` keys are lower-case; `params` is the query."""

    provider: str
    endpoint: str
    method: str
    path: str
    headers: dict[str, str]
    params: dict[str, str]
    body: Json | None


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    body: Json | None
    body_kind: Literal["json", "form"] | None
    error: str | None = None  # why the body could not be parsed
    args: dict[str, str] = field(default_factory=dict)  # path placeholders

    def field(self, name: str) -> str | None:
        """A string field of the JSON or form body (None if absent or not a string)."""
        value = (self.body or {}).get(name)
        return value if isinstance(value, str) else None

    def credential(self, *schemes: str) -> str | None:
        """The Authorization credential if its scheme is one of `schemes` (lower-case)."""
        scheme, _, value = self.headers.get("authorization", "").partition(" ")
        return (value.strip() or None) if scheme.lower() in schemes else None


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()
    # If set, `body` is ignored: each item goes out as one HTTP/1.1 chunk as soon as it is
    # produced (so a generator can pace them), then the connection handler calls
    # `on_disconnect` if the client went away before the end.
    stream: Iterable[bytes] | None = field(default=None, compare=False)
    on_disconnect: Callable[[], None] | None = field(default=None, compare=False)


class HttpError(Exception):
    """Raised by a handler to answer with `reply`."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


def json_reply(payload: object, status: int = 200) -> Reply:
    return Reply(status, json.dumps(payload).encode(), "application/json; charset=utf-8")


def form_reply(payload: Json, status: int = 200) -> Reply:
    body = urlencode({k: str(v) for k, v in payload.items()}).encode()
    return Reply(status, body, "application/x-www-form-urlencoded; charset=utf-8")


def html_reply(text: str, status: int = 200) -> Reply:
    return Reply(status, text.encode(), "text/html; charset=utf-8")


def redirect(location: str) -> Reply:
    return Reply(302, b"", "text/plain", (("Location", location),))


def fail(status: int, payload: object) -> HttpError:
    """`raise fail(400, {...})` answers with that JSON."""
    return HttpError(json_reply(payload, status))


Handler = Callable[[Request], Reply]
Label = Callable[[Request], tuple[str, str]]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    label: Label
    hosts: frozenset[str] | None = None  # None: any Host header


def route(
    method: str,
    path: str,
    handler: Handler,
    label: tuple[str, str] | Label,
    hosts: Iterable[str] | None = None,
) -> Route:
    """A route for `path`, where `{name}` matches one path segment (passed in `Request.args`).
    With `hosts`, only requests whose `Host` header (without port) is one of them match."""
    regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(path))
    only = frozenset(h.lower() for h in hosts) if hosts is not None else None
    if isinstance(label, tuple):
        fixed = label
        return Route(method, re.compile(regex), handler, lambda _req: fixed, only)
    return Route(method, re.compile(regex), handler, label, only)


def host_of(req: Request) -> str:
    """The `Host` header without its port, lower-cased."""
    host = req.headers.get("host", "").strip().lower()
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _first_values(query: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}


def parse_request(method: str, target: str, headers: dict[str, str], raw: bytes) -> Request:
    url = urlsplit(target)
    base = Request(method, url.path, _first_values(url.query), headers, None, None)
    if not raw:
        return base
    ctype = headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if ctype == "application/json" or ctype.startswith("application/x-amz-json"):
            body = json.loads(raw)
            if not isinstance(body, dict):
                return replace(base, error="JSON body must be an object")
            return replace(base, body=body, body_kind="json")
        if ctype == "application/x-www-form-urlencoded":
            return replace(base, body=_first_values(raw.decode()), body_kind="form")
    except (UnicodeDecodeError, ValueError) as exc:
        return replace(base, error=f"malformed {ctype} body: {exc}")
    return base


class FakeServer:
    """Serves registered routes on 127.0.0.1:<ephemeral port>, over TLS if `tls` is given."""

    def __init__(
        self, tls: trustme.CA | None = None, hostnames: Iterable[str] = ("127.0.0.1", "localhost")
    ) -> None:
        self._lock = threading.Condition()
        self._calls: list[Call] = []
        self._routes: list[Route] = []
        self.errors: list[str] = []  # tracebacks of handler bugs (answered with 500)
        # Paths whose requests wait this many seconds before they are handled (`stall`).
        self.stalls: dict[str, float] = {}
        self._httpd = _HTTPServer(self)
        scheme = "http"
        if tls is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.issue_cert(*hostnames).configure_cert(ctx)
            self._httpd.socket = ctx.wrap_socket(
                self._httpd.socket, server_side=True, do_handshake_on_connect=False
            )
            scheme = "https"
        self.base_url = f"{scheme}://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread: threading.Thread | None = None

    def add_routes(self, routes: Iterable[Route]) -> None:
        self._routes.extend(routes)

    # lifecycle

    def start(self) -> Self:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # recorded calls

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def _matching(self, provider: str, endpoint: str) -> list[Call]:
        return [c for c in self._calls if (c.provider, c.endpoint) == (provider, endpoint)]

    def count(self, provider: str, endpoint: str) -> int:
        with self._lock:
            return len(self._matching(provider, endpoint))

    def wait_for(self, provider: str, endpoint: str, count: int = 1, timeout: float = 10.0) -> Call:
        """Block until `count` such calls arrived; return the `count`-th."""
        with self._lock:
            if not self._lock.wait_for(
                lambda: len(self._matching(provider, endpoint)) >= count, timeout
            ):
                raise TimeoutError(f"no call #{count} to {provider}/{endpoint} in {timeout}s")
            return self._matching(provider, endpoint)[count - 1]

    # dispatch (called on the connection's thread)

    def dispatch(self, req: Request) -> Reply:
        host = host_of(req)
        matches = [
            (r, m)
            for r in self._routes
            if (r.hosts is None or host in r.hosts) and (m := r.pattern.fullmatch(req.path))
        ]
        hit = next(((r, m) for r, m in matches if r.method == req.method), None)
        with self._lock:
            try:
                if hit is None:
                    what = "method_not_allowed" if matches else "not_found"
                    self._record(req, ("unknown", what))
                    return json_reply({"error": what, "path": req.path}, 405 if matches else 404)
                rt, m = hit
                req = replace(req, args=m.groupdict())
                self._record(req, rt.label(req))
                if req.error:
                    raise fail(400, {"error": "invalid_request", "error_description": req.error})
                return rt.handler(req)
            except HttpError as exc:
                return exc.reply
            except Exception:
                self.errors.append(traceback.format_exc())
                return json_reply({"error": "fake_server_bug", "detail": self.errors[-1]}, 500)
            finally:
                self._lock.notify_all()

    def _record(self, req: Request, label: tuple[str, str]) -> None:
        self._calls.append(Call(*label, req.method, req.path, req.headers, req.params, req.body))


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, app: FakeServer) -> None:
        self.app = app
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # TLS handshake failures and dropped connections are the client's business


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes
    timeout = 10
    server: _HTTPServer

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):  # handshake here, not in the accept loop
            self.request.settimeout(self.timeout)
            self.request.do_handshake()
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        raw = self._read_body(headers)
        if raw is None:
            self.close_connection = True
            reply = json_reply({"error": "invalid_request", "error_description": "bad body"}, 400)
        elif self._stalled_and_gone():
            self.close_connection = True  # the client left before the server got to it
            return
        else:
            reply = self.server.app.dispatch(parse_request(self.command, self.path, headers, raw))
        if reply.stream is not None:
            self._send_stream(reply)
            return
        self.send_response(reply.status)
        for name, value in (
            ("Content-Type", reply.content_type),
            ("Content-Length", str(len(reply.body))),
            *reply.headers,
        ):
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.body)

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _send_stream(self, reply: Reply) -> None:
        """Send `reply.stream` chunked, each item as it comes; notice a client that leaves."""
        assert reply.stream is not None
        self.send_response(reply.status)
        for name, value in (
            ("Content-Type", reply.content_type),
            ("Transfer-Encoding", "chunked"),
            ("Cache-Control", "no-cache"),
            *reply.headers,
        ):
            self.send_header(name, value)
        chunks = iter(reply.stream)
        try:
            self.end_headers()
            while True:
                try:
                    chunk = next(chunks)
                except StopIteration:
                    break
                except Exception:
                    self.server.app.errors.append(traceback.format_exc())
                    self.close_connection = True  # the client sees a truncated body
                    return
                if self._peer_closed():
                    raise ConnectionAbortedError("client closed the connection")
                if chunk:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
        except OSError:  # BrokenPipe, ConnectionReset, SSL errors, or the check above
            self.close_connection = True
            if reply.on_disconnect is not None:
                reply.on_disconnect()
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    def _stalled_and_gone(self) -> bool:
        """Hold a request to a stalled path (`FakeServer.stall`) before handling it; True when
        its client went away meanwhile (then it is never handled, as by a server that had
        not read it yet)."""
        seconds = self.server.app.stalls.get(self.path.partition("?")[0], 0.0)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._peer_closed():
                return True
            time.sleep(0.02)
        return False

    def _peer_closed(self) -> bool:
        """While a response streams, an HTTP/1.1 client has nothing to send: a readable socket
        means EOF, a TLS close_notify or a reset. (A pipelined request would lose a byte.)"""
        sock = self.connection
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return False
            return not sock.recv(1)
        except (OSError, ValueError):
            return True

    def _read_body(self, headers: dict[str, str]) -> bytes | None:
        """The request body, or None if it cannot be read (chunked, bad or huge length)."""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return None
        try:
            length = int(headers.get("content-length") or 0)
        except ValueError:
            return None
        return self.rfile.read(length) if 0 <= length <= MAX_BODY else None
