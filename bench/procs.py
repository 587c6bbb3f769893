"""The processes a benchmark runs: the lean upstream, mitmdump (bare or with keyswap), and a
keyswap user (its config file and token store, filled without a login flow)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MITMDUMP = str(Path(sys.executable).with_name("mitmdump"))
_LISTENING = re.compile(r"proxy listening at \S+?:(\d+)")
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


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

    def stop(self) -> None:
        _stop(self._proc)


@dataclass
class User:
    """A keyswap user of its own: config file, file token store, locks."""

    home: Path
    config: Path

    @classmethod
    def make(cls, home: Path, config: str) -> User:
        (home / "data").mkdir(parents=True, exist_ok=True, mode=0o700)
        path = home / "config.toml"
        path.write_text(config)
        return cls(home, path)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _PROXY_VARS}
        env.pop("KEYSWAP_CONFIG", None)
        return env | {
            "HOME": str(self.home),
            "XDG_DATA_HOME": str(self.home / "data"),
            "XDG_CONFIG_HOME": str(self.home / "config"),
            "KEYSWAP_STORE": "file",
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
            [sys.executable, "-c", code, json.dumps(cred)], env=self.env, cwd=ROOT, check=True
        )


class Proxy:
    """A mitmdump on an ephemeral port: bare, or with keyswap's addon for `user`.
    Its output goes to `<workdir>/<name>.log`, not through a pipe this process must drain."""

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
        self.confdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / f"{name}.log"
        env = user.env if user else {k: v for k, v in os.environ.items() if k not in _PROXY_VARS}
        env |= {"PYTHONUNBUFFERED": "1", "SSL_CERT_FILE": str(upstream_ca)}
        argv = [MITMDUMP]
        if user is not None:
            argv += ["-s", str(ROOT / "addon" / "inject.py")]
            argv += ["--set", f"keyswap_config={user.config}"]
        argv += ["--listen-host", "127.0.0.1", "--listen-port", "0"]
        argv += ["--set", f"confdir={self.confdir}", "--set", "connection_strategy=lazy"]
        argv += ["--set", f"ssl_verify_upstream_trusted_ca={upstream_ca}", *args]
        with self.log.open("w") as out:
            self._proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=out)
        self.pid = self._proc.pid
        self.port = self._wait_listening()

    def _wait_listening(self) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if m := _LISTENING.search(self.log.read_text()):
                return int(m[1])
            if self._proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mitmdump {self.name} did not start:\n{self.log.read_text()}")

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def ca(self) -> Path:
        return self.confdir / "mitmproxy-ca-cert.pem"

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def stop(self) -> None:
        _stop(self._proc)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
