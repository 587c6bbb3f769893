"""The built-in providers. Each module that defines `PROVIDER` is one; adding a provider
means adding one module here. PROVIDERS lists them in their `order`."""

from __future__ import annotations

import importlib
import pkgutil

from .base import LoginContext, Provider


def _discover() -> dict[str, Provider]:
    found: dict[str, Provider] = {}
    for info in pkgutil.iter_modules(__path__):
        provider = getattr(importlib.import_module(f"{__name__}.{info.name}"), "PROVIDER", None)
        if isinstance(provider, Provider):
            found[provider.name] = provider
    return dict(sorted(found.items(), key=lambda item: (item[1].order, item[0])))


PROVIDERS: dict[str, Provider] = _discover()

__all__ = ["PROVIDERS", "LoginContext", "Provider"]
