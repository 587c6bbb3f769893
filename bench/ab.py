"""Two versions of keyswap side by side in one lab: the same streams through each, the
paths taking turns, so that the difference is not the spread between two runs.

    git worktree add --detach /tmp/old <commit>
    python -m bench.ab /tmp/old [rounds]

Rows: one-event SSE time to first event and proxy CPU per stream (with bare mitmdump
streaming every answer beside them), and a retried stream's delay (bucket a answers 429,
then b) against the same stream pinned to b.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from .__main__ import STREAMING
from .procs import User
from .scenarios import REAL_KEY, Lab, anthropic_config, sse, warm_up

_TWO = '[proxy]\nstrategy = "failover"\n\n[providers.anthropic]\nbuckets = ["a", "b"]\n'
_NO_REFRESH = "http://127.0.0.1:9/token"  # the tokens are fresh: never called


def _snapshot(checkout: Path, dest: Path) -> Path:
    for package in ("addon", "login"):
        shutil.copytree(
            checkout / package, dest / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    return dest


def compare(
    other: Path, rounds: int, streams: int = 30
) -> list[tuple[str, float, float, float | None]]:
    work = Path(tempfile.mkdtemp(prefix="keyswap-ab-"))
    try:
        with Lab.open(work, workers=2) as lab:
            sources = {"this": lab.src, "other": _snapshot(other, work / "other")}
            bare = lab.start_proxy("bare-stream", None, *STREAMING)
            bare.wait()
            lab.target("bare-stream", bare, REAL_KEY)
            for name, src in sources.items():
                user = User.make(
                    work / name, anthropic_config(lab.upstream.port, _NO_REFRESH, _TWO), src
                )
                user.save("a", f"rl-{time.time_ns()}", "unused", time.time() + 36_000)  # 429
                user.save("b", f"ok-{time.time_ns()}", "unused", time.time() + 36_000)
                proxy = lab.start_proxy(name, user)
                proxy.wait()
                for path, key in (("retry", "oauth:anthropic"), ("pinned", "oauth:anthropic:b")):
                    lab.target(f"{name}-{path}", proxy, key)
                    lab.proxies[f"{name}-{path}"] = proxy  # so that its CPU is measured
            names = ["bare-stream", "this-pinned", "other-pinned", "this-retry", "other-retry"]
            warm_up(lab, names, 1.0)
            ttfb: dict[str, list[float]] = {n: [] for n in names}
            cpu = dict.fromkeys(names, 0.0)
            count = dict.fromkeys(names, 0)
            for r in range(rounds):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    s = sse(lab, name, streams, 1)
                    ttfb[name] += s.ttfb
                    cpu[name] += s.cpu
                    count[name] += s.count
    finally:
        shutil.rmtree(work, ignore_errors=True)
    p50 = {n: statistics.median(v) * 1000 for n, v in ttfb.items()}
    per = {n: cpu[n] / max(count[n], 1) * 1000 for n in names}
    delay = {v: p50[f"{v}-retry"] - p50[f"{v}-pinned"] for v in sources}
    return [
        (
            "SSE: TTFB p50 ms (first event)",
            p50["this-pinned"],
            p50["other-pinned"],
            p50["bare-stream"],
        ),
        (
            "SSE: proxy CPU ms per one-event stream",
            per["this-pinned"],
            per["other-pinned"],
            per["bare-stream"],
        ),
        (
            "SSE, 2 buckets: the retry's delay ms (429 → b, less pinned to b)",
            delay["this"],
            delay["other"],
            None,
        ),
    ]


def table(rows: list[tuple[str, float, float, float | None]], other: Path) -> str:
    lines = [
        f"| measurement | this checkout | other ({other}) | bare-stream | this/bare | other/bare |",
        "|---|---|---|---|---|---|",
    ]
    for name, this, that, bare in rows:
        ratios = f"{this / bare:.2f}× | {that / bare:.2f}×" if bare else " | "
        bare_text = f"{bare:.2f}" if bare is not None else ""
        lines.append(f"| {name} | {this:.2f} | {that:.2f} | {bare_text} | {ratios} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    other = Path(argv[0])
    print(table(compare(other, int(argv[1]) if len(argv) > 1 else 12), other))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
