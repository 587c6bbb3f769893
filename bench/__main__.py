"""`python -m bench`: what keyswap costs, against direct and bare mitmdump. See README.md."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from . import scheduling
from .procs import User, revision
from .profile import profile
from .report import MIB, CpuMeter, Row, load_average, machine, table
from .scenarios import (
    REAL_KEY,
    Cell,
    Concurrent,
    Lab,
    Memory,
    Settling,
    Stampede,
    Streams,
    concurrent_streams,
    fresh_connections,
    keepalive_json,
    memory,
    round_trip_429,
    settling,
    sse,
    stampede,
    warm_up,
)

# bare-stream: bare mitmdump that streams every answer (see bench/stream_responses.py).
STREAMING = ("-s", str(Path(__file__).resolve().parent / "stream_responses.py"))

# Targets of issue 14.7, in ms or MiB.
OWN_CPU_MS = 0.2  # keyswap's CPU per request on top of bare mitmdump's
RETRY_MS = 0.3  # a retried stream's delay, beyond the 429's own round trip
MIB_PER_CONNECTION = 0.25  # RSS per concurrent open stream
SETTLED = 0.10  # RSS a minute after a burst, above the warm baseline
REDIS_MS = 0.1  # issue 18: proxy CPU per request with the Redis store, over the file store


@dataclass(frozen=True)
class Settings:
    concurrency: tuple[int, ...] = (1, 8, 64)
    rounds: int = 4  # of every JSON cell, paths interleaved
    seconds: float = 1.5  # per JSON cell and round, after `warmup`
    warmup: float = 0.5
    streams: int = 8  # SSE responses per path
    events: int = 6  # per SSE response, 50 ms apart
    ttfb_rounds: int = 4  # then this many rounds of ...
    ttfb_streams: int = 10  # ... one-event SSE responses per path, for time to first event
    retry_rounds: int = 4  # and this many rounds of ...
    retry_streams: int = 50  # ... one-event streams through the retry proxy, pinned or not
    requests: int = 10_000  # for the memory measurement ...
    requests_limit: float = 140.0  # ... or as many as this many seconds allow
    stampede: int = 100  # concurrent requests per proxy on an expired token
    fresh_seconds: float = 3.0
    concurrent: int = 64  # SSE streams open at once, for RSS per connection

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            rounds=1,
            seconds=1.5,
            warmup=0.5,
            streams=4,
            ttfb_rounds=1,
            retry_rounds=2,
            retry_streams=20,
            requests=1000,
            fresh_seconds=1.0,
            concurrent=32,
        )


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _sigterm(*_: object) -> NoReturn:
    raise SystemExit(143)  # so that every started process is stopped on the way out


def _keyswap_user(lab: Lab, name: str = "keyswap", store: dict[str, str] | None = None) -> User:
    user = lab.user(name, store=store)
    user.save("default", f"ok-{time.time_ns()}", "unused", time.time() + 36_000)
    return user


def run_profile(workdir: Path) -> str:
    """Only the profiles, under keep-alive JSON at c=8: bare mitmdump and keyswap."""
    code = revision()  # of the copy the proxies run, taken next
    # py-spy attaches with ptrace, which keyswap otherwise refuses (login/hardening.py).
    os.environ["KEYSWAP_DUMPABLE"] = "1"
    with Lab.open(workdir, workers=2) as lab:
        user = _keyswap_user(lab)
        proxies = [
            lab.start_proxy("bare"),
            lab.start_proxy("keyswap", user),
            lab.start_proxy("bare-stream", None, *STREAMING),
        ]
        for p in proxies:
            p.wait()
            lab.target(p.name, p, "oauth:anthropic" if p.name == "keyswap" else REAL_KEY)
        warm_up(lab, [p.name for p in proxies], 1.5)
        out = []
        for p in proxies[:2]:
            _log(f"profiling {p.name}")
            out.append(profile(lab.clients, p, lab.targets[p.name], workdir).summary())
        # Streams still take the relay: their own profile, against bare-stream.
        for p in proxies[2], proxies[1]:
            _log(f"profiling {p.name} with SSE")
            out.append(profile(lab.clients, p, lab.targets[p.name], workdir, streams=150).summary())
    return f"Machine: {machine()}\nkeyswap code: {code}\n\n" + "\n\n".join(out) + "\n"


def run(s: Settings, workdir: Path) -> str:
    started = time.monotonic()
    load_before = load_average()
    meter = CpuMeter()
    code = revision()  # of the copy the proxies run, taken next
    with Lab.open(workdir, workers=2) as lab:
        ok = _keyswap_user(lab)
        two = lab.user(
            "retry",
            '[proxy]\nstrategy = "failover"\n\n[providers.anthropic]\nbuckets = ["a", "b"]\n',
        )
        two.save("a", f"rl-{time.time_ns()}", "unused", time.time() + 36_000)  # always 429
        two.save("b", f"ok-{time.time_ns()}", "unused", time.time() + 36_000)
        proxies = [
            lab.start_proxy("bare"),
            lab.start_proxy("bare-stream", None, *STREAMING),
            lab.start_proxy("keyswap", ok),
            lab.start_proxy("retry", two),
        ]
        shared = _redis_user(lab, workdir)
        if shared is not None:
            proxies.append(lab.start_proxy("keyswap-redis", shared))
        for p in proxies:
            p.wait()
        bare, bare_stream, keyswap, retry = proxies[:4]
        lab.target("bare", bare, REAL_KEY)
        lab.target("bare-stream", bare_stream, REAL_KEY)
        lab.target("keyswap", keyswap, "oauth:anthropic")
        lab.target("retry", retry, "oauth:anthropic")  # bucket a answers 429, then b
        lab.target("retry-pinned", retry, "oauth:anthropic:b")  # the same, without the 429
        _log(f"proxies up; warming up (workdir {workdir})")
        warm_up(lab, ["direct", "bare", "keyswap", "bare-stream", "retry"], 1.0)

        _log(f"memory: {s.requests} requests through bare and keyswap")
        mem = memory(lab, ["bare", "keyswap"], s.requests, 8, s.requests_limit)
        # Before anything else opens many connections, so that this is the first time.
        _log(f"RSS per connection: {s.concurrent} streams at once")
        conc = {n: concurrent_streams(lab, n, s.concurrent) for n in ("bare-stream", "keyswap")}
        _log("keep-alive JSON")
        cells = keepalive_json(lab, s.concurrency, s.rounds, s.seconds, s.warmup)
        _log("SSE")
        names = ["direct", "bare-stream", "keyswap", "retry-pinned", "retry"]
        before = lab.upstream.stats(lab.cafile).get("429", 0)
        streams = {name: sse(lab, name, s.streams, s.events) for name in names}
        # More first-event samples, from one-event streams, the paths taking turns; and the
        # proxies' CPU per stream, from these alone (no idle time between events in it).
        short = {name: Streams([], [], 0) for name in names}
        for r in range(s.ttfb_rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                few = sse(lab, name, s.ttfb_streams, 1)
                streams[name].ttfb.extend(few.ttfb)
                short[name].cpu += few.cpu
                short[name].count += few.count
        # The retry's delay is a difference of two TTFBs a few ms each that move by ~1 ms:
        # many more samples of those two, the paths taking turns.
        for r in range(s.retry_rounds):
            for name in ("retry", "retry-pinned")[:: 1 if r % 2 else -1]:
                streams[name].ttfb.extend(sse(lab, name, s.retry_streams, 1).ttfb)
        limited = lab.upstream.stats(lab.cafile).get("429", 0) - before
        rtt_429 = round_trip_429(lab, 200)
        _log("new connections")
        fresh = fresh_connections(lab, s.fresh_seconds)
        _log(f"refresh stampede: {s.stampede} requests per proxy")
        one, two_procs = stampede(lab, s.stampede)
        rows = _rows(s, cells, streams, short, (rtt_429, limited), one, two_procs, mem, fresh, conc)
        if shared is not None:
            lab.target("keyswap-redis", lab.proxies["keyswap-redis"], "oauth:anthropic")
            _log("keep-alive JSON at c=8: keyswap on files and on Redis, taking turns")
            pair = ("keyswap", "keyswap-redis")
            store_cells = keepalive_json(lab, (8,), s.rounds, s.seconds, s.warmup, pair)
            rows.append(_redis_row(store_cells["keyswap", 8], store_cells["keyswap-redis", 8]))
    # In this process, with the proxies stopped: the only code that differs between the
    # strategies is admission, so it is measured alone (see bench/scheduling.py).
    _log("scheduling: admission under sticky and round-robin, the affinity map")
    rows += scheduling.rows()
    elapsed = time.monotonic() - started
    return (
        f"Machine: {machine()}\n"
        f"keyswap code: {code}\n"
        f"Run took {elapsed:.0f} s; load average before / after: {load_before} / "
        f"{load_average()}; {meter.others()}\n\n{table(rows)}\n"
    )


def _rows(
    s: Settings,
    cells: dict[tuple[str, int], Cell],
    streams: dict[str, Streams],
    short: dict[str, Streams],  # the one-event streams alone
    retries: tuple[float, int],  # one 429's round trip (ms), 429s the upstream sent
    one: Stampede,
    two: Stampede,
    mem: dict[str, Memory],
    fresh: dict[str, Cell],
    conc: dict[str, Concurrent],
) -> list[Row]:
    rows: list[Row] = []
    for c in s.concurrency:
        d, b, k = (cells[p, c] for p in ("direct", "bare", "keyswap"))
        errors = sum(x.errors + x.non_200 for x in (d, b, k))
        note = f" ({errors} errors)" if errors else ""
        own = k.cpu_ms - b.cpu_ms
        rows += [
            Row(
                f"JSON c={c}: p50 ms{note}",
                d.p50,
                b.p50,
                k.p50,
                "≤ 1.05× bare",
                k.p50 <= 1.05 * b.p50,
            ),
            Row(f"JSON c={c}: p99 ms", d.p99, b.p99, k.p99, "≤ 1.10× bare", k.p99 <= 1.10 * b.p99),
            Row(f"JSON c={c}: requests/s", d.rps, b.rps, k.rps),
            Row(f"JSON c={c}: proxy CPU ms per request", None, b.cpu_ms, k.cpu_ms),
            Row(
                f"JSON c={c}: keyswap's own CPU ms per request (keyswap − bare)",
                None,
                None,
                own,
                f"≤ {OWN_CPU_MS}",
                own <= OWN_CPU_MS,
                ratios=False,
            ),
        ]
    sd, sb, sk = streams["direct"], streams["bare-stream"], streams["keyswap"]
    rows += [
        Row(
            "SSE: TTFB p50 ms (first event)",
            sd.ttfb_p50,
            sb.ttfb_p50,
            sk.ttfb_p50,
            "≤ 1.05× bare",
            sk.ttfb_p50 <= 1.05 * sb.ttfb_p50,
        ),
        Row(
            "SSE: event gap p50 ms",
            sd.gap_p50,
            sb.gap_p50,
            sk.gap_p50,
            "≈ 50",
            45 <= sk.gap_p50 <= 55,
        ),
        Row("SSE: event gap p99 ms", sd.gap_p99, sb.gap_p99, sk.gap_p99, "≤ 60", sk.gap_p99 <= 60),
    ]
    cb, ck = short["bare-stream"].cpu_ms, short["keyswap"].cpu_ms
    rows += [
        Row("SSE: proxy CPU ms per one-event stream", None, cb, ck),
        Row(
            "SSE: keyswap's own CPU ms per stream (keyswap − bare)",
            None,
            None,
            ck - cb,
            f"≤ {OWN_CPU_MS}",
            ck - cb <= OWN_CPU_MS,
            ratios=False,
        ),
    ]
    pinned, retried = streams["retry-pinned"], streams["retry"]
    rtt_429, limited = retries
    limit = pinned.ttfb_p50 + rtt_429
    rows += [
        Row("SSE: 429 round trip p50 ms (direct)", rtt_429, ratios=False),
        Row(
            "SSE, 2 buckets: TTFB p50 ms, no 429 (bucket b pinned)",
            None,
            None,
            pinned.ttfb_p50,
            ratios=False,
        ),
        Row(
            f"SSE, 2 buckets: TTFB p50 ms, a answers 429 → b (upstream sent {limited}× 429)",
            None,
            None,
            retried.ttfb_p50,
            f"≤ {limit:.1f} (no-429 + 429 RTT)",
            retried.ttfb_p50 <= limit,
            ratios=False,
        ),
        Row(
            "SSE, 2 buckets: the retry's delay ms (TTFB after a 429 − TTFB pinned)",
            None,
            None,
            retried.ttfb_p50 - pinned.ttfb_p50,
            f"≤ {rtt_429 + RETRY_MS:.2f} (429 RTT + {RETRY_MS})",
            retried.ttfb_p50 - pinned.ttfb_p50 <= rtt_429 + RETRY_MS,
            ratios=False,
        ),
        Row(
            "SSE, 2 buckets: event gap p50 / p99 ms after the retry",
            None,
            None,
            f"{retried.gap_p50:.1f} / {retried.gap_p99:.1f}",
            "≈ 50 / ≤ 60",
            45 <= retried.gap_p50 <= 55 and retried.gap_p99 <= 60,
            ratios=False,
        ),
    ]
    sse_errors = {n: x.errors for n, x in streams.items() if x.errors}
    if sse_errors:
        rows.append(Row(f"SSE: streams with errors {sse_errors}", ratios=False))
    for st in (one, two):
        all_ok = st.statuses == {200: st.requests} and not st.errors
        what = "1 proxy" if st.proxies == 1 else f"{st.proxies} proxies sharing the store"
        answers = ", ".join(f"{n}× {code}" for code, n in sorted(st.statuses.items()))
        rows.append(
            Row(
                f"Refresh stampede, {st.requests} requests, {what}: refresh calls",
                None,
                None,
                f"{st.refreshes} ({answers})",
                "exactly 1, all 200",
                st.refreshes == 1 and all_ok,
                ratios=False,
            )
        )
    mb, mk = mem["bare"], mem["keyswap"]
    count = f"{mb.requests:,} / {mk.requests:,}"
    count = count if mb.requests != mk.requests else f"{mk.requests:,}"
    failed = f" ({mb.errors + mk.errors} errors)" if mb.errors + mk.errors else ""
    rows += [
        Row("RSS MiB after warm-up", None, mb.warm / MIB, mk.warm / MIB),
        Row("RSS MiB after half of the requests", None, mb.half / MIB, mk.half / MIB),
        Row(f"RSS MiB after +{count} requests{failed}", None, mb.after / MIB, mk.after / MIB),
        Row(
            "RSS growth MiB over the second half",
            None,
            mb.second_half / MIB,
            mk.second_half / MIB,
            "flat (≤ 2% of warm)",
            mk.second_half <= 0.02 * mk.warm,
            ratios=False,
        ),
        *_per_connection(conc["bare-stream"], conc["keyswap"]),
    ]
    d, b, k = fresh["direct"], fresh["bare"], fresh["keyswap"]
    rows += [
        Row("New connection per request: p50 ms", d.p50, b.p50, k.p50),
        Row("New connection per request: p99 ms", d.p99, b.p99, k.p99),
        Row("New connection per request: proxy CPU ms", None, b.cpu_ms, k.cpu_ms),
    ]
    return rows


def _redis_user(lab: Lab, workdir: Path) -> User | None:
    """A keyswap user whose logins are in a Redis of its own (None without redis-server)."""
    from login.store.redis_store import new_key
    from tests.redis_server import REDIS_SERVER, RedisServer

    if REDIS_SERVER is None:
        _log("no redis-server: the Redis store's row is left out")
        return None
    server = RedisServer(workdir)
    server.start()
    lab.stack.callback(server.stop)
    store = {"KEYSWAP_STORE": server.url, "KEYSWAP_STORE_KEY": new_key()}
    return _keyswap_user(lab, "keyswap-redis", store)


def _redis_row(files: Cell, shared: Cell) -> Row:
    extra = shared.cpu_ms - files.cpu_ms
    return Row(
        "JSON c=8: proxy CPU ms per request, logins in Redis (keyswap) vs files (bare column)",
        None,
        files.cpu_ms,
        shared.cpu_ms,
        f"≤ +{REDIS_MS} ms",
        extra <= REDIS_MS,
    )


def _per_connection(bare: Concurrent, keyswap: Concurrent) -> list[Row]:
    n = keyswap.connections
    done = f"{bare.streams} / {keyswap.streams}" if bare.streams != keyswap.streams else n
    per = keyswap.per_connection / MIB
    return [
        Row(
            f"RSS MiB idle, then with {n} SSE streams open ({done} complete)",
            None,
            f"{bare.idle / MIB:.1f} → {bare.peak / MIB:.1f}",
            f"{keyswap.idle / MIB:.1f} → {keyswap.peak / MIB:.1f}",
        ),
        Row(
            f"RSS MiB per concurrent connection (c={n}, bare = bare-stream)",
            None,
            bare.per_connection / MIB,
            per,
            f"≤ {MIB_PER_CONNECTION}",
            per <= MIB_PER_CONNECTION,
        ),
    ]


def run_burst(workdir: Path, connections: int = 256, seconds: float = 60.0) -> str:
    """Only the burst: `connections` SSE streams at once through fresh bare-stream and keyswap
    proxies, then a minute with nothing to do; their RSS against the warm baseline."""
    started = time.monotonic()
    meter = CpuMeter()
    code = revision()
    with Lab.open(workdir, workers=2) as lab:
        user = _keyswap_user(lab)
        proxies = [
            lab.start_proxy("bare-stream", None, *STREAMING),
            lab.start_proxy("keyswap", user),
        ]
        for p in proxies:
            p.wait()
        lab.target("bare-stream", proxies[0], REAL_KEY)
        lab.target("keyswap", proxies[1], "oauth:anthropic")
        names = [p.name for p in proxies]
        _log("warming up")
        warm_up(lab, names, 2.0)
        for name in names:  # the stream path too, as the table's run does
            concurrent_streams(lab, name, 8, events=2, gap_ms=50)
        time.sleep(2.0)
        _log(f"{connections} streams at once through each proxy, then {seconds:.0f} s idle")
        settled = settling(lab, names, connections, seconds)
    rows = _burst_rows(settled["bare-stream"], settled["keyswap"], seconds)
    return (
        f"Machine: {machine()}\nkeyswap code: {code}\n"
        f"Run took {time.monotonic() - started:.0f} s; {meter.others()}\n\n{table(rows)}\n"
    )


def _burst_rows(bare: Settling, keyswap: Settling, seconds: float) -> list[Row]:
    rows = _per_connection(bare.burst, keyswap.burst)
    rows.append(Row("RSS MiB warm, before the burst", None, bare.warm / MIB, keyswap.warm / MIB))
    for (t, b), (_, k) in zip(bare.after, keyswap.after, strict=True):
        rows.append(Row(f"RSS MiB {t:.0f} s after the burst", None, b / MIB, k / MIB))
    over = keyswap.last / keyswap.warm - 1
    rows.append(
        Row(
            f"RSS {seconds:.0f} s after the burst, above warm",
            None,
            f"{bare.last / bare.warm - 1:+.0%}",
            f"{over:+.0%}",
            f"≤ +{SETTLED:.0%}",
            over <= SETTLED,
            ratios=False,
        )
    )
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (~1 min)")
    parser.add_argument("--out", type=Path, help="also write the report (Markdown) here")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (proxy logs)")
    parser.add_argument(
        "--profile", action="store_true", help="instead: py-spy profiles of bare and keyswap"
    )
    parser.add_argument(
        "--burst",
        action="store_true",
        help="instead: RSS per connection at c=256 and a minute after that burst (~2 min)",
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    settings = Settings.quick() if args.quick else Settings()
    workdir = Path(tempfile.mkdtemp(prefix="keyswap-bench-"))
    try:
        if args.profile:
            report = run_profile(workdir)
        elif args.burst:
            report = run_burst(workdir)
        else:
            report = run(settings, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(report)
    if args.out:
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
