"""`keyswap service install | uninstall | status`: the proxy in the background, from login on.

Linux: a systemd user unit (`~/.config/systemd/user/keyswap.service`); its output goes to the
journal (`journalctl --user -u keyswap`). macOS: a launchd agent
(`~/Library/LaunchAgents/keyswap.proxy.plist`) logging to `~/Library/Logs/keyswap/`.
Windows: no service is installed; the command prints how to make a scheduled task instead.

The service runs `python -m addon` with the Python that runs this command, so it uses the
same installation, and it carries the variables that say where the config and the logins
are (KEYSWAP_CONFIG, KEYSWAP_STORE, XDG_CONFIG_HOME, XDG_DATA_HOME) when they are set.
"""

from __future__ import annotations

import argparse
import os
import plistlib
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import KeyswapError

NAME = "keyswap"
UNIT = f"{NAME}.service"
LABEL = f"{NAME}.proxy"  # launchd
# What the service passes on from the environment it is installed from.
CARRIED = ("KEYSWAP_CONFIG", "KEYSWAP_STORE", "XDG_CONFIG_HOME", "XDG_DATA_HOME")
# The proxy must never send its own requests to itself.
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
# Where `python -m addon` resolves: the folder that holds addon/ and login/.
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Service:
    """What runs: the command, its working directory and environment."""

    argv: list[str]
    cwd: Path
    env: dict[str, str]


def service(extra: Sequence[str] = (), environ: dict[str, str] | None = None) -> Service:
    environ = dict(os.environ) if environ is None else environ
    env = {k: environ[k] for k in CARRIED if environ.get(k)}
    env["PYTHONUNBUFFERED"] = "1"  # lines reach the log as they are written
    return Service([sys.executable, "-m", "addon", *extra], ROOT, env)


# -- Linux: systemd ------------------------------------------------------------------------


def unit_path(environ: dict[str, str] | None = None) -> Path:
    environ = dict(os.environ) if environ is None else environ
    config = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "systemd" / "user" / UNIT


def _systemd_quote(word: str) -> str:
    """One ExecStart word: quoted, with systemd's specifiers (%) and variables ($) kept
    literal."""
    escaped = word.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("%", "%%").replace("$", "$$") + '"'


def unit_text(svc: Service) -> str:
    env = "".join(f"Environment={_systemd_quote(f'{k}={v}')}\n" for k, v in sorted(svc.env.items()))
    return (
        "[Unit]\n"
        "Description=keyswap: the local proxy that swaps placeholder keys for OAuth tokens\n"
        "\n"
        "[Service]\n"
        "Type=simple\n"
        f"ExecStart={' '.join(_systemd_quote(w) for w in svc.argv)}\n"
        f"WorkingDirectory={str(svc.cwd).replace('%', '%%')}\n"
        f"{env}"
        f"UnsetEnvironment={' '.join(PROXY_VARS)}\n"
        "Restart=on-failure\n"
        "RestartSec=5\n"
        "# stdout and stderr go to the journal: journalctl --user -u keyswap\n"
        "\n"
        "[Install]\n"
        "WantedBy=default.target\n"
    )


# -- macOS: launchd ------------------------------------------------------------------------


def plist_path() -> Path:
    return Path.home() / "Library" / "LaunchAgents" / f"{LABEL}.plist"


def log_dir() -> Path:
    return Path.home() / "Library" / "Logs" / NAME


def plist_bytes(svc: Service, logs: Path) -> bytes:
    log = str(logs / "proxy.log")
    agent = {
        "Label": LABEL,
        "ProgramArguments": svc.argv,
        "WorkingDirectory": str(svc.cwd),
        "EnvironmentVariables": svc.env,
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},  # restarted when it fails, not when stopped
        "StandardOutPath": log,
        "StandardErrorPath": log,
        "ProcessType": "Background",
    }
    return plistlib.dumps(agent)


# -- Windows -------------------------------------------------------------------------------


def windows_note(svc: Service) -> str:
    command = subprocess.list2cmdline(svc.argv)
    logs = r"%LOCALAPPDATA%\keyswap\Logs\proxy.log"
    task = f'cmd /c cd /d "{svc.cwd}" && {command} >> "{logs}" 2>&1'
    return (
        "keyswap does not install a Windows service. To start the proxy at logon, create a\n"
        "scheduled task (in PowerShell or cmd), after making the log folder:\n\n"
        r'  mkdir "%LOCALAPPDATA%\keyswap\Logs"' + "\n"
        f"  schtasks /Create /TN keyswap /SC ONLOGON /RL LIMITED /F /TR {_cmd_quote(task)}\n\n"
        "Stop it with `schtasks /End /TN keyswap`, remove it with `schtasks /Delete /TN keyswap "
        "/F`;\nits output goes to " + logs + ".\n"
        "Or run `keyswap proxy` in a terminal of its own."
    )


def _cmd_quote(text: str) -> str:
    return '"' + text.replace('"', '\\"') + '"'


# -- the command ---------------------------------------------------------------------------


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run the keyswap proxy in the background from login on: a systemd user "
        "unit on Linux (logs in the journal), a launchd agent on macOS (logs in "
        "~/Library/Logs/keyswap), a note on how to make a scheduled task on Windows.",
    )
    sub = parser.add_subparsers(
        dest="action", required=True, metavar="install | uninstall | status"
    )
    p = sub.add_parser("install", help="install and start the service")
    p.add_argument(
        "--dry-run", action="store_true", help="print the file and where it goes; change nothing"
    )
    p.add_argument(
        "proxy_args",
        nargs=argparse.REMAINDER,
        metavar="-- PROXY OPTIONS",
        help="options for the proxy after --, e.g. -- --set keyswap_config=PATH",
    )
    sub.add_parser("uninstall", help="stop the service and remove it")
    sub.add_parser("status", help="whether it is installed and running")
    return parser


def main(argv: Sequence[str], prog: str = "keyswap service", platform: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    platform = platform or sys.platform
    try:
        if platform.startswith("linux"):
            return _systemd(args)
        if platform == "darwin":
            return _launchd(args)
        if platform in ("win32", "cygwin"):
            extra = [a for a in getattr(args, "proxy_args", []) if a != "--"]
            print(windows_note(service(extra)))
            return 0 if args.action != "install" or args.dry_run else 1
    except KeyswapError as exc:
        print(f"✘ {exc}", file=sys.stderr)
        return 1
    print(f"✘ no service support on {platform}; run `keyswap proxy` instead", file=sys.stderr)
    return 1


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(argv, 1, "", str(exc))


def _say(text: str) -> None:
    print(text, file=sys.stderr)


def _systemd(args: argparse.Namespace) -> int:
    path = unit_path()
    systemctl = ["systemctl", "--user"]
    if args.action == "install":
        text = unit_text(service([a for a in args.proxy_args if a != "--"]))
        if args.dry_run:
            _say(f"would write {path}:")
            print(text, end="")
            return 0
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        _say(f"✓ wrote {path}")
        if shutil.which("systemctl") is None:
            _say("✘ no systemctl here: start the proxy with `keyswap proxy` instead")
            return 1
        for step in (["daemon-reload"], ["enable", "--now", UNIT]):
            done = _run([*systemctl, *step])
            if done.returncode != 0:
                why = (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
                _say(
                    f"✘ systemctl --user {' '.join(step)}: {why}\n"
                    "  (no systemd user instance reachable? log in with a normal session, or "
                    "`loginctl enable-linger $USER`; or run `keyswap proxy` in a terminal)"
                )
                return 1
        _say(
            "✓ keyswap runs now and at every login; logs: journalctl --user -u keyswap -f; "
            "stop: systemctl --user stop keyswap"
        )
        return 0
    if args.action == "uninstall":
        if shutil.which("systemctl") is not None:
            _run([*systemctl, "disable", "--now", UNIT])
        if not path.exists():
            _say(f"nothing installed ({path} does not exist)")
            return 0
        path.unlink()
        if shutil.which("systemctl") is not None:
            _run([*systemctl, "daemon-reload"])
        _say(f"✓ stopped and removed {path}")
        return 0
    installed = path.exists()
    _say(f"unit file: {path} ({'installed' if installed else 'not installed'})")
    if shutil.which("systemctl") is None:
        _say("systemctl: not found")
        return 0 if installed else 3
    done = _run([*systemctl, "status", "--no-pager", UNIT])
    print((done.stdout or done.stderr).rstrip())
    return done.returncode


def _launchd(args: argparse.Namespace) -> int:
    path, logs = plist_path(), log_dir()
    domain = f"gui/{os.getuid()}"
    if args.action == "install":
        data = plist_bytes(service([a for a in args.proxy_args if a != "--"]), logs)
        if args.dry_run:
            _say(f"would write {path}:")
            print(data.decode(), end="")
            return 0
        logs.mkdir(parents=True, exist_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        _run(["launchctl", "bootout", f"{domain}/{LABEL}"])  # an older one, if loaded
        path.write_bytes(data)
        done = _run(["launchctl", "bootstrap", domain, str(path)])
        if done.returncode != 0:
            raise KeyswapError(f"launchctl bootstrap: {(done.stderr or done.stdout).strip()}")
        _say(
            f"✓ keyswap runs now and at every login; logs: {logs / 'proxy.log'}; "
            f"stop: launchctl bootout {domain}/{LABEL} (or keyswap service uninstall)"
        )
        return 0
    if args.action == "uninstall":
        _run(["launchctl", "bootout", f"{domain}/{LABEL}"])
        if path.exists():
            path.unlink()
            _say(f"✓ stopped and removed {path}")
        else:
            _say(f"nothing installed ({path} does not exist)")
        return 0
    _say(f"agent: {path} ({'installed' if path.exists() else 'not installed'}); logs: {logs}")
    done = _run(["launchctl", "print", f"{domain}/{LABEL}"])
    state = next((ln.strip() for ln in done.stdout.splitlines() if "state =" in ln), None)
    print(state or "not loaded")
    return 0 if done.returncode == 0 else 3
