"""A minimal CONNECT-only HTTP proxy standing in for a corporate upstream proxy."""

from __future__ import annotations

import base64
import contextlib
import select
import socket
import socketserver
import ssl
import threading
from typing import Any


class ConnectProxy(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        routes: dict[str, tuple[str, int]],
        *,
        auth: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """`routes` maps "host:port" of a CONNECT to the address actually dialed. With `auth`
        (user:password) a CONNECT without that Basic Proxy-Authorization gets a 407; with
        `tls` clients speak TLS to the proxy itself (an https:// proxy)."""
        super().__init__(("127.0.0.1", 0), _Tunnel)
        self.routes = routes
        self.expected = "Basic " + base64.b64encode(auth.encode()).decode() if auth else None
        self.tls = tls
        self.connects: list[str] = []
        # The Proxy-Authorization of every CONNECT, refused ones too (None: none sent).
        self.authorizations: list[str | None] = []
        self.refused: list[str] = []

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> ConnectProxy:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()
        self.server_close()


class _Tunnel(socketserver.BaseRequestHandler):
    server: ConnectProxy

    def handle(self) -> None:
        if self.server.tls is None:
            self._serve(self.request)
            return
        # In this connection's own thread, so a slow handshake holds up no other.
        try:
            client = self.server.tls.wrap_socket(self.request, server_side=True)
        except OSError:
            return
        with client:
            self._serve(client)

    def _serve(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(4096)
            if not chunk:
                return
            head += chunk
        head, _, early = head.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        fields = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
        given = next(
            (v.strip() for k, v in fields.items() if k.lower() == "proxy-authorization"), None
        )
        self.server.authorizations.append(given)
        if method != "CONNECT" or target not in self.server.routes:
            client.sendall(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
            return
        if self.server.expected is not None and given != self.server.expected:
            self.server.refused.append(target)
            client.sendall(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                b'proxy-authenticate: Basic realm="test"\r\ncontent-length: 0\r\n\r\n'
            )
            return
        self.server.connects.append(target)
        upstream = socket.create_connection(self.server.routes[target])
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        if early:
            upstream.sendall(early)
        with upstream:
            _splice(client, upstream)


def _splice(a: socket.socket, b: socket.socket) -> None:
    """Copy both ways until both ends are done, in this one thread: a TLS socket may not be
    read and written from two threads at once."""
    peers = {a: b, b: a}
    while peers:
        # Bytes a TLS socket already decrypted do not make its file descriptor readable.
        ready = [s for s in peers if isinstance(s, ssl.SSLSocket) and s.pending()]
        if not ready:
            ready = select.select(list(peers), [], [], 60)[0]
            if not ready:
                return  # idle for a minute: the test is long over
        for src in ready:
            dst = peers[src]
            try:
                data = src.recv(65536)
                if data:
                    dst.sendall(data)
                    continue
            except OSError:
                pass
            del peers[src]
            # A TLS socket cannot half-close (shutdown drops its TLS state); it closes at the end.
            if not isinstance(dst, ssl.SSLSocket):
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
