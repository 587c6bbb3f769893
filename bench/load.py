"""The load client: raw HTTP/1.1 over asyncio streams, in worker processes.

A `Job` says where to send (directly to the upstream, or through a proxy with CONNECT), what
(small JSON, or SSE), and how (closed loop on keep-alive connections for a time or a count,
a fresh CONNECT+TLS per request, or one simultaneous burst). `Clients` runs one job per worker
process at the same wall-clock start, so a load is not limited by one client's GIL.
Only the standard library is used here: the workers start fast and stay lean.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Literal

HOST = "api.anthropic.com"
BODY = b'{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}'
STREAM_BODY = BODY[:-1] + b',"stream":true}'

Kind = Literal["json", "sse", "fresh", "burst"]


@dataclass(frozen=True)
class Target:
    """Where requests go. `proxy` None: straight to the upstream."""

    name: str
    upstream: tuple[str, int]
    cafile: str  # trusts the upstream's CA and every proxy's CA
    key: str  # what the client puts in x-api-key: a real-looking key or a placeholder
    proxy: tuple[str, int] | None = None


@dataclass(frozen=True)
class Job:
    kind: Kind
    target: Target
    start_at: float  # time.time() at which to start sending
    connections: int = 1
    duration: float = 0.0  # json/fresh: run this long (when count is 0)
    warmup: float = 0.0  # json/fresh: not counted at the start of `duration`
    count: int = 0  # json/fresh/sse: this many requests in all instead
    events: int = 10  # sse
    gap_ms: int = 50  # sse


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)  # seconds, requests in the window
    window: float = 0.0  # seconds the counted requests were sent in
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    ttfb: list[float] = field(default_factory=list)  # sse: to the first complete event
    gaps: list[float] = field(default_factory=list)  # sse: between consecutive events


def request_bytes(key: str, body: bytes = BODY, extra: str = "") -> bytes:
    head = (
        f"POST /v1/messages HTTP/1.1\r\nHost: {HOST}\r\nx-api-key: {key}\r\n"
        f"anthropic-version: 2023-06-01\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, target: Target, ctx: ssl.SSLContext) -> Conn:
        up_host, up_port = target.upstream
        if target.proxy is None:
            r, w = await asyncio.open_connection(up_host, up_port, ssl=ctx, server_hostname=HOST)
            return cls(r, w)
        r, w = await asyncio.open_connection(*target.proxy)
        authority = f"{up_host}:{up_port}"
        w.write(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        head = await r.readuntil(b"\r\n\r\n")
        if head[9:12] != b"200":
            w.close()
            raise ConnectionError(f"CONNECT refused: {head[:40]!r}")
        await w.start_tls(ctx, server_hostname=HOST)
        return cls(r, w)

    def close(self) -> None:
        self.writer.transport.abort()

    async def exchange(self, request: bytes, on_data: Callable[[bytes], None] | None = None) -> int:
        """Send one request and read its whole response; the status."""
        self.writer.write(request)
        reader = self.reader
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        chunked, length = False, 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if not chunked:
            data = await reader.readexactly(length) if length else b""
            if on_data is not None and data:
                on_data(data)
            return status
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                return status
            data = await reader.readexactly(size + 2)
            if on_data is not None:
                on_data(data[:-2])


def _context(cafile: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def _wait_until(wall: float) -> None:
    await asyncio.sleep(max(0.0, wall - time.time()))


class _Run:
    def __init__(self, job: Job) -> None:
        self.job = job
        self.ctx = _context(job.target.cafile)
        self.result = Result()
        self.left = job.count
        now_wall, now = time.time(), time.perf_counter()
        self.t_start = job.start_at - now_wall + now  # start_at on the perf_counter clock
        self.t_count = self.t_start + job.warmup
        self.t_end = self.t_start + job.duration

    def more(self, t: float) -> bool:
        if self.job.count:
            self.left -= 1
            return self.left >= 0
        return t < self.t_end

    def record(self, t0: float, t1: float, status: int) -> None:
        if self.job.count or t0 >= self.t_count:
            self.result.latencies.append(t1 - t0)
            self.result.statuses[status] += 1

    async def main(self) -> Result:
        job = self.job
        conns: list[Conn] = []
        if job.kind != "fresh":
            opening = (Conn.open(job.target, self.ctx) for _ in range(job.connections))
            conns = list(await asyncio.gather(*opening))
        await _wait_until(job.start_at)
        began = time.perf_counter()
        if job.kind == "fresh":
            await asyncio.gather(*(self.fresh() for _ in range(job.connections)))
        else:
            loop = {"json": self.keepalive, "sse": self.sse, "burst": self.burst}[job.kind]
            await asyncio.gather(*(loop(c) for c in conns))
        elapsed = time.perf_counter() - began
        for c in conns:
            c.close()
        self.result.window = elapsed if job.count else job.duration - job.warmup
        return self.result

    async def keepalive(self, conn: Conn) -> None:
        request = request_bytes(self.job.target.key)
        while self.more(t0 := time.perf_counter()):
            try:
                status = await conn.exchange(request)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                self.result.errors[type(exc).__name__] += 1
                conn.close()
                conn = await Conn.open(self.job.target, self.ctx)
                continue
            self.record(t0, time.perf_counter(), status)

    async def fresh(self) -> None:
        request = request_bytes(self.job.target.key)
        while self.more(t0 := time.perf_counter()):
            try:
                conn = await Conn.open(self.job.target, self.ctx)
                status = await conn.exchange(request)
                conn.close()
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                self.result.errors[type(exc).__name__] += 1
                continue
            self.record(t0, time.perf_counter(), status)

    async def burst(self, conn: Conn) -> None:
        t0 = time.perf_counter()
        try:
            status = await conn.exchange(request_bytes(self.job.target.key))
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            self.result.errors[type(exc).__name__] += 1
            return
        self.record(t0, time.perf_counter(), status)

    async def sse(self, conn: Conn) -> None:
        job = self.job
        extra = f"x-bench-events: {job.events}\r\nx-bench-gap-ms: {job.gap_ms}\r\n"
        request = request_bytes(job.target.key, STREAM_BODY, extra)
        for _ in range(job.count):
            times: list[float] = []
            tail = bytearray()

            def on_data(data: bytes, times: list[float] = times, tail: bytearray = tail) -> None:
                now = time.perf_counter()
                tail.extend(data)
                while (i := tail.find(b"\n\n")) >= 0:
                    del tail[: i + 2]
                    times.append(now)

            t0 = time.perf_counter()
            status = await conn.exchange(request, on_data)
            self.result.statuses[status] += 1
            if status != 200 or not times:
                self.result.errors[f"sse status {status}"] += 1
                continue
            self.result.ttfb.append(times[0] - t0)
            self.result.gaps.extend(b - a for a, b in zip(times, times[1:], strict=False))
            if len(times) != job.events:
                self.result.errors[f"sse got {len(times)} of {job.events} events"] += 1


def run_job(job: Job) -> Result:
    return asyncio.run(_Run(job).main())


def _worker(pipe: Connection) -> None:
    while (job := pipe.recv()) is not None:
        try:
            pipe.send(run_job(job))
        except Exception as exc:
            result = Result()
            result.errors[f"{type(exc).__name__}: {exc}"] += 1
            pipe.send(result)


class Clients:
    """`n` load-client processes; `run` gives each at most one job, all at once."""

    def __init__(self, n: int) -> None:
        mp = multiprocessing.get_context("spawn")
        self._pipes: list[Connection] = []
        self._procs = []
        for _ in range(n):
            ours, theirs = mp.Pipe()
            proc = mp.Process(target=_worker, args=(theirs,), daemon=True)
            proc.start()
            self._pipes.append(ours)
            self._procs.append(proc)

    @property
    def size(self) -> int:
        return len(self._pipes)

    def run(self, jobs: list[Job]) -> Result:
        """Run the jobs (one per worker) and merge their results."""
        assert len(jobs) <= len(self._pipes), "more jobs than workers"
        for pipe, job in zip(self._pipes, jobs, strict=False):
            pipe.send(job)
        merged = Result()
        for pipe in self._pipes[: len(jobs)]:
            r: Result = pipe.recv()
            merged.latencies += r.latencies
            merged.window = max(merged.window, r.window)
            merged.statuses.update(r.statuses)
            merged.errors.update(r.errors)
            merged.ttfb += r.ttfb
            merged.gaps += r.gaps
        return merged

    def close(self) -> None:
        for pipe in self._pipes:
            pipe.send(None)
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
