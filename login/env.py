"""`keyswap env`: the variables that make clients use the proxy and trust its CA.

Clients get one CA *bundle* (certifi's roots + mitmproxy's CA), because pointing
`SSL_CERT_FILE` at mitmproxy's CA alone would break every host keyswap does not touch.
"""

from __future__ import annotations

import os
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


DEFAULT_CONFDIR = Path("~/.mitmproxy")
CA_NAME = "mitmproxy-ca-cert.pem"
BUNDLE_NAME = "ca-bundle.pem"


def ca_path(confdir: Path | None = None) -> Path:
    """Where mitmproxy keeps its CA certificate (whether or not it exists yet)."""
    return (confdir or DEFAULT_CONFDIR).expanduser() / CA_NAME


def bundle_path() -> Path:
    """Where the bundle lives (whether or not it exists yet). The path never changes, so shells
    that already exported it keep working when the bundle is rewritten."""
    return data_dir() / BUNDLE_NAME


def bundle_content(ca: Path) -> bytes:
    """What the bundle should hold: certifi's roots, then mitmproxy's CA."""
    return Path(certifi.where()).read_bytes().rstrip(b"\n") + b"\n" + ca.read_bytes()


def mitmproxy_ca(confdir: Path | None = None) -> Path:
    path = ca_path(confdir)
    if not path.is_file():
        raise KeyswapError(
            f"{path} does not exist yet: start the proxy once (`keyswap proxy`), "
            "which creates mitmproxy's CA, then run this again"
        )
    return path


def write_bundle(ca: Path) -> Path:
    """certifi's roots plus mitmproxy's CA, rewritten only when either changed."""
    bundle = private_dir(data_dir()) / BUNDLE_NAME
    content = bundle_content(ca)
    if not bundle.is_file() or bundle.read_bytes() != content:
        tmp = bundle.with_name(f".{bundle.name}.{os.getpid()}.tmp")
        tmp.write_bytes(content)
        tmp.chmod(0o644)
        tmp.replace(bundle)
    return bundle


def refresh_bundle(confdir: Path | None = None) -> Path | None:
    """Bring an existing bundle up to date with mitmproxy's current CA (after the CA was
    rotated, or certifi updated). Writes nothing when there is no bundle yet or no CA: for
    the proxy to call at start, so shells that exported the bundle keep verifying."""
    ca = ca_path(confdir)
    if not bundle_path().is_file() or not ca.is_file():
        return None
    return write_bundle(ca)


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
