"""keyswap needs Python 3.12: say so in one line, before any 3.12-only syntax is parsed.

The entry points (`keyswap`, `python -m login`, `python -m addon`, `mitmdump -s
addon/inject.py`) import this first. It, and everything those modules run before calling
`require`, must stay parsable and runnable by older Pythons (macOS's own python3 is 3.9).
"""

from __future__ import annotations

import os
import sys

MINIMUM = (3, 12)
HINT = (
    "use the Python ./bootstrap.sh set up (.venv/bin/keyswap, or .venv/bin/python -m ...), "
    "or set KEYSWAP_PYTHON=/path/to/python3.12 and run ./bootstrap.sh"
)


def problem(version: tuple[int, ...] | None = None, hint: str = HINT) -> str | None:
    """The one line to print when `version` (default: this Python) is too old, else None."""
    version = tuple(sys.version_info[:3]) if version is None else tuple(version)
    if version >= MINIMUM:
        return None
    this = ".".join(str(part) for part in version)
    return f"keyswap needs Python 3.12 or newer (this is {this}): {hint}"


def require(hint: str = HINT, hard: bool = False) -> None:
    """Exit with one line on stderr when this Python is too old. `hard`: end the process at
    once (for a script mitmdump loads, which would catch a SystemExit as a traceback)."""
    line = problem(hint=hint)
    if line is None:
        return
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    if hard:
        os._exit(1)
    raise SystemExit(1)
