"""What sticky scheduling costs, in process: admission of the same requests under `sticky`
and `round-robin` (the only code that differs between them), and the affinity map's memory
over many conversations.

    python -m bench.scheduling    (also part of `python -m bench`'s table)

Each request is a new turn of one of `CONVERSATIONS` conversations (a Messages body of about
6 KB with Claude Code's session id, or without one, so that the first-turn digest is taken),
over 3 buckets; the dispatch records the bucket that served as it does in the proxy.
"""

from __future__ import annotations

import json
import os
import sys
import time
import tracemalloc
from pathlib import Path
from tempfile import TemporaryDirectory

from mitmproxy import http
from mitmproxy.test import tutils

from addon import placeholder
from addon.admission import Admission
from addon.affinity import Affinity
from addon.dispatch import Job
from addon.quota import Quota
from addon.rotation import Rotation
from login.config import load_config

from .procs import rss_bytes
from .report import Row, table

CONVERSATIONS = 1_000
REQUESTS = 20_000
BUCKETS = ["a", "b", "c"]
STICKY_MS = 0.05  # issue 15: sticky's CPU per request over round-robin


def _request(conversation: int, turn: int, session: bool) -> http.Request:
    messages = []
    for t in range(turn + 1):
        messages.append({"role": "user", "content": f"conversation {conversation} turn {t} " * 20})
        messages.append({"role": "assistant", "content": "an answer " * 40})
    body: dict[str, object] = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "system": "You are Claude Code. " * 30,
        "messages": messages[:-1],
    }
    if session:
        user = f"user_{'ab' * 32}_account__session_{conversation:08d}-0000-4000-8000-000000000000"
        body["metadata"] = {"user_id": user}
    req = tutils.treq(
        scheme=b"https",
        host="api.anthropic.com",
        port=443,
        authority=b"api.anthropic.com",
        path=b"/v1/messages",
        method=b"POST",
        headers=http.Headers(),
        content=json.dumps(body).encode(),
    )
    req.headers["x-api-key"] = "oauth:anthropic"
    return req


def admission_ms(strategy: str, session: bool) -> float:
    """CPU ms per admitted request under `strategy`."""
    with TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.toml"
        path.write_text(f'[proxy]\nstrategy = "{strategy}"\n')
        config = load_config(path)
    affinity, quota = Affinity(), Quota()
    admission = Admission(lambda: config, Rotation(), lambda p: BUCKETS, affinity, quota)
    requests = [_request(i % CONVERSATIONS, (i // CONVERSATIONS) % 4, session) for i in range(400)]
    found = [placeholder.find(r) for r in requests]
    start = time.process_time()
    for i in range(REQUESTS):
        job = admission.admit(requests[i % 400], True, found[i % 400])  # type: ignore[arg-type]
        assert isinstance(job, Job)
        if job.conversation and job.held is None:
            affinity.put("anthropic", job.conversation, job.buckets[0])
    return (time.process_time() - start) / REQUESTS * 1000


def affinity_mib(conversations: int) -> float:
    """Memory the map holds for `conversations` live conversations (tracemalloc)."""
    tracemalloc.start()
    affinity = Affinity(size=conversations)
    for i in range(conversations):
        affinity.put("anthropic", f"turn:{i:032x}", BUCKETS[i % 3])
    used, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return used / 2**20


def affinity_bounded(settle: int, more: int) -> tuple[int, float, float]:
    """Entries kept, and RSS growth (MiB) over `settle` conversations beyond the map's bound,
    then over `more` after those: the allocator settles in the first, the second is flat when
    old conversations make room for new ones."""
    affinity = Affinity()
    for i in range(affinity.size):
        affinity.put("anthropic", f"turn:{i:032x}", BUCKETS[i % 3])
    marks = [rss_bytes(os.getpid())]
    start = affinity.size
    for count in (settle, more):
        for i in range(start, start + count):
            affinity.put("anthropic", f"turn:{i:032x}", BUCKETS[i % 3])
        start += count
        marks.append(rss_bytes(os.getpid()))
    return len(affinity), (marks[1] - marks[0]) / 2**20, (marks[2] - marks[1]) / 2**20


def rows() -> list[Row]:
    """The scheduling rows of `python -m bench`'s table."""
    sticky = admission_ms("sticky", session=True)
    digest = admission_ms("sticky", session=False)
    plain = admission_ms("round-robin", session=True)
    bound = Affinity().size
    kept, settling, later = affinity_bounded(100_000, 200_000)
    worst = max(sticky, digest) - plain
    return [
        Row("Scheduling: admission CPU ms per request, round-robin", keyswap=f"{plain:.3f}"),
        Row("Scheduling: … sticky, by Claude Code's session id", keyswap=f"{sticky:.3f}"),
        Row("Scheduling: … sticky, by the first turn's digest", keyswap=f"{digest:.3f}"),
        Row(
            "Scheduling: sticky over round-robin, CPU ms per request (session id / digest)",
            keyswap=f"{sticky - plain:+.3f} / {digest - plain:+.3f}",
            target=f"≤ {STICKY_MS}",
            met=worst <= STICKY_MS,
            ratios=False,
        ),
        Row(
            "Scheduling: affinity map, MiB held for 10,000 conversations",
            keyswap=affinity_mib(10_000),
        ),
        Row(
            f"Scheduling: affinity map full ({bound:,}), +100,000 conversations: RSS growth MiB",
            keyswap=f"{settling:+.1f}",
            ratios=False,
        ),
        Row(
            "Scheduling: … then +200,000 more: entries kept; RSS growth MiB",
            keyswap=f"{kept:,}; {later:+.1f}",
            target=f"{bound:,}; flat (≤ 0.5)",
            met=kept == bound and later <= 0.5,
            ratios=False,
        ),
    ]


def main() -> None:
    os.environ.setdefault("KEYSWAP_DUMPABLE", "1")
    print(table(rows()))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
