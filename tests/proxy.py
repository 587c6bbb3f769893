"""A real mitmdump with keyswap loaded, on an ephemeral port, for end-to-end tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.conftest import ROOT

_LISTENING = re.compile(r"listening at (\S+?):(\d+)")
MITMDUMP = str(Path(sys.executable).with_name("mitmdump"))


class Mitmdump:
    def __init__(
        self, workdir: Path, env: dict[str, str], *args: str, upstream_ca: str | None = None
    ) -> None:
        self.confdir = workdir / "mitmproxy"
        self.confdir.mkdir(parents=True, exist_ok=True)
        self.env = {**env, "PYTHONUNBUFFERED": "1"}
        if upstream_ca:
            # keyswap's own upstream requests trust SSL_CERT_FILE; mitmproxy's via its option.
            self.env["SSL_CERT_FILE"] = upstream_ca
            args = (*args, "--set", f"ssl_verify_upstream_trusted_ca={upstream_ca}")
        self.argv = [
            MITMDUMP,
            "-s",
            str(ROOT / "addon" / "inject.py"),
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            "0",
            "--set",
            f"confdir={self.confdir}",
            "--set",
            "connection_strategy=lazy",
            *args,
        ]
        self.lines: list[str] = []
        self.port = 0
        self._proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ca(self) -> str:
        return str(self.confdir / "mitmproxy-ca-cert.pem")

    def client_env(self) -> dict[str, str]:
        """What a client needs: the proxy, and trust in mitmproxy's CA."""
        return {
            "HTTPS_PROXY": self.url,
            "https_proxy": self.url,
            "SSL_CERT_FILE": self.ca,
            "NO_PROXY": "",
        }

    def __enter__(self) -> Mitmdump:
        self._proc = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + 30
        while not self.port:
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError("mitmdump did not start:\n" + self.output)
            time.sleep(0.05)
        return self

    def _pump(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if not self.port and (m := _LISTENING.search(line)):
                self.port = int(m[2])

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, needle: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if needle in line:
                    return line
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not in mitmdump output:\n{self.output}")

    def __exit__(self, *exc: object) -> None:
        from tests.conftest import OUTPUTS

        OUTPUTS.append(self.output)
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


def base_env(user_env: dict[str, str]) -> dict[str, str]:
    env = dict(user_env)
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        env.pop(var, None)
    env.setdefault("PATH", os.environ.get("PATH", ""))
    return env
