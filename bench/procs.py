"""The processes a benchmark runs: the lean upstream, mitmdump (bare or with keyswap), and a
keyswap user (its config file and token store, filled without a login flow)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MITMDUMP = str(Path(sys.executable).with_name("mitmdump"))
_LISTENING = re.compile(r"proxy listening at \S+?:(\d+)")
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process (all its threads) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Upstream:
    """`python -m bench.upstream` in its own process (so it never shares a GIL)."""

    def __init__(self, cert: Path, key: Path) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.upstream", str(cert), str(key)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line.startswith("port "):
            self.stop()
            raise RuntimeError(f"the bench upstream did not start: {line!r}")
        self.port = int(line.split()[1])
        self.pid = self._proc.pid

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def stats(self, cafile: Path) -> dict[str, int]:
        """Its counters: requests by status, "streams", and "connections" accepted."""
        ctx = ssl.create_default_context(cafile=str(cafile))
        with (
            socket.create_connection(self.address) as raw,
            ctx.wrap_socket(raw, server_hostname="api.anthropic.com") as tls,
        ):
            tls.sendall(b"GET /_stats HTTP/1.1\r\nHost: api.anthropic.com\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data or not data.endswith(b"}"):
                chunk = tls.recv(65536)
                if not chunk:
                    break
                data += chunk
        stats: dict[str, int] = json.loads(data.partition(b"\r\n\r\n")[2])
        return stats

    def stop(self) -> None:
        _stop(self._proc)


def snapshot(dest: Path) -> Path:
    """Copy keyswap's code (addon/, login/) to `dest`, so that edits made while a benchmark
    runs neither hot-reload the addon (mitmdump reloads a changed script) nor mix versions."""
    for package in ("addon", "login"):
        shutil.copytree(
            ROOT / package, dest / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    return dest


def revision() -> str:
    """The git commit the code came from, and whether it had uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "addon", "login"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head or 'unknown'}{' + uncommitted changes in addon/ or login/' if dirty else ''}"


@dataclass
class User:
    """A keyswap user of its own: config file, file token store, locks; and the copy of
    keyswap's code (`src`) its proxies run."""

    home: Path
    config: Path
    src: Path
    store: dict[str, str] = field(default_factory=lambda: {"KEYSWAP_STORE": "file"})

    @classmethod
    def make(cls, home: Path, config: str, src: Path) -> User:
        (home / "data").mkdir(parents=True, exist_ok=True, mode=0o700)
        path = home / "config.toml"
        path.write_text(config)
        return cls(home, path, src)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _PROXY_VARS}
        env.pop("KEYSWAP_CONFIG", None)
        return env | {
            "HOME": str(self.home),
            "XDG_DATA_HOME": str(self.home / "data"),
            "XDG_CONFIG_HOME": str(self.home / "config"),
            **self.store,
        }

    def save(self, bucket: str, access: str, refresh: str | None, expires_at: float) -> None:
        """Store an anthropic credential the way a login would, through keyswap's store."""
        code = (
            "import json, sys\n"
            "from login.credential import Credential\n"
            "from login.store import open_store\n"
            "open_store().save(Credential(**json.loads(sys.argv[1])))\n"
        )
        cred = {
            "provider": "anthropic",
            "bucket": bucket,
            "access_token": access,
            "refresh_token": refresh,
            "expires_at": expires_at,
            "updated_at": time.time(),
        }
        subprocess.run(
            [sys.executable, "-c", code, json.dumps(cred)], env=self.env, cwd=self.src, check=True
        )


def make_mitmproxy_ca(confdir: Path) -> Path:
    """Create mitmproxy's CA before any mitmdump starts, so that several can share `confdir`
    without racing to create it; the CA certificate a client must trust."""
    from mitmproxy.certs import CertStore

    CertStore.from_store(confdir, "mitmproxy", 2048)
    return confdir / "mitmproxy-ca-cert.pem"


class Proxy:
    """A mitmdump on an ephemeral port: bare, or with keyswap's addon for `user`, started
    as tests/proxy.py does. Its output goes to `<workdir>/<name>.log`, not through a pipe
    this process would have to drain. Call `wait()` before use (several can start at once)."""

    def __init__(
        self,
        name: str,
        workdir: Path,
        upstream_ca: Path,
        user: User | None = None,
        args: tuple[str, ...] = (),
        confdir: Path | None = None,
    ) -> None:
        self.name = name
        self.confdir = confdir or workdir / "mitmproxy"
        self.log = workdir / f"{name}.log"
        env = user.env if user else {k: v for k, v in os.environ.items() if k not in _PROXY_VARS}
        env |= {"PYTHONUNBUFFERED": "1", "SSL_CERT_FILE": str(upstream_ca)}
        argv = [MITMDUMP]
        if user is not None:
            argv += ["-s", str(user.src / "addon" / "inject.py")]
            argv += ["--set", f"keyswap_config={user.config}"]
        argv += ["--listen-host", "127.0.0.1", "--listen-port", "0"]
        argv += ["--set", f"confdir={self.confdir}", "--set", "connection_strategy=lazy"]
        argv += ["--set", f"ssl_verify_upstream_trusted_ca={upstream_ca}", *args]
        with self.log.open("w") as out:
            cwd = user.src if user else workdir
            self._proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=out)
        self.pid = self._proc.pid
        self.port = 0

    def wait(self, timeout: float = 60) -> Proxy:
        deadline = time.monotonic() + timeout
        while not self.port and time.monotonic() < deadline:
            if m := _LISTENING.search(self.log.read_text()):
                self.port = int(m[1])
            elif self._proc.poll() is not None:
                break
            else:
                time.sleep(0.05)
        if not self.port:
            self.stop()
            raise RuntimeError(f"mitmdump {self.name} did not start:\n{self.log.read_text()}")
        return self

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self) -> None:
        _stop(self._proc)


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
