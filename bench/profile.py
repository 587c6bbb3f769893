"""Where a proxy's time goes: py-spy samples of it under load, summed by category and
divided by the requests served, so bare mitmdump and keyswap compare in ms per request.

    python -m bench --profile        # needs py-spy: .venv/bin/pip install py-spy
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from .load import Clients, Target
from .procs import Proxy

# First match wins, tested against the whole stack (root to leaf).
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("keyswap: client to the provider (addon/outbound.py)", ("addon/outbound.py",)),
    ("keyswap: answers, retry loop, stream relay (addon/relay.py)", ("addon/relay.py",)),
    ("keyswap: request hook and the rest (addon/, login/)", ("addon/", "login/")),
    ("mitmproxy: flow printing and logging", ("addons/dumper.py", "addons/termlog.py", "logging/")),
    ("mitmproxy: TLS (pyOpenSSL)", ("OpenSSL/",)),
    ("mitmproxy: addon hook dispatch", ("addonmanager.py",)),
    ("mitmproxy: proxy layers, HTTP/1, asyncio I/O", ()),
)
_LOOP_FRAMES = ("<module> ", "mitmdump ", "run ", "Runner.run ", "BaseEventLoop.", "Handle._run ")
_IDLE = ("concurrent/futures/thread.py:89", "threading.py:359", "selectors.py:452")


def py_spy() -> str | None:
    return shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")


@dataclass
class Profile:
    name: str
    requests: int
    cpu_ms: float  # the proxy's CPU time per request while it was sampled (/proc)
    by_category: Counter[str]  # samples, idle excluded
    self_time: Counter[str]
    inclusive: Counter[str]

    def summary(self, top: int = 25) -> str:
        total = sum(self.by_category.values()) or 1
        lines = [
            f"### {self.name}: {self.requests} requests, proxy CPU {self.cpu_ms:.2f} ms/request",
            "",
            "| category | share of samples | ≈ CPU ms/request |",
            "|---|---|---|",
        ]
        for cat, _ in CATEGORIES:
            share = self.by_category.get(cat, 0) / total
            lines.append(f"| {cat} | {share:.0%} | {share * self.cpu_ms:.2f} |")
        lines += ["", f"Top self time ({self.name}):", "```"]
        lines += [f"{n / total:6.1%}  {f}" for f, n in self.self_time.most_common(top)]
        lines += ["```", "", f"Top inclusive ({self.name}, below the event loop):", "```"]
        shown = [
            (f, n)
            for f, n in self.inclusive.most_common()
            if not any(f.startswith(x) for x in _LOOP_FRAMES)
        ][:top]
        lines += [f"{n / total:6.1%}  {f}" for f, n in shown]
        lines.append("```")
        return "\n".join(lines)


def summarise(name: str, raw: Path, requests: int, cpu_ms: float) -> Profile:
    by_category: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = stack.split(";")
        if any(frames[-1].endswith(f"({idle})") for idle in _IDLE):
            continue
        for cat, needles in CATEGORIES:
            if not needles or any(x in stack for x in needles):
                by_category[cat] += n
                break
        self_time[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    return Profile(name, requests, cpu_ms, by_category, self_time, inclusive)


def profile(
    clients: Clients,
    proxy: Proxy,
    target: Target,
    workdir: Path,
    seconds: float = 6.0,
    streams: int = 0,
) -> Profile:
    """Load `proxy` with keep-alive JSON at concurrency 8 for `seconds` (or, with `streams`,
    that many one-event SSE streams on each of 8 connections) while py-spy samples it."""
    exe = py_spy()
    if exe is None:
        raise SystemExit("py-spy not found: .venv/bin/pip install py-spy")
    rate = 250
    name = f"{proxy.name}, SSE" if streams else proxy.name
    raw = workdir / f"{name.replace(', ', '-')}.pyspy.txt"
    argv = [exe, "record", "--pid", str(proxy.pid), "--duration", str(int(seconds) + 2)]
    argv += ["--rate", str(rate), "--format", "raw", "--output", str(raw)]
    spy = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # py-spy attaches
    before: list[float] = []
    if streams:
        jobs = [replace(j, count=streams, events=1) for j in clients.split("sse", target, 8)]
    else:
        jobs = clients.split("json", target, 8, duration=seconds)
    result = clients.run(jobs, lambda: before.append(proxy.cpu_seconds()))
    cpu_ms = (proxy.cpu_seconds() - before[0]) / max(1, result.sent) * 1000
    spy.wait(timeout=60)
    # The whole load ran inside the sampled span.
    return summarise(name, raw, result.sent, cpu_ms)
