"""Shared fixtures: an isolated user environment and a way to drive the CLI as a user would."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.fakes.oauth import FakeOAuth
from tests.secret_service import secret_service_env  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parent.parent

# Everything the programs under test printed, scanned after each test for live tokens.
OUTPUTS: list[str] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class User:
    """A fresh user account: its own home, XDG dirs, config file and store."""

    home: Path
    env: dict[str, str]
    config: Path

    @property
    def data_dir(self) -> Path:
        return Path(self.env["XDG_DATA_HOME"]) / "keyswap"

    def write_config(self, text: str) -> Path:
        self.config.write_text(text)
        return self.config

    def start(self, *args: str, **extra_env: str) -> Proc:
        return Proc.start([sys.executable, "-m", "login", *args], {**self.env, **extra_env})

    def run(self, *args: str, input: str = "", timeout: float = 60, **extra_env: str) -> Result:
        done = subprocess.run(
            [sys.executable, "-m", "login", *args],
            env={**self.env, **extra_env},
            cwd=ROOT,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        OUTPUTS.append(done.stdout + done.stderr)
        return Result(done.returncode, done.stdout, done.stderr)


@dataclass
class Result:
    code: int
    out: str
    err: str


@dataclass
class Proc:
    """A running CLI whose stderr is collected line by line."""

    popen: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    pump: threading.Thread | None = None

    @classmethod
    def start(cls, argv: list[str], env: dict[str, str]) -> Proc:
        popen = subprocess.Popen(
            argv,
            env=env,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        proc = cls(popen)
        proc.pump = threading.Thread(target=proc._pump, daemon=True)
        proc.pump.start()
        return proc

    def _pump(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, needle: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if needle in line:
                    return line
            if self.popen.poll() is not None and not any(needle in ln for ln in self.lines):
                time.sleep(0.2)
                if not any(needle in ln for ln in self.lines):
                    break
            time.sleep(0.02)
        raise AssertionError(f"{needle!r} not seen; stderr so far:\n" + "\n".join(self.lines))

    def send(self, text: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(text)
        self.popen.stdin.flush()

    def finish(self, timeout: float = 30) -> Result:
        if self.popen.stdin is not None:
            self.popen.stdin.close()
        self.popen.wait(timeout=timeout)
        assert self.popen.stdout is not None
        out = self.popen.stdout.read()
        if self.pump is not None:
            self.pump.join(timeout=5)
        OUTPUTS.append(out + "\n".join(self.lines))
        return Result(self.popen.returncode, out, "\n".join(self.lines))

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


@pytest.fixture(autouse=True)
def no_token_in_any_output() -> Iterator[None]:
    """No token a fake issued may appear in anything keyswap printed during the test."""
    FakeOAuth.instances.clear()
    OUTPUTS.clear()
    yield
    secrets = {t for fake in FakeOAuth.instances for t in fake.issued_secrets() if len(t) >= 12}
    for text in OUTPUTS:
        leaked = [t[:8] + "…" for t in secrets if t in text]
        assert not leaked, f"live tokens in program output: {leaked}"


@pytest.fixture
def user(tmp_path: Path) -> User:
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_DATA_HOME": str(home / ".local/share"),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "KEYSWAP_STORE": "file",
        "KEYSWAP_CONFIG": str(home / "keyswap.toml"),
        "PYTHONPATH": str(ROOT),
        "LANG": "C.UTF-8",
        "PYTHONIOENCODING": "utf-8",
    }
    config = home / "keyswap.toml"
    config.write_text("")
    return User(home, env, config)


@pytest.fixture
def fake() -> Iterator[FakeOAuth]:
    with FakeOAuth() as server:
        yield server
