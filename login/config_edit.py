"""Small, careful edits of the user's config file (`login enable/disable`).

Only one `key = value` line in one table changes; comments and layout stay. The result
is validated before it replaces the file, and a layout we cannot edit safely (dotted
keys, inline tables) is refused with a clear message instead of being rewritten.
"""

from __future__ import annotations

import re
from pathlib import Path

from .config import Config, default_config_path, load_config
from .errors import ConfigError
from .store.paths import write_private


def set_value(path: Path | None, table: str, key: str, literal: str) -> Path:
    """Set `key = literal` in `[table]` of the config file (created if missing)."""
    file = path or default_config_path()
    text = file.read_text() if file.exists() else ""
    lines = text.splitlines()
    header = re.compile(rf"^\s*\[\s*{re.escape(table)}\s*\]\s*(#.*)?$")
    start = next((i for i, line in enumerate(lines) if header.match(line)), None)
    if start is None:
        lines += ["", f"[{table}]", f"{key} = {literal}"]
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")),
            len(lines),
        )
        assign = re.compile(rf"^\s*{re.escape(key)}\s*=")
        found = next((i for i in range(start + 1, end) if assign.match(lines[i])), None)
        if found is None:
            lines.insert(start + 1, f"{key} = {literal}")
        else:
            lines[found] = f"{key} = {literal}"
    new = "\n".join(lines).lstrip("\n") + "\n"
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.check")
    tmp.write_text(new)
    try:
        load_config(tmp)
    except ConfigError as exc:
        raise ConfigError(str(file), exc.key, f"{exc.reason} (the file was not changed)") from None
    finally:
        tmp.unlink(missing_ok=True)
    write_private(file, new.encode())
    return file


def set_enabled(path: Path | None, provider: str, enabled: bool) -> Path:
    file = set_value(path, f"providers.{provider}", "enabled", "true" if enabled else "false")
    if _enabled(load_config(file), provider) is not enabled:
        raise ConfigError(
            str(file), f"providers.{provider}", "set elsewhere in the file; edit it by hand"
        )
    return file


def _enabled(config: Config, provider: str) -> bool | None:
    return config.provider(provider).enabled
