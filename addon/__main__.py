"""`python -m addon [mitmdump options]`: mitmdump with keyswap on 127.0.0.1:8080."""

from __future__ import annotations

import sys
from pathlib import Path

from mitmproxy.tools.main import mitmdump

SCRIPT = Path(__file__).resolve().parent / "inject.py"


def main(argv: list[str]) -> int | None:
    if any(a in ("-h", "--help") for a in argv):
        print(
            "usage: python -m addon [mitmdump options]\n\n"
            "Starts mitmdump with keyswap on 127.0.0.1:8080. Any mitmdump option may follow,\n"
            "e.g. --listen-port 9090 or --set keyswap_config=PATH. Then point clients at it:\n"
            '  eval "$(python -m login env)"   (or HTTPS_PROXY=http://127.0.0.1:8080)\n'
        )
        return 0
    defaults = ["--listen-host", "127.0.0.1", "--listen-port", "8080"]
    # Lazy: connect upstream only once a request says where to; keyswap's own requests go
    # through its relay, so dialing the CONNECT target first would be wasted (or fail).
    defaults += ["--set", "connection_strategy=lazy"]
    return mitmdump(["-s", str(SCRIPT), *defaults, *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
