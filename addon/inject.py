"""The script mitmdump loads: `mitmdump -s addon/inject.py`."""

import sys
from pathlib import Path

# Importable whether or not keyswap is installed, and from any working directory.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from login.pyversion import require  # noqa: E402

# One line and exit, not a traceback, when mitmdump runs on a Python older than 3.12.
require(
    "this mitmdump runs on an older Python; start keyswap with `keyswap proxy` "
    "(or `.venv/bin/python -m addon`), which uses the one ./bootstrap.sh set up",
    hard=True,
)

from login.hardening import forbid_core_dumps  # noqa: E402

forbid_core_dumps()  # before any token is read into memory

from addon.injector import Injector  # noqa: E402
from addon.manage import Manage  # noqa: E402
from addon.settings import Settings  # noqa: E402

_settings = Settings()
addons = [_settings, Injector(_settings)]
addons.append(Manage(addons[1]))
