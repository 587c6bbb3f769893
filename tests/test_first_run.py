"""A new user's first ten minutes: the README's walk-through run as written, the `keyswap`
command, the one-line message for too old a Python, and `keyswap service`."""

from __future__ import annotations

import json
import os
import plistlib
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from login import pyversion, service
from tests.conftest import OUTPUTS, ROOT, User, free_port
from tests.e2e import Stack, stack
from tests.proxy import base_env

# What the `keyswap` console script runs.
CONSOLE_SCRIPT = "import sys; from login.keyswap import main; sys.exit(main())"


def readme_block(name: str) -> str:
    """The code block after `<!-- first-ten-minutes: NAME -->` in the README, as written."""
    text = (ROOT / "README.md").read_text()
    found = re.search(rf"<!-- first-ten-minutes: {name} -->\n```sh\n(.*?)```", text, re.S)
    assert found, f"README.md has no first-ten-minutes block {name!r}"
    return found[1]


def keyswap_bin(where: Path) -> Path:
    """A folder with `keyswap` in it, as set-up installs it (the console script's code) for
    this checkout and this Python."""
    where.mkdir(parents=True, exist_ok=True)
    script = where / "keyswap"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nfrom login.keyswap import main\nsys.exit(main())\n"
    )
    script.chmod(0o755)
    return where


@pytest.fixture
def s(user: User, tmp_path: Path) -> Iterator[Stack]:
    with stack(user, tmp_path) as st:
        yield st


def test_readme_first_ten_minutes_runs_as_written(s: Stack, tmp_path: Path) -> None:
    """The README's two blocks, verbatim, in bash: the proxy in one, then log in, `eval` the
    environment and a streamed answer with curl in the other. Only the environment is the
    test's: `keyswap` on the PATH, a fresh home, and a config that sends the providers to
    the fakes (and the proxy to a free port, since 8080 may be taken here)."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (apt-get install curl)")
    proxy_block, client_block = readme_block("proxy"), readme_block("client")
    assert proxy_block.strip() == "keyswap proxy"
    port = free_port()
    s.configure(f"[proxy]\nport = {port}\n")
    s.oauth.device_interval = 0.05
    env = base_env(s.user.env)
    env["PATH"] = f"{keyswap_bin(tmp_path / 'bin')}{os.pathsep}{env['PATH']}"
    env.pop("NO_PROXY", None)
    work = tmp_path / "work"
    work.mkdir()

    proxy = subprocess.Popen(
        ["bash", "-c", proxy_block],
        env={**env, "PYTHONUNBUFFERED": "1"},
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: Ctrl-C reaches it alone
    )
    proxy_out: list[str] = []
    threading.Thread(target=lambda: proxy_out.extend(proxy.stdout or []), daemon=True).start()
    try:
        deadline = time.monotonic() + 30
        while not any(f"listening at 127.0.0.1:{port}" in line for line in proxy_out):
            assert proxy.poll() is None, "the proxy stopped:\n" + "".join(proxy_out)
            assert time.monotonic() < deadline, "the proxy did not start:\n" + "".join(proxy_out)
            time.sleep(0.1)
        # The person at the browser: approve the code `keyswap login copilot` shows.
        approved: list[str] = []
        approver = threading.Thread(
            target=lambda: approved.append(s.oauth.github_approve(timeout=60)), daemon=True
        )
        approver.start()
        client = subprocess.run(
            ["bash", "-e", "-c", client_block],
            env=env,
            cwd=work,
            capture_output=True,
            text=True,
            timeout=120,
        )
        approver.join(5)
    finally:
        if proxy.poll() is None:
            os.killpg(proxy.pid, signal.SIGINT)  # Ctrl-C
        try:
            proxy.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proxy.pid, signal.SIGKILL)
            proxy.wait()
        OUTPUTS.append("".join(proxy_out))
    OUTPUTS.append(client.stdout + client.stderr)
    assert client.returncode == 0, client.stderr + "\n---- proxy ----\n" + "".join(proxy_out)
    assert approved, "the login showed no device code"
    assert "Logged in to GitHub Copilot" in client.stderr
    events = [ln for ln in client.stdout.splitlines() if ln.startswith("data: ")]
    assert events, client.stdout + client.stderr + "".join(proxy_out)
    assert events[-1] == "data: [DONE]", client.stdout
    text = "".join(
        choice["delta"].get("content") or ""
        for ev in events[:-1]
        for choice in json.loads(ev.removeprefix("data: "))["choices"]
    )
    assert text == s.api.text and len(events) > 2, "streamed as events, piece by piece"
    call = s.api.calls[-1]
    assert call.provider == "copilot"
    assert call.headers["authorization"].removeprefix("Bearer ") in s.oauth.valid_copilot_tokens
    assert proxy.returncode is not None, "Ctrl-C stopped the proxy"


# -- the keyswap command -------------------------------------------------------------------


def run_keyswap(user: User, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-c", CONSOLE_SCRIPT, *args],
        env=user.env,
        cwd=user.home,
        capture_output=True,
        text=True,
        timeout=60,
    )
    OUTPUTS.append(done.stdout + done.stderr)
    return done


def test_keyswap_lists_its_commands_and_hands_each_to_its_entry_point(user: User) -> None:
    helped = run_keyswap(user, "--help")
    assert helped.returncode == 0
    listed = {ln.split()[0] for ln in helped.stdout.splitlines() if ln.startswith("  ")}
    wanted = {"proxy", "login", "status", "env", "doctor", "import", "page", "service"}
    assert wanted <= listed, helped.stdout
    status = run_keyswap(user, "status")
    assert status.returncode == 0
    assert "Not logged in to any provider. Run `keyswap login <provider>`" in status.stdout
    login_help = run_keyswap(user, "login", "--help")
    assert login_help.stdout.startswith("usage: keyswap login "), login_help.stdout
    assert "keyswap login status" in login_help.stdout
    env_help = run_keyswap(user, "env", "--help")
    assert env_help.stdout.startswith("usage: keyswap env "), env_help.stdout
    proxy_help = run_keyswap(user, "proxy", "--help")
    assert proxy_help.stdout.startswith("usage: keyswap proxy [mitmdump options]")
    wrong = run_keyswap(user, "copilot")
    assert wrong.returncode == 2 and "`keyswap login copilot`" in wrong.stderr
    bare = run_keyswap(user)
    assert bare.returncode == 2 and bare.stdout.startswith("usage: keyswap")


def test_env_and_doctor_follow_the_configured_port(user: User, tmp_path: Path) -> None:
    user.write_config("[proxy]\nport = 9191\n")
    confdir = tmp_path / "mitmproxy"
    confdir.mkdir()
    (confdir / "mitmproxy-ca-cert.pem").write_text(Path(__import__("certifi").where()).read_text())
    env = run_keyswap(user, "env", "--confdir", str(confdir))
    assert env.returncode == 0, env.stderr
    assert "export HTTPS_PROXY='http://127.0.0.1:9191'" in env.stdout
    doctor = run_keyswap(user, "doctor", "--timeout", "1", "--confdir", str(confdir))
    assert "proxy not reachable at 127.0.0.1:9191" in doctor.stdout
    assert "start it: keyswap proxy --listen-port 9191" in doctor.stdout


# -- too old a Python ----------------------------------------------------------------------


def old_python() -> str:
    for name in ("python3.11", "python3"):
        path = shutil.which(name)
        if path is None:
            continue
        version = subprocess.run(
            [path, "-c", "import sys; print(sys.version_info[:2] < (3, 12))"],
            capture_output=True,
            text=True,
        )
        if version.stdout.strip() == "True":
            return path
    pytest.skip("no Python older than 3.12 on the PATH (python3.11) to try the check with")


@pytest.mark.parametrize(
    "argv",
    [
        ["-m", "login", "status"],
        ["-m", "addon"],
        ["-c", CONSOLE_SCRIPT, "status"],
        # as mitmdump loads a script: the file run as a module of its own
        ["-c", "import runpy; runpy.run_path('addon/inject.py', run_name='inject')"],
    ],
    ids=["python -m login", "python -m addon", "keyswap", "mitmdump -s addon/inject.py"],
)
def test_an_old_python_gets_one_line_and_a_failure(argv: list[str]) -> None:
    python = old_python()
    env = {"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8"}
    done = subprocess.run(
        [python, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert re.match(r"keyswap needs Python 3\.12 or newer \(this is 3\.\d+\.\d+\): \S", line)


def test_the_version_check_itself() -> None:
    assert pyversion.problem((3, 12, 0)) is None and pyversion.problem((3, 13, 1)) is None
    line = pyversion.problem((3, 11, 7), hint="do this")
    assert line == "keyswap needs Python 3.12 or newer (this is 3.11.7): do this"


# -- keyswap service -----------------------------------------------------------------------


def test_the_systemd_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    """No systemd user instance runs here, so the unit is checked the way systemd reads it."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    svc = service.service(
        ["--set", "keyswap_config=/a dir/50% $HOME.toml"],
        environ={"KEYSWAP_CONFIG": "/a dir/x.toml", "KEYSWAP_STORE": "file", "HOME": "/h"},
    )
    unit = tmp_path / "keyswap.service"
    unit.write_text(service.unit_text(svc))
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = {"PATH": os.environ.get("PATH", ""), "XDG_RUNTIME_DIR": str(runtime)}
    done = subprocess.run(
        [analyze, "--user", "verify", str(unit)], env=env, capture_output=True, text=True
    )
    # systemd-analyze exits 0 even for unknown keys and bad values: it must say nothing.
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    text = unit.read_text()
    assert f'ExecStart="{sys.executable}" "-m" "addon" "--set"' in text
    assert '"keyswap_config=/a dir/50%% $$HOME.toml"' in text
    assert 'Environment="KEYSWAP_CONFIG=/a dir/x.toml"' in text
    assert f"WorkingDirectory={ROOT}\n" in text and "UnsetEnvironment=HTTPS_PROXY" in text


def fake_systemctl(bin_dir: Path, log: Path, fail: str | None = None) -> None:
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "systemctl"
    body = f'echo "$@" >> "{log}"\n'
    body += f'echo "{fail}" >&2; exit 1\n' if fail else "exit 0\n"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)


def test_service_install_status_uninstall_with_systemd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = tmp_path / "calls"
    fake_systemctl(tmp_path / "bin", calls)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    unit = tmp_path / "config" / "systemd" / "user" / "keyswap.service"
    assert service.main(["install", "--", "--listen-port", "9090"], platform="linux") == 0
    assert '"-m" "addon" "--listen-port" "9090"' in unit.read_text()
    assert 'Environment="XDG_CONFIG_HOME=' in unit.read_text()
    assert service.main(["status"], platform="linux") == 0
    assert service.main(["uninstall"], platform="linux") == 0
    assert not unit.exists()
    assert calls.read_text().splitlines() == [
        "--user daemon-reload",
        "--user enable --now keyswap.service",
        "--user status --no-pager keyswap.service",
        "--user disable --now keyswap.service",
        "--user daemon-reload",
    ]
    err = capsys.readouterr().err
    assert "journalctl --user -u keyswap" in err


def test_service_install_says_why_when_systemd_cannot_be_reached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_systemctl(tmp_path / "bin", tmp_path / "calls", fail="Failed to connect to bus")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    assert service.main(["install"], platform="linux") == 1
    err = capsys.readouterr().err
    assert "Failed to connect to bus" in err and "keyswap proxy" in err
    assert (tmp_path / "config" / "systemd" / "user" / "keyswap.service").exists()


def test_the_launchd_agent_round_trips_through_plistlib(tmp_path: Path) -> None:
    svc = service.service(["--listen-port", "9090"], environ={"KEYSWAP_STORE": "keyring"})
    agent = plistlib.loads(service.plist_bytes(svc, tmp_path / "Logs"))
    assert agent == {
        "Label": "keyswap.proxy",
        "ProgramArguments": [sys.executable, "-m", "addon", "--listen-port", "9090"],
        "WorkingDirectory": str(ROOT),
        "EnvironmentVariables": {"KEYSWAP_STORE": "keyring", "PYTHONUNBUFFERED": "1"},
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "StandardOutPath": str(tmp_path / "Logs" / "proxy.log"),
        "StandardErrorPath": str(tmp_path / "Logs" / "proxy.log"),
        "ProcessType": "Background",
    }


def test_windows_gets_a_note_with_the_scheduled_task(capsys: pytest.CaptureFixture[str]) -> None:
    assert service.main(["install"], platform="win32") == 1  # nothing was installed
    out = capsys.readouterr().out
    assert "schtasks /Create /TN keyswap /SC ONLOGON" in out and "-m addon" in out
    assert service.main(["install", "--dry-run"], platform="win32") == 0
