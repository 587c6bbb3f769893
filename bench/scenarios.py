"""The measurements. A `Lab` holds what runs (upstream, proxies, load clients); each function
here runs one kind of measurement through it and returns plain numbers for the report."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import trustme

from .load import Clients, Job, Result, Target
from .procs import Proxy, Upstream, User, make_mitmproxy_ca, snapshot

PATHS = ("direct", "bare", "keyswap")
REAL_KEY = "sk-ant-api03-bench"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(q / 100 * len(ordered)))) - 1]


def anthropic_config(upstream_port: int, token_url: str, extra: str = "") -> str:
    return (
        f'[resolve]\n"api.anthropic.com:443" = "127.0.0.1:{upstream_port}"\n\n'
        f'[providers.anthropic.endpoints]\ntoken = "{token_url}"\n\n{extra}'
    )


@dataclass
class Lab:
    """The upstream, the proxies under test and the load clients, for one run."""

    workdir: Path
    stack: ExitStack
    clients: Clients
    upstream: Upstream
    upstream_ca: Path
    cafile: Path  # upstream CA + mitmproxy CA
    confdir: Path
    src: Path  # the copy of keyswap's code that every keyswap proxy runs
    proxies: dict[str, Proxy] = field(default_factory=dict)
    targets: dict[str, Target] = field(default_factory=dict)

    @classmethod
    @contextmanager
    def open(cls, workdir: Path, workers: int) -> Iterator[Lab]:
        with ExitStack() as stack:
            ca = trustme.CA()
            cert = ca.issue_cert("api.anthropic.com", "localhost", "127.0.0.1")
            upstream_ca, cert_pem, key_pem = (
                workdir / n for n in ("ca.pem", "cert.pem", "key.pem")
            )
            ca.cert_pem.write_to_path(str(upstream_ca))
            cert.cert_chain_pems[0].write_to_path(str(cert_pem))
            cert.private_key_pem.write_to_path(str(key_pem))
            confdir = workdir / "mitmproxy"
            mitm_ca = make_mitmproxy_ca(confdir)
            cafile = workdir / "trust.pem"
            cafile.write_bytes(upstream_ca.read_bytes() + mitm_ca.read_bytes())
            clients = Clients(workers)
            stack.callback(clients.close)
            upstream = Upstream(cert_pem, key_pem)
            stack.callback(upstream.stop)
            src = snapshot(workdir / "src")
            lab = cls(workdir, stack, clients, upstream, upstream_ca, cafile, confdir, src)
            lab.target("direct", None, REAL_KEY)
            lab.target("direct-429", None, "rl-bench")
            yield lab

    def start_proxy(self, name: str, user: User | None = None, *args: str) -> Proxy:
        proxy = Proxy(name, self.workdir, self.upstream_ca, user, args, self.confdir)
        self.stack.callback(proxy.stop)
        self.proxies[name] = proxy
        return proxy

    def target(self, name: str, proxy: Proxy | None, key: str) -> Target:
        address = proxy.address if proxy is not None else None
        t = Target(name, self.upstream.address, str(self.cafile), key, address)
        self.targets[name] = t
        return t

    def user(
        self,
        name: str,
        config_extra: str = "",
        token_url: str = "",
        store: dict[str, str] | None = None,
    ) -> User:
        url = token_url or "http://127.0.0.1:9/token"  # never called unless a refresh is due
        config = anthropic_config(self.upstream.port, url, config_extra)
        user = User.make(self.workdir / name, config, self.src)
        if store is not None:
            user.store = store
        return user

    def run(self, jobs: list[Job], proxy: Proxy | None = None) -> tuple[Result, float]:
        """Run `jobs`; and the CPU seconds `proxy` used from when the clients had their
        connections open (connection setup is not measured) to the end."""
        before: list[float] = []
        r = self.clients.run(jobs, lambda: before.append(proxy.cpu_seconds()) if proxy else None)
        return r, (proxy.cpu_seconds() - before[0] if proxy and before else 0.0)


# -- 1. small JSON, keep-alive --------------------------------------------------------------


@dataclass
class Cell:
    """One path at one concurrency, pooled over rounds."""

    latencies: list[float] = field(default_factory=list)
    window: float = 0.0
    counted: int = 0
    sent: int = 0
    cpu: float = 0.0  # proxy CPU seconds while this cell ran
    errors: int = 0
    non_200: int = 0

    def add(self, r: Result, cpu: float) -> None:
        self.latencies += r.latencies
        self.window += r.window
        self.counted += r.completed
        self.sent += r.sent
        self.cpu += cpu
        self.errors += sum(r.errors.values())
        self.non_200 += sum(n for s, n in r.statuses.items() if s != 200)

    @property
    def p50(self) -> float:
        return percentile(self.latencies, 50) * 1000

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 99) * 1000

    @property
    def rps(self) -> float:
        return self.counted / self.window if self.window else float("nan")

    @property
    def cpu_ms(self) -> float:
        return self.cpu / self.sent * 1000 if self.sent else float("nan")


def warm_up(lab: Lab, names: list[str], seconds: float) -> None:
    """Imports, certificates, connection pools: all made before anything is measured."""
    for name in names:
        lab.clients.run(lab.clients.split("json", lab.targets[name], 8, duration=seconds))


def keepalive_json(
    lab: Lab,
    concurrency: tuple[int, ...],
    rounds: int,
    seconds: float,
    warmup: float,
    paths: tuple[str, ...] = PATHS,
) -> dict[tuple[str, int], Cell]:
    """Closed-loop small JSON requests; the paths take turns, in a different order each
    round, so a drift in the machine's speed does not favour one of them."""
    cells = {(p, c): Cell() for p in paths for c in concurrency}
    for r in range(rounds):
        for c in concurrency:
            order = paths[r % len(paths) :] + paths[: r % len(paths)]
            for path in order:
                jobs = lab.clients.split(
                    "json", lab.targets[path], c, duration=seconds + warmup, warmup=warmup
                )
                cells[path, c].add(*lab.run(jobs, lab.proxies.get(path)))
    return cells


# -- 2. SSE ----------------------------------------------------------------------------------


@dataclass
class Streams:
    ttfb: list[float]
    gaps: list[float]
    errors: int
    cpu: float = 0.0  # proxy CPU seconds while they ran (0 for no proxy)
    count: int = 0  # streams answered

    @property
    def ttfb_p50(self) -> float:
        return percentile(self.ttfb, 50) * 1000

    @property
    def gap_p50(self) -> float:
        return percentile(self.gaps, 50) * 1000

    @property
    def gap_p99(self) -> float:
        return percentile(self.gaps, 99) * 1000

    @property
    def cpu_ms(self) -> float:
        return self.cpu / self.count * 1000 if self.count else float("nan")


def sse(lab: Lab, name: str, streams: int, events: int, gap_ms: int = 50) -> Streams:
    """`streams` SSE responses one after another on one keep-alive connection."""
    job = Job("sse", lab.targets[name], count=streams, events=events, gap_ms=gap_ms)
    r, cpu = lab.run([job], lab.proxies.get(name))
    return Streams(r.ttfb, r.gaps, sum(r.errors.values()), cpu, r.sent)


def round_trip_429(lab: Lab, count: int) -> float:
    """p50 ms of one 429 answer, client straight to the upstream on a kept-alive connection."""
    r = lab.clients.run([Job("json", lab.targets["direct-429"], count=count)])
    assert set(r.statuses) == {429}, r.statuses
    return percentile(r.latencies, 50) * 1000


# -- 3. refresh stampede -----------------------------------------------------------------------


@dataclass
class Stampede:
    proxies: int
    requests: int
    refreshes: int
    statuses: dict[int, int]
    errors: int


def stampede(lab: Lab, per_proxy: int) -> tuple[Stampede, Stampede]:
    """`per_proxy` requests at once on an expired token, through one keyswap and then through
    two keyswaps sharing one store: how many refreshes the OAuth server saw (must be 1)."""
    from tests.fakes.oauth import CLIENTS, PATHS, FakeOAuth

    oauth = FakeOAuth().start()
    lab.stack.callback(oauth.stop)
    token_url = oauth.base_url + PATHS["anthropic"]["token"]
    scope = " ".join(CLIENTS["anthropic"].scopes)

    def expired_login(user: User) -> None:
        access, refresh = f"dead-{time.time_ns()}", f"sk-ant-ort01-bench-{time.time_ns()}"
        with oauth._lock:  # as if it had issued them: a refresh token it will honour once
            oauth._tokens.add("anthropic", access, -60)
            oauth._tokens.link("anthropic", refresh, access, scope)
        user.save("default", access, refresh, time.time() - 60)

    runs: list[Stampede] = []
    users = [
        lab.user("stampede-1", token_url=token_url),
        lab.user("stampede-2", token_url=token_url),
    ]
    for user in users:
        expired_login(user)
    # Start all three proxies at once: startup is the slow part.
    groups = [
        [lab.start_proxy("stampede-1", users[0])],
        [lab.start_proxy(f"stampede-2{s}", users[1]) for s in "ab"],
    ]
    for group in groups:
        for proxy in group:
            proxy.wait()
    for group in groups:
        before = oauth.count("anthropic", "refresh")
        jobs = [
            Job("burst", lab.target(p.name, p, "oauth:anthropic"), connections=per_proxy)
            for p in group
        ]
        r = lab.clients.run(jobs)
        refreshes = oauth.count("anthropic", "refresh") - before
        runs.append(
            Stampede(
                len(group),
                per_proxy * len(group),
                refreshes,
                dict(r.statuses),
                sum(r.errors.values()),
            )
        )
        for p in group:
            p.stop()
    return runs[0], runs[1]


# -- 4. memory ---------------------------------------------------------------------------------


@dataclass
class Memory:
    warm: int  # bytes, after warm-up
    half: int  # after the first half of the requests
    after: int  # after all of them
    requests: int  # answered between the first and the last reading
    errors: int

    @property
    def growth(self) -> int:
        return self.after - self.warm

    @property
    def second_half(self) -> int:
        """Growth over the second half: a one-time rise (caches, pools) is over by then,
        a leak is not."""
        return self.after - self.half


def memory(
    lab: Lab, names: list[str], requests: int, connections: int, limit: float
) -> dict[str, Memory]:
    """RSS of each proxy after warm-up, after `requests` / 2 more and after `requests` more
    (or as many as `limit` seconds allow); the proxies are loaded at once, each by its own
    client process."""
    readings: list[dict[str, int]] = [{n: lab.proxies[n].rss() for n in names}]
    sent = dict.fromkeys(names, 0)
    errors = dict.fromkeys(names, 0)
    for _ in range(2):
        jobs = [
            Job("json", lab.targets[n], connections, duration=limit / 2, count=requests // 2)
            for n in names
        ]
        assert len(jobs) <= lab.clients.size
        for n, r in zip(names, lab.clients.run_each(jobs), strict=True):
            sent[n] += r.sent
            errors[n] += sum(r.errors.values()) + sum(c for s, c in r.statuses.items() if s != 200)
        readings.append({n: lab.proxies[n].rss() for n in names})
    warm, half, after = readings
    return {n: Memory(warm[n], half[n], after[n], sent[n], errors[n]) for n in names}


# -- 4b. memory per concurrent connection, and after a burst ---------------------------------


@dataclass
class Concurrent:
    """RSS of one proxy around `connections` SSE streams held open at once."""

    connections: int
    idle: int  # bytes, just before the clients connected
    peak: int  # the highest reading while the streams were open
    streams: int  # streams that completed with every event
    errors: int

    @property
    def per_connection(self) -> float:
        """Bytes each open stream (client connection and all it holds) added."""
        return (self.peak - self.idle) / self.connections


def concurrent_streams(
    lab: Lab, name: str, connections: int, events: int = 5, gap_ms: int = 800
) -> Concurrent:
    """`connections` SSE streams through proxy `name`, all started at one instant and each
    held open for (events - 1) × gap_ms, while its RSS is read every 20 ms. The first time a
    proxy sees that many connections, so whatever they make (pools, buffers) is counted."""
    proxy = lab.proxies[name]
    idle = proxy.rss()
    peak = [idle]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], proxy.rss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        jobs = [
            replace(j, count=1, events=events, gap_ms=gap_ms)
            for j in lab.clients.split("sse", lab.targets[name], connections)
        ]
        r = lab.clients.run(jobs)
    finally:
        stop.set()
        sampler.join()
    complete = r.statuses.get(200, 0) - sum(
        n for e, n in r.errors.items() if e.startswith("stream:")
    )
    return Concurrent(connections, idle, peak[0], complete, sum(r.errors.values()))


@dataclass
class Settling:
    """RSS of one proxy before a burst, at its height, and in the minute after."""

    warm: int  # bytes, after warm-up, before the burst
    burst: Concurrent
    after: list[tuple[float, int]]  # (seconds after the burst ended, bytes)

    @property
    def last(self) -> int:
        return self.after[-1][1]


def settling(
    lab: Lab, names: list[str], connections: int, seconds: float, every: float = 10.0
) -> dict[str, Settling]:
    """A burst of `connections` concurrent streams through each proxy in turn, then its RSS
    every `every` seconds until `seconds` after its own burst, nothing else sent to it."""
    warm = {n: lab.proxies[n].rss() for n in names}
    bursts: dict[str, Concurrent] = {}
    ended: dict[str, float] = {}
    for n in names:
        bursts[n] = concurrent_streams(lab, n, connections)
        ended[n] = time.monotonic()
    after: dict[str, list[tuple[float, int]]] = {n: [] for n in names}
    steps = range(1, int(seconds / every) + 1)
    for at, n in sorted((ended[n] + k * every, n) for n in names for k in steps):
        time.sleep(max(0.0, at - time.monotonic()))
        after[n].append((time.monotonic() - ended[n], lab.proxies[n].rss()))
    return {n: Settling(warm[n], bursts[n], after[n]) for n in names}


# -- 5. new connections ------------------------------------------------------------------------


def fresh_connections(lab: Lab, seconds: float) -> dict[str, Cell]:
    """A new TCP connection, CONNECT and TLS handshake for every request, one at a time."""
    cells: dict[str, Cell] = {}
    for path in PATHS:
        job = Job("fresh", lab.targets[path], duration=seconds + 0.2, warmup=0.2)
        cells[path] = Cell()
        cells[path].add(*lab.run([job], lab.proxies.get(path)))
    return cells
