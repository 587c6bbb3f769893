"""`python -m addon [mitmdump options]` (or `keyswap proxy`): mitmdump with keyswap on
127.0.0.1, on the port the config's `[proxy] port` names (default 8080)."""

import sys

from login.pyversion import require

require()  # one line, not a traceback, where `python` is older than 3.12

from pathlib import Path  # noqa: E402

SCRIPT = Path(__file__).resolve().parent / "inject.py"
PROG = "python -m addon"


def main(argv: list[str], prog: str = PROG) -> int | None:
    from login.config import DEFAULT_PORT

    if any(a in ("-h", "--help") for a in argv):
        print(
            f"usage: {prog} [mitmdump options]\n\n"
            f"Starts mitmdump with keyswap on 127.0.0.1:{DEFAULT_PORT} (or the port\n"
            "[proxy] port names in the config). Any mitmdump option may follow, e.g.\n"
            "--listen-port 9090 or --set keyswap_config=PATH. Ctrl-C stops it.\n"
            "Then point clients at it:\n"
            f'  eval "$(keyswap env)"   (or HTTPS_PROXY=http://127.0.0.1:{DEFAULT_PORT})\n'
        )
        return 0
    from mitmproxy.tools.main import mitmdump

    defaults = ["--listen-host", "127.0.0.1", "--listen-port", str(_port(argv))]
    # Lazy: connect upstream only once a request says where to; keyswap's own requests go
    # through its relay, so dialing the CONNECT target first would be wasted (or fail).
    defaults += ["--set", "connection_strategy=lazy"]
    return mitmdump(["-s", str(SCRIPT), *defaults, *argv])


def _port(argv: list[str]) -> int:
    """The config's `[proxy] port`: the config given with `--set keyswap_config=PATH`, else
    the usual one. A config that cannot be read gives the default here; the addon then
    stops the proxy with the file, key and reason."""
    from login.config import DEFAULT_PORT, load_config
    from login.errors import KeyswapError

    path = None
    for i, arg in enumerate(argv):
        value = argv[i + 1] if arg == "--set" and i + 1 < len(argv) else arg
        if value.startswith("keyswap_config="):
            path = value.partition("=")[2] or None
    try:
        return load_config(path).proxy.port
    except KeyswapError:
        return DEFAULT_PORT


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
