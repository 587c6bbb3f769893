"""Giving memory back to the system once a burst is over.

After a burst of connections the proxy's RSS stays at its peak (bench/RESULTS.md, issue
14.7), for two reasons. mitmproxy's flows and connections (and asyncio's TLS transports)
are reference cycles: nothing frees them until a full garbage collection, and an idle
process allocates nothing, so none comes. And what they held goes back to glibc's malloc,
which keeps freed chunks in the middle of its heap instead of returning them. So once the
proxy has been quiet for a few seconds after any activity, `Settler` runs one collection
and then `malloc_trim(0)` (glibc only; elsewhere just the collection). Both are off the hot
path: never while requests keep arriving, once per quiet spell. A collection after a burst of
256 streams takes ~0.1 s here, after ordinary use a few ms; a trim under 1 ms to ~5 ms.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import time
from collections.abc import Callable

QUIET_SECONDS = 5.0


def _malloc_trim() -> Callable[[], object] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim  # glibc's; musl and macOS have none
    except (OSError, AttributeError):
        return None
    trim.restype = ctypes.c_int
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)


class Settler:
    """`tick(activity)` now and then, with a number that grows with the proxy's work (its
    requests, the connections it closed): once it has stood still for QUIET_SECONDS after
    a change, the garbage is collected and the heap trimmed, once."""

    def __init__(self, quiet: float = QUIET_SECONDS) -> None:
        self.quiet = quiet
        self.settled = 0  # how many times it did
        self._trim = _malloc_trim()
        self._seen = 0
        self._since = time.monotonic()
        self._due = False

    def tick(self, activity: int) -> bool:
        """Whether it settled now."""
        now = time.monotonic()
        if activity != self._seen:
            self._seen, self._since, self._due = activity, now, True
            return False
        if not self._due or now - self._since < self.quiet:
            return False
        self._due = False
        gc.collect()
        if self._trim is not None:
            self._trim()
        self.settled += 1
        return True
