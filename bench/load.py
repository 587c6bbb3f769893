"""The load client: raw HTTP/1.1 over asyncio streams, in worker processes.

A `Job` says where to send (straight to the upstream, or through a proxy with CONNECT), what
(small JSON, or SSE) and how: a closed loop on keep-alive connections for a time or a count
("json"), SSE streams one after another ("sse"), a fresh CONNECT+TLS per request ("fresh"), or
one request on every connection at the same instant ("burst"). `Clients` gives each worker
process one job; every worker first opens its connections, then all start at the same
wall-clock instant, so neither connection setup nor one client's GIL limits a measurement.
Only the standard library is used here, so the workers start fast and stay lean.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Literal

HOST = "api.anthropic.com"
BODY = b'{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}'
STREAM_BODY = BODY[:-1] + b',"stream":true}'
_FAILURES = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError)

Kind = Literal["json", "sse", "fresh", "burst"]


@dataclass(frozen=True)
class Target:
    """Where requests go. `proxy` None: straight to the upstream."""

    name: str
    upstream: tuple[str, int]
    cafile: str  # trusts the upstream's CA and the proxies' CA
    key: str  # the client's x-api-key: a real-looking key, or a placeholder for keyswap
    proxy: tuple[str, int] | None = None


@dataclass(frozen=True)
class Job:
    kind: Kind
    target: Target
    connections: int = 1
    duration: float = 0.0  # json/fresh: run this long (with a count: at most this long) ...
    warmup: float = 0.0  # ... not counting what starts in the first `warmup` seconds
    count: int = 0  # json/fresh/sse: this many requests instead (sse: per connection)
    events: int = 10  # sse: events per stream
    gap_ms: int = 50  # sse: upstream's pause between two events


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)  # seconds, of requests sent in the window
    window: float = 0.0  # seconds: the measuring window (or, for a count, the time it took)
    completed: int = 0  # requests that completed in the window
    sent: int = 0  # requests answered, warm-up included
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    ttfb: list[float] = field(default_factory=list)  # sse: request sent -> first whole event
    gaps: list[float] = field(default_factory=list)  # sse: between two consecutive events

    def merge(self, other: Result) -> None:
        self.latencies += other.latencies
        self.window = max(self.window, other.window)
        self.completed += other.completed
        self.sent += other.sent
        self.statuses.update(other.statuses)
        self.errors.update(other.errors)
        self.ttfb += other.ttfb
        self.gaps += other.gaps


def request_bytes(key: str, body: bytes = BODY, extra: str = "") -> bytes:
    head = (
        f"POST /v1/messages HTTP/1.1\r\nHost: {HOST}\r\nx-api-key: {key}\r\n"
        f"anthropic-version: 2023-06-01\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


class Conn:
    """One client connection: TLS to the upstream, or CONNECT to a proxy and TLS inside."""

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
            w.transport.abort()
            raise ConnectionError(f"CONNECT refused: {head[:40]!r}")
        await w.start_tls(ctx, server_hostname=HOST)
        return cls(r, w)

    def close(self) -> None:
        self.writer.transport.abort()

    async def exchange(self, request: bytes, on_data: Callable[[bytes], None] | None = None) -> int:
        """Send one request and read its whole response (Content-Length or chunked); the
        status. `on_data` gets the body piece by piece as it arrives."""
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


class _Run:
    def __init__(self, job: Job) -> None:
        self.job = job
        self.ctx = ssl.create_default_context(cafile=job.target.cafile)
        self.ctx.set_alpn_protocols(["http/1.1"])
        self.result = Result()
        self.left = job.count
        self.t_count = self.t_end = 0.0  # perf_counter clock, set at the start

    async def main(self, ready: Callable[[], float]) -> Result:
        """Open the connections, call `ready` (which returns the wall-clock start), run."""
        job = self.job
        conns: list[Conn] = []
        if job.kind != "fresh":
            conns = list(
                await asyncio.gather(
                    *(Conn.open(job.target, self.ctx) for _ in range(job.connections))
                )
            )
        t_start = ready() - time.time() + time.perf_counter()
        self.t_count, self.t_end = t_start + job.warmup, t_start + job.duration
        await asyncio.sleep(max(0.0, t_start - time.perf_counter()))
        began = time.perf_counter()
        if job.kind == "fresh":
            tasks = [asyncio.create_task(self.fresh()) for _ in range(job.connections)]
        else:
            loop = {"json": self.keepalive, "sse": self.sse, "burst": self.burst}[job.kind]
            tasks = [asyncio.create_task(loop(c)) for c in conns]
        # No new request starts after the window; those in flight then are waited for, so
        # the proxy's CPU time divides by every request it served.
        await asyncio.gather(*tasks, return_exceptions=True)
        elapsed = time.perf_counter() - began
        for c in conns:
            c.close()
        self.result.window = elapsed if job.count else job.duration - job.warmup
        return self.result

    def more(self, t: float) -> bool:
        if self.job.count:
            self.left -= 1
            # With both, `duration` caps the time a `count` may take.
            return self.left >= 0 and (not self.job.duration or t < self.t_end)
        return t < self.t_end

    def record(self, t0: float, t1: float, status: int) -> None:
        """Throughput counts what completes inside the window; latency, what started in it
        (after the warm-up; each is waited for, however long it takes)."""
        r = self.result
        r.sent += 1
        if not self.job.duration:  # a count, or a burst: everything counts
            r.completed += 1
            r.latencies.append(t1 - t0)
            r.statuses[status] += 1
            return
        if self.t_count <= t1 <= self.t_end:
            r.completed += 1
        if self.t_count <= t0 < self.t_end:
            r.latencies.append(t1 - t0)
            r.statuses[status] += 1

    def failed(self, exc: BaseException) -> None:
        self.result.errors[type(exc).__name__] += 1

    async def keepalive(self, conn: Conn) -> None:
        request = request_bytes(self.job.target.key)
        while self.more(t0 := time.perf_counter()):
            try:
                status = await conn.exchange(request)
            except _FAILURES as exc:
                self.failed(exc)
                conn.close()
                conn = await Conn.open(self.job.target, self.ctx)
                continue
            self.record(t0, time.perf_counter(), status)
        conn.close()

    async def fresh(self) -> None:
        request = request_bytes(self.job.target.key)
        while self.more(t0 := time.perf_counter()):
            try:
                conn = await Conn.open(self.job.target, self.ctx)
                status = await conn.exchange(request)
                conn.close()
            except _FAILURES as exc:
                self.failed(exc)
                continue
            self.record(t0, time.perf_counter(), status)

    async def burst(self, conn: Conn) -> None:
        t0 = time.perf_counter()
        try:
            status = await conn.exchange(request_bytes(self.job.target.key))
        except _FAILURES as exc:
            self.failed(exc)
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
            try:
                status = await conn.exchange(request, on_data)
            except _FAILURES as exc:
                self.failed(exc)
                return
            self.result.sent += 1
            self.result.statuses[status] += 1
            if status != 200 or len(times) != job.events:
                self.result.errors[f"stream: status {status}, {len(times)} events"] += 1
            if times:
                self.result.ttfb.append(times[0] - t0)
                self.result.gaps += [b - a for a, b in itertools.pairwise(times)]


def _worker(pipe: Connection) -> None:
    def ready() -> float:
        pipe.send("ready")
        start_at: float = pipe.recv()
        return start_at

    while (job := pipe.recv()) is not None:
        try:
            result = asyncio.run(_Run(job).main(ready))
        except Exception as exc:
            result = Result()
            result.errors[f"{type(exc).__name__}: {exc}"] += 1
        pipe.send(result)


class Clients:
    """`n` load-client processes. `run` gives each at most one job; all start together."""

    def __init__(self, n: int) -> None:
        mp = multiprocessing.get_context("spawn")
        self._pipes: list[Connection] = []
        self._procs: list[BaseProcess] = []
        for _ in range(n):
            ours, theirs = mp.Pipe()
            proc = mp.Process(target=_worker, args=(theirs,), daemon=True)
            proc.start()
            self._pipes.append(ours)
            self._procs.append(proc)

    @property
    def size(self) -> int:
        return len(self._pipes)

    def split(
        self,
        kind: Kind,
        target: Target,
        connections: int,
        *,
        duration: float = 0.0,
        warmup: float = 0.0,
        count: int = 0,
    ) -> list[Job]:
        """One job per worker, sharing `connections` and `count` between them."""
        n = min(self.size, connections)
        return [
            Job(
                kind,
                target,
                connections=connections // n + (i < connections % n),
                duration=duration,
                warmup=warmup,
                count=count // n + (i < count % n),
            )
            for i in range(n)
        ]

    def run(self, jobs: list[Job], on_start: Callable[[], None] | None = None) -> Result:
        """Run the jobs, one per worker, all starting together once every worker has its
        connections open (`on_start` is called then); their results merged."""
        merged = Result()
        for r in self.run_each(jobs, on_start):
            merged.merge(r)
        return merged

    def run_each(
        self, jobs: list[Job], on_start: Callable[[], None] | None = None, lead: float = 0.05
    ) -> list[Result]:
        """`run`, with each job's result on its own."""
        assert len(jobs) <= len(self._pipes), "more jobs than workers"
        pipes = self._pipes[: len(jobs)]
        for pipe, job in zip(pipes, jobs, strict=True):
            pipe.send(job)
        done: dict[int, Result] = {}
        for i, pipe in enumerate(pipes):
            msg = pipe.recv()
            if isinstance(msg, Result):  # failed before it was ready
                done[i] = msg
        if on_start is not None:
            on_start()
        start_at = time.time() + lead
        for i, pipe in enumerate(pipes):
            if i not in done:
                pipe.send(start_at)
        return [done[i] if i in done else pipe.recv() for i, pipe in enumerate(pipes)]

    def close(self) -> None:
        for pipe in self._pipes:
            with contextlib.suppress(OSError):
                pipe.send(None)
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
