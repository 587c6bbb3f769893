"""`python -m login env`: the variables that make clients use the proxy and trust its CA.

Clients get one CA *bundle* (certifi's roots + mitmproxy's CA), because pointing
`SSL_CERT_FILE` at mitmproxy's CA alone would break every host keyswap does not touch.
"""

from __future__ import annotations

from pathlib import Path

import certifi

from .errors import KeyswapError
from .store.paths import data_dir, private_dir

CA_VARS = (
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "CODEX_CA_CERTIFICATE",
)


def mitmproxy_ca(confdir: Path | None = None) -> Path:
    path = (confdir or Path.home() / ".mitmproxy") / "mitmproxy-ca-cert.pem"
    if not path.is_file():
        raise KeyswapError(
            f"{path} does not exist yet: start the proxy once (`python -m addon`), "
            "which creates mitmproxy's CA, then run this again"
        )
    return path


def write_bundle(ca: Path) -> Path:
    """certifi's roots plus mitmproxy's CA, rewritten only when either changed."""
    bundle = private_dir(data_dir()) / "ca-bundle.pem"
    content = Path(certifi.where()).read_bytes().rstrip(b"\n") + b"\n" + ca.read_bytes()
    if not bundle.is_file() or bundle.read_bytes() != content:
        tmp = bundle.with_suffix(".tmp")
        tmp.write_bytes(content)
        tmp.chmod(0o644)
        tmp.replace(bundle)
    return bundle


def env_lines(port: int, bundle: Path, shell: str) -> list[str]:
    proxy = f"http://127.0.0.1:{port}"
    values = {
        "HTTPS_PROXY": proxy,
        "https_proxy": proxy,
        "NO_PROXY": "localhost,127.0.0.1,::1",
        "no_proxy": "localhost,127.0.0.1,::1",
        **dict.fromkeys(CA_VARS, str(bundle)),
        "NODE_USE_ENV_PROXY": "1",
    }
    if shell == "fish":
        return [f"set -gx {k} {_quote(v)};" for k, v in values.items()]
    if shell == "powershell":
        return [f"$env:{k} = '{v}'" for k, v in values.items()]
    return [f"export {k}={_quote(v)}" for k, v in values.items()]


def _quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"
