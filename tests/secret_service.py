"""A real, private Secret Service (dbus + gnome-keyring-daemon) for tests.

``secret_service(tmp_path)`` starts a private D-Bus session bus and a
gnome-keyring-daemon (secrets component only) whose "login" collection exists,
is unlocked and is the ``default`` alias, so the ``keyring`` package's
SecretService backend works in subprocesses: headless, as root, with no display
and without any prompt.  It yields the environment variables to add to a
subprocess's environment and stops both daemons on exit.

Why it is done this way (found by trying, Debian 12, gnome-keyring 42.1):

* gnome-keyring-daemon only creates the "login" collection, and points the
  ``default`` alias at it, when it is given a password (``--unlock`` reads it
  from stdin).  Started without one there is no default collection, and
  ``keyring.set_password`` fails with "Failed to create the collection: Prompt
  dismissed" because creating one needs a GUI prompt.
* The bus uses its own config without service directories, so nothing is ever
  D-Bus-activated: in particular no second, locked gnome-keyring-daemon can be
  auto-started behind our back (the stock session config would activate
  /usr/share/dbus-1/services/org.freedesktop.secrets.service).
* Both daemons run in the foreground as our own children, each in its own
  session/process group, so we know their pids, can kill their groups and reap
  them (no zombies, nothing left behind).
* Sockets live in a short ``/tmp/ks-ss-*`` dir (0700, used as XDG_RUNTIME_DIR)
  because AF_UNIX paths are limited to ~108 bytes and pytest's ``tmp_path`` can
  be longer.  Everything else (HOME, XDG_*_HOME, where the keyring file is
  written) lives under ``tmp_path``, so the real user's keyring is never used.

The pytest fixture ``secret_service_env`` skips with the reason when the
service can't be had, or fails instead if ``KEYSWAP_REQUIRE_SECRET_SERVICE=1``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn
from xml.sax.saxutils import escape

import pytest

__all__ = [
    "SecretServiceEnv",
    "SecretServiceError",
    "require_secret_service",
    "secret_service",
    "secret_service_available",
    "secret_service_env",
    "unavailable",
]

REQUIRE_ENV = "KEYSWAP_REQUIRE_SECRET_SERVICE"
STARTUP_TIMEOUT = 20.0
LOGIN_COLLECTION = "/org/freedesktop/secrets/collection/login"

_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <keep_umask/>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


class SecretServiceError(RuntimeError):
    """The private Secret Service could not be started."""


class SecretServiceEnv(dict[str, str]):
    """Env vars to add to a subprocess's env; ``pids`` are the daemons' pids."""

    pids: tuple[int, ...] = ()
    runtime_dir: Path | None = None


def secret_service_available() -> str | None:
    """None if a private Secret Service can be started here, else why not."""
    if not sys.platform.startswith("linux"):
        return f"the Secret Service test helper needs Linux, not {sys.platform}"
    for exe, pkg in (("dbus-daemon", "dbus-daemon"), ("gnome-keyring-daemon", "gnome-keyring")):
        if shutil.which(exe) is None:
            return f"{exe} not installed (apt-get install {pkg})"
    for mod in ("jeepney", "secretstorage", "keyring"):
        try:
            __import__(mod)
        except ImportError:
            return f"Python package {mod} not installed (./bootstrap.sh test)"
    return None


def _exited_unreaped(pid: int) -> bool:
    """True once ``pid`` (our unreaped child) is a zombie or gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    """Terminate ``proc`` and its process group, then reap it.

    The leader is only reaped after the group got its SIGKILL, so its pid (the
    group's id) can't have been reused by then: only our processes are hit.
    """
    if proc is None or proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while not _exited_unreaped(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    # Anything left in the group (the leader included) gets SIGKILL.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""


def _wait_for_bus(proc: subprocess.Popen[bytes], socket: Path, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not socket.exists():
        if proc.poll() is not None:
            raise SecretServiceError(f"dbus-daemon exited with {proc.returncode}: {_read(log)}")
        if time.monotonic() > deadline:
            raise SecretServiceError(f"dbus-daemon did not create {socket}: {_read(log)}")
        time.sleep(0.02)


def _wait_for_login_collection(address: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Wait until the daemon owns org.freedesktop.secrets and ``default`` is an
    unlocked collection (normally "login"); point the alias at "login" if the
    daemon did not."""
    from jeepney import DBusAddress, Properties, new_method_call
    from jeepney.bus_messages import message_bus
    from jeepney.io.blocking import open_dbus_connection
    from jeepney.wrappers import unwrap_msg

    service = DBusAddress(
        "/org/freedesktop/secrets",
        bus_name="org.freedesktop.secrets",
        interface="org.freedesktop.Secret.Service",
    )
    deadline = time.monotonic() + STARTUP_TIMEOUT
    last = "org.freedesktop.secrets not on the bus yet"
    with open_dbus_connection(bus=address) as conn:

        def call(msg: object) -> tuple[object, ...]:
            reply = conn.send_and_get_reply(msg, timeout=5)
            return tuple(unwrap_msg(reply))

        while True:
            if proc.poll() is not None:
                raise SecretServiceError(
                    f"gnome-keyring-daemon exited with {proc.returncode}: {_read(log)}"
                )
            if time.monotonic() > deadline:
                raise SecretServiceError(
                    f"Secret Service not ready after {STARTUP_TIMEOUT:.0f}s ({last}): {_read(log)}"
                )
            try:
                (owned,) = call(message_bus.NameHasOwner("org.freedesktop.secrets"))
                if owned:
                    (default,) = call(new_method_call(service, "ReadAlias", "s", ("default",)))
                    if default == "/":
                        (cols,) = call(Properties(service).get("Collections"))
                        if LOGIN_COLLECTION in cols[1]:  # type: ignore[index]
                            call(
                                new_method_call(
                                    service, "SetAlias", "so", ("default", LOGIN_COLLECTION)
                                )
                            )
                        last = f"no default collection yet (collections: {cols})"
                    else:
                        col = DBusAddress(
                            str(default),
                            bus_name="org.freedesktop.secrets",
                            interface="org.freedesktop.Secret.Collection",
                        )
                        (locked,) = call(Properties(col).get("Locked"))
                        if not locked[1]:  # type: ignore[index]
                            return
                        last = f"default collection {default} is locked"
            except Exception as e:  # the daemon may still be registering its objects
                last = f"{type(e).__name__}: {e}"
            time.sleep(0.05)


@contextlib.contextmanager
def secret_service(tmp_path: Path) -> Iterator[SecretServiceEnv]:
    """Start a private dbus session bus + unlocked gnome-keyring-daemon.

    Yields the env vars to add to a subprocess env so ``keyring`` works:
    DBUS_SESSION_BUS_ADDRESS, XDG_RUNTIME_DIR, HOME, XDG_DATA_HOME,
    XDG_CONFIG_HOME, XDG_CACHE_HOME, XDG_STATE_HOME (all private to this call).
    The yielded dict also has ``.pids`` (dbus-daemon, gnome-keyring-daemon) and
    ``.runtime_dir``.  Both daemons are stopped, and the runtime dir removed, on
    exit.  Raises SecretServiceError if they can't be started.
    """
    reason = secret_service_available()
    if reason is not None:
        raise SecretServiceError(reason)

    base = Path(tmp_path) / "secret-service"
    home = base / "home"
    dirs = {
        "HOME": home,
        "XDG_DATA_HOME": home / ".local" / "share",
        "XDG_CONFIG_HOME": home / ".config",
        "XDG_CACHE_HOME": home / ".cache",
        "XDG_STATE_HOME": home / ".local" / "state",
    }
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
    runtime = Path(tempfile.mkdtemp(prefix="ks-ss-"))  # short path for sockets, mode 0700
    socket = runtime / "bus"
    address = f"unix:path={socket}"
    config = base / "bus.conf"
    config.write_text(_BUS_CONFIG.format(socket=escape(str(socket))))

    env = SecretServiceEnv({k: str(v) for k, v in dirs.items()})
    env["XDG_RUNTIME_DIR"] = str(runtime)
    env["DBUS_SESSION_BUS_ADDRESS"] = address
    env.runtime_dir = runtime
    child_env = {**os.environ, **env}
    for var in ("DISPLAY", "WAYLAND_DISPLAY", "GNOME_KEYRING_CONTROL", "SSH_AUTH_SOCK"):
        child_env.pop(var, None)

    dbus: subprocess.Popen[bytes] | None = None
    gkd: subprocess.Popen[bytes] | None = None
    dbus_log = base / "dbus-daemon.log"
    gkd_log = base / "gnome-keyring-daemon.log"
    try:
        with dbus_log.open("wb") as out:
            dbus = subprocess.Popen(
                ["dbus-daemon", "--nofork", "--nopidfile", f"--config-file={config}"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env,
                cwd=base,
                start_new_session=True,
            )
        _wait_for_bus(dbus, socket, dbus_log)

        with gkd_log.open("wb") as out:
            gkd = subprocess.Popen(
                [
                    "gnome-keyring-daemon",
                    "--foreground",
                    "--unlock",
                    "--components=secrets",
                    f"--control-directory={runtime / 'keyring'}",
                ],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env,
                cwd=base,
                start_new_session=True,
            )
        assert gkd.stdin is not None
        # --unlock reads the login keyring's password from stdin (until EOF); with
        # it the daemon creates the "login" collection, unlocked, as "default".
        gkd.stdin.write(secrets.token_hex(16).encode())
        gkd.stdin.close()
        _wait_for_login_collection(address, gkd, gkd_log)

        env.pids = (dbus.pid, gkd.pid)
        yield env
    finally:
        _stop(gkd)
        _stop(dbus)
        shutil.rmtree(runtime, ignore_errors=True)


def unavailable(reason: str) -> NoReturn:
    """Skip the current test, or fail it if KEYSWAP_REQUIRE_SECRET_SERVICE=1."""
    if os.environ.get(REQUIRE_ENV, "") not in ("", "0"):
        pytest.fail(f"{REQUIRE_ENV}=1 but no Secret Service: {reason}", pytrace=False)
    pytest.skip(f"no Secret Service: {reason}")


def require_secret_service() -> None:
    """Skip (or fail, see ``unavailable``) unless a Secret Service can be started."""
    reason = secret_service_available()
    if reason is not None:
        unavailable(reason)


@pytest.fixture
def secret_service_env(tmp_path: Path) -> Iterator[SecretServiceEnv]:
    """Env vars for subprocesses that use ``keyring`` against a private, unlocked
    gnome-keyring.  Skips if unavailable; fails if KEYSWAP_REQUIRE_SECRET_SERVICE=1."""
    require_secret_service()
    try:
        cm = secret_service(tmp_path)
        env = cm.__enter__()
    except SecretServiceError as e:
        unavailable(f"the Secret Service did not start: {e}")
    try:
        yield env
    finally:
        cm.__exit__(None, None, None)
