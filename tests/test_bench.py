"""The benchmark's harness (bench/), reused at a small scale for what it measures that must
hold whatever the timings: one refresh per stampede, streams that are not bunched, a 429
retried on the next bucket, every answer a 200. It also keeps the harness from rotting,
since CI does not run the benchmark itself."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.load import Job
from bench.procs import Proxy
from bench.scenarios import Lab, settling, stampede


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab.open(tmp_path_factory.mktemp("bench"), workers=2) as lab:
        yield lab


def _keyswap(lab: Lab, name: str, buckets: dict[str, str], extra: str = "") -> Proxy:
    user = lab.user(name, extra)
    for bucket, access in buckets.items():
        user.save(bucket, f"{access}-{time.time_ns()}", "unused", time.time() + 36_000)
    proxy = lab.start_proxy(name, user)
    proxy.wait()
    return proxy


def test_a_refresh_stampede_refreshes_exactly_once(lab: Lab) -> None:
    one, two = stampede(lab, per_proxy=40)
    assert (one.proxies, two.proxies) == (1, 2)
    for run in (one, two):
        assert run.refreshes == 1, run
        assert run.statuses == {200: run.requests} and run.errors == 0, run


def test_keep_alive_json_and_streams_through_keyswap(lab: Lab) -> None:
    proxy = _keyswap(lab, "keyswap", {"default": "ok"})
    target = lab.target("keyswap", proxy, "oauth:anthropic")
    r, cpu = lab.run([Job("json", target, connections=8, count=200)], proxy)
    assert r.statuses == {200: 200} and not r.errors
    assert cpu > 0  # the proxy did the work, measured from /proc
    r, _ = lab.run([Job("sse", target, count=3, events=5)])
    assert r.statuses == {200: 3} and not r.errors
    assert len(r.ttfb) == 3 and len(r.gaps) == 3 * 4
    assert min(r.gaps) >= 0.03, f"events arrived bunched: {r.gaps}"


def test_a_429_is_retried_on_the_next_bucket_and_still_streams(lab: Lab) -> None:
    extra = '[proxy]\nstrategy = "failover"\n\n[providers.anthropic]\nbuckets = ["a", "b"]\n'
    proxy = _keyswap(lab, "retry", {"a": "rl", "b": "ok"}, extra)  # "rl-" tokens get 429s
    target = lab.target("retry", proxy, "oauth:anthropic")
    before = lab.upstream.stats(lab.cafile).get("429", 0)
    r, _ = lab.run([Job("sse", target, count=3, events=4)])
    assert lab.upstream.stats(lab.cafile).get("429", 0) - before == 3
    assert r.statuses == {200: 3} and not r.errors
    assert min(r.gaps) >= 0.03, f"the retried stream was bunched: {r.gaps}"


def test_scheduling_rows_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scheduling rows of `python -m bench` are measured, judged and bounded."""
    from bench import scheduling
    from bench.report import table

    monkeypatch.setattr(scheduling, "REQUESTS", 200)
    rows = scheduling.rows()
    assert len(rows) == 7
    for row in rows[:3]:
        assert isinstance(row.keyswap, str) and 0 < float(row.keyswap) < 5, row
    full = rows[-1]
    assert isinstance(full.keyswap, str) and full.keyswap.startswith("20,000;"), full
    assert full.met is not None and rows[3].met is not None
    assert "Scheduling: sticky over round-robin" in table(rows)


def test_concurrent_streams_and_the_settling_after_a_burst_are_measured(lab: Lab) -> None:
    """`--burst`'s harness at a small scale: every stream completes while RSS is read."""
    proxy = _keyswap(lab, "burst", {"default": "ok"})
    lab.target("burst", proxy, "oauth:anthropic")
    settled = settling(lab, ["burst"], connections=6, seconds=0.2, every=0.1)["burst"]
    burst = settled.burst
    assert (burst.connections, burst.streams, burst.errors) == (6, 6, 0), burst
    assert burst.peak >= burst.idle > 0 and settled.warm > 0
    assert [round(t, 1) >= 0.1 for t, _ in settled.after] == [True, True]
    assert all(rss > 0 for _, rss in settled.after)


def test_two_checkouts_are_compared_in_one_lab() -> None:
    """`bench.ab` at a small scale, this checkout against itself: every number is measured."""
    from bench import ab

    rows = ab.compare(Path(__file__).resolve().parent.parent, rounds=1, streams=3)
    ttfb, cpu, retry = rows
    _, this, other, bare = ttfb
    assert bare is not None and 0 < bare < 1000
    assert 0 < this < 1000 and 0 < other < 1000, (this, other)
    # CPU is read in clock ticks (10 ms): a few short streams may read 0.
    _, this, other, bare = cpu
    assert bare is not None and 0 <= bare < 1000 and 0 <= this < 1000 and 0 <= other < 1000
    assert -100 < retry[1] < 100 and -100 < retry[2] < 100 and retry[3] is None
    assert "| SSE: TTFB p50 ms" in ab.table(rows, Path("x"))
