"""A minimal CONNECT-only HTTP proxy standing in for a corporate upstream proxy."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
from typing import Any


class ConnectProxy(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, routes: dict[str, tuple[str, int]]) -> None:
        """`routes` maps "host:port" of a CONNECT to the address actually dialed."""
        super().__init__(("127.0.0.1", 0), _Tunnel)
        self.routes = routes
        self.connects: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> ConnectProxy:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()
        self.server_close()


class _Tunnel(socketserver.BaseRequestHandler):
    server: ConnectProxy

    def handle(self) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.request.recv(4096)
            if not chunk:
                return
            head += chunk
        method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
        if method != "CONNECT" or target not in self.server.routes:
            self.request.sendall(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
            return
        self.server.connects.append(target)
        upstream = socket.create_connection(self.server.routes[target])
        self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        pipes = [
            threading.Thread(target=_pipe, args=(self.request, upstream), daemon=True),
            threading.Thread(target=_pipe, args=(upstream, self.request), daemon=True),
        ]
        for p in pipes:
            p.start()
        for p in pipes:
            p.join()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)
