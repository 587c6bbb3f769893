"""Keeping live tokens out of core dumps and away from debuggers of the same user.

The proxy and the CLI hold access and refresh tokens in memory. A crash with
`ulimit -c unlimited` would write them into a core file anyone who can read it
could mine, and a same-user process could attach with ptrace and read them. Both
processes give that up at start: RLIMIT_CORE 0 everywhere it exists, and on Linux
PR_SET_DUMPABLE 0 (no core, no ptrace attach by a non-root process of the same user,
/proc/<pid>/mem and environ closed to it).

`KEYSWAP_DUMPABLE=1` leaves the process dumpable, for a profiler (`py-spy`) or a
debugger the user attaches on purpose.
"""

from __future__ import annotations

import ctypes
import os
import sys

_PR_SET_DUMPABLE = 4
_PR_GET_DUMPABLE = 3


def forbid_core_dumps() -> None:
    """Make this process leave no core dump and refuse same-user ptrace, where the OS lets
    it. Never fails: a platform without these knobs simply keeps its defaults."""
    if os.environ.get("KEYSWAP_DUMPABLE") == "1":
        return
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, ValueError, OSError):
        pass
    if sys.platform.startswith("linux"):
        libc = _libc()
        if libc is not None:
            libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)


def is_dumpable() -> bool | None:
    """Linux's dumpable flag of this process (None where there is none)."""
    libc = _libc() if sys.platform.startswith("linux") else None
    if libc is None:
        return None
    return bool(libc.prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0))


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
