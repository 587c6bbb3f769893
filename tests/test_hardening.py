"""The proxy and the CLI leave no core dump and refuse same-user ptrace: a crash with
`ulimit -c unlimited` must not write live tokens to disk."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, User
from tests.proxy import Mitmdump, base_env

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="prctl is Linux's")


def _unlimited_cores() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def test_the_proxy_is_not_dumpable(user: User, tmp_path: Path, monkeypatch) -> None:
    # As if started from a shell with `ulimit -c unlimited`.
    monkeypatch.setattr(subprocess, "Popen", _popen_with(_unlimited_cores))
    probe = str(ROOT / "tests" / "probes" / "dumpable.py")
    with Mitmdump(tmp_path, base_env(user.env), "-s", probe) as proxy:
        line = proxy.wait_for("probe: dumpable=")
    assert "dumpable=False core=0/0" in line, line


def test_the_cli_is_not_dumpable(user: User) -> None:
    code = (
        "import resource; from login.cli import main; from login.hardening import is_dumpable; "
        "main(['status']); "
        "print('dumpable', is_dumpable(), resource.getrlimit(resource.RLIMIT_CORE))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=user.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_unlimited_cores,
    )
    assert "dumpable False (0, 0)" in done.stdout, done.stdout + done.stderr


def test_keyswap_dumpable_leaves_it_for_a_profiler(user: User) -> None:
    code = (
        "from login.hardening import forbid_core_dumps, is_dumpable; "
        "forbid_core_dumps(); print(is_dumpable())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**user.env, "KEYSWAP_DUMPABLE": "1"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == "True", done.stderr


def _popen_with(preexec):  # type: ignore[no-untyped-def]
    real = subprocess.Popen

    def popen(*args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs.setdefault("preexec_fn", preexec)
        return real(*args, **kwargs)

    return popen
