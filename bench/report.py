"""One Markdown table: every measurement of a run, with its ratios and its target."""

from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

MIB = 1024 * 1024


@dataclass
class Row:
    measurement: str
    direct: float | str | None = None
    bare: float | str | None = None
    keyswap: float | str | None = None
    target: str = ""
    met: bool | None = None  # None: no target, or nothing to compare
    ratios: bool = True  # show keyswap/bare and keyswap/direct


def _num(value: float | str | None, digits: int = 1) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if math.isnan(value):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}" if abs(value) >= 1 else f"{value:.{digits + 1}f}"


def _ratio(a: float | str | None, b: float | str | None) -> str:
    if not isinstance(a, float | int) or not isinstance(b, float | int) or not b:
        return ""
    if math.isnan(a) or math.isnan(b):
        return ""
    return f"{a / b:.2f}×"


def table(rows: list[Row]) -> str:
    head = (
        "| measurement | direct | bare mitmdump | keyswap | keyswap/bare | keyswap/direct "
        "| target | met |"
    )
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        ks_bare = _ratio(r.keyswap, r.bare) if r.ratios else ""
        ks_direct = _ratio(r.keyswap, r.direct) if r.ratios else ""
        met = {True: "yes", False: "**no**", None: ""}[r.met]
        cells = [r.measurement, _num(r.direct), _num(r.bare), _num(r.keyswap)]
        cells += [ks_bare, ks_direct, r.target, met]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> str:
    model = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = ", ".join(f"{p} {version(p)}" for p in ("mitmproxy", "cryptography", "pyOpenSSL"))
    return (
        f"nproc {cores}, {model}, {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}; {versions}"
    )


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min), {five:.2f} (5 min)"


def _busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (steal included), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    """CPU seconds of this process and of its children that have been waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class CpuMeter:
    """How much CPU processes outside this benchmark (or the hypervisor) took during a run:
    the machine's busy time less this process's and its (stopped) children's."""

    def __init__(self) -> None:
        self._start = time.monotonic()
        self._busy = _busy_seconds()
        self._own = _own_seconds()

    def others(self) -> str:
        wall = time.monotonic() - self._start
        other = (_busy_seconds() - self._busy) - (_own_seconds() - self._own)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        share = max(0.0, other) / (wall * (cores or 1))
        warn = " (noisy: numbers may be off)" if share > 0.1 else ""
        return f"other processes used {share:.0%} of the machine{warn}"
