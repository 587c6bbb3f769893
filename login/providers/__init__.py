"""The providers. Each module here that defines `PROVIDER` is a built-in one (adding a
provider means adding one module); a config may define more (`defined.py`). PROVIDERS lists
both, in their `order`: the built-in ones, and those the config in use defines (`use`)."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping

from .base import LoginContext, Provider


def _discover() -> dict[str, Provider]:
    found: dict[str, Provider] = {}
    for info in pkgutil.iter_modules(__path__):
        provider = getattr(importlib.import_module(f"{__name__}.{info.name}"), "PROVIDER", None)
        if isinstance(provider, Provider):
            found[provider.name] = provider
    return found


def _ordered(providers: Mapping[str, Provider]) -> dict[str, Provider]:
    return dict(sorted(providers.items(), key=lambda item: (item[1].order, item[0])))


BUILT_IN: dict[str, Provider] = _ordered(_discover())
PROVIDERS: dict[str, Provider] = dict(BUILT_IN)
_defined: set[str] = set()


def use(defined: Mapping[str, Provider]) -> None:
    """Make the providers a config defines (`Config.defined`) known beside the built-in ones,
    in place of those the previous config defined. PROVIDERS is changed in place, so every
    module that imported it sees them."""
    kept = {n: p for n, p in PROVIDERS.items() if n not in _defined}
    kept.update((n, p) for n, p in defined.items() if n not in BUILT_IN)
    _defined.clear()
    _defined.update(n for n in defined if n not in BUILT_IN)
    ordered = _ordered(kept)
    PROVIDERS.clear()
    PROVIDERS.update(ordered)


__all__ = ["BUILT_IN", "PROVIDERS", "LoginContext", "Provider", "use"]
