"""The whole stack for end-to-end tests: fake OAuth + fake provider APIs over real TLS,
logins made with the real CLI, and a real mitmdump with keyswap."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import trustme

from tests.conftest import User, free_port
from tests.fakes.api import FakeAPI
from tests.fakes.oauth import FakeOAuth
from tests.proxy import Mitmdump, base_env

_CODE = re.compile(r'<code id="auth-code">([^<]+)</code>')
_URL = re.compile(r"https?://\S+")


@dataclass
class Stack:
    user: User
    oauth: FakeOAuth
    api: FakeAPI
    ca_pem: str
    workdir: Path

    codex_port: int = 0

    def configure(self, extra: str = "") -> None:
        redirect = f'redirect_uri = "http://localhost:{self.codex_port}/auth/callback"\n'
        parts = [
            self.oauth.config_toml("copilot", "anthropic", "gemini", "antigravity"),
            self.oauth.config_toml("codex", extra=redirect),
            self.api.resolve_toml(),
            extra,
        ]
        # The providers' real API URLs stay: [resolve] sends them to the fake API.
        lines = "\n".join(parts).splitlines()
        api = ("api =", "code_assist =")
        self.user.write_config("\n".join(ln for ln in lines if not ln.startswith(api)) + "\n")

    # -- logins through the real CLI --------------------------------------------------------

    def login_anthropic(self, bucket: str = "default") -> str:
        proc = self.user.start("anthropic", bucket, "--no-browser")
        url = _URL.search(proc.wait_for(self.oauth.base_url)).group(0)
        location = httpx.get(url, follow_redirects=False).headers["location"]
        proc.send(_CODE.search(httpx.get(location).text).group(1) + "\n")
        res = proc.finish()
        assert res.code == 0, res.err
        return self.token("anthropic", bucket)

    def login_copilot(self, bucket: str = "default") -> str:
        self.oauth.device_interval = 0.05
        proc = self.user.start("copilot", bucket)
        code = proc.wait_for("one-time code").rsplit(" ", 1)[-1]
        self.oauth.github_approve(code)
        res = proc.finish()
        assert res.code == 0, res.err
        return self.token("copilot", bucket)

    def login_codex(self, bucket: str = "default") -> str:
        proc = self.user.start("codex", bucket, "--no-browser")
        url = _URL.search(proc.wait_for(self.oauth.base_url)).group(0)
        location = httpx.get(url, follow_redirects=False).headers["location"]
        proc.send(location + "\n")
        res = proc.finish()
        assert res.code == 0, res.err
        return self.token("codex", bucket)

    def login_google(self, provider: str, bucket: str = "default") -> str:
        proc = self.user.start(provider, bucket, "--no-browser")
        url = _URL.search(proc.wait_for(self.oauth.base_url)).group(0)
        location = httpx.get(url, follow_redirects=False).headers["location"]
        httpx.get(location)
        res = proc.finish()
        assert res.code == 0, res.err
        return self.token(provider, bucket)

    def token(self, provider: str, bucket: str) -> str:
        """The access token stored for provider/bucket, read through keyswap's own API."""
        return str(self.stored(provider, bucket)["access"])

    def stored(self, provider: str, bucket: str) -> dict[str, str | None]:
        """Everything secret that is stored for provider/bucket (access and refresh token)."""
        code = (
            "import json, sys; from login.store import open_store; "
            "c = open_store().load(sys.argv[1], sys.argv[2]); "
            "print(json.dumps({'access': c.token, 'refresh': c.refresh}))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, provider, bucket],
            env=self.user.env,
            capture_output=True,
            text=True,
            check=True,
        )
        return dict(json.loads(out.stdout))

    @contextmanager
    def proxy(self, *args: str) -> Iterator[Mitmdump]:
        with Mitmdump(
            self.workdir,
            base_env(self.user.env),
            "--set",
            f"keyswap_config={self.user.config}",
            *args,
            upstream_ca=self.ca_pem,
        ) as proxy:
            try:
                yield proxy
            except BaseException:
                print("---- mitmdump output ----\n" + proxy.output)  # shown when a test fails
                raise


@contextmanager
def stack(user: User, workdir: Path) -> Iterator[Stack]:
    ca = trustme.CA()
    ca_pem = workdir / "upstream-ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    with FakeOAuth() as oauth, FakeAPI(oauth, ca) as api:
        oauth.copilot_api = "https://api.individual.githubcopilot.com"
        user.env["SSL_CERT_FILE"] = str(ca_pem)  # the CLI's own calls reach the fake API too
        s = Stack(user, oauth, api, str(ca_pem), workdir, codex_port=free_port())
        s.configure()
        yield s
