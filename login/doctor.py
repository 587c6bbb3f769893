"""`keyswap doctor`: is everything between a client and its subscription in place?

What it contacts: the proxy on 127.0.0.1, a throwaway test server of its own on 127.0.0.1,
and through the proxy one provider host (`--host`, default the first provider's API host)
with a `GET /` that carries no credentials, announced on stderr before it is sent. Logins
are checked from the store only: no refresh, no provider asked.

One line per check: `✔` passed, `✘` failed (with the fix on the same line), `?` could not
be checked. Exit 0 when nothing failed. No check prints a token: logins are shown by
name and state only.

The TLS check proves what it can offline: with `connection_strategy=lazy` (what
`keyswap proxy` uses) mitmproxy answers CONNECT and does the TLS handshake itself,
so the certificate check needs no network; whether the provider is reachable from the
proxy is then a separate line.
"""

from __future__ import annotations

import html
import http.server
import ipaddress
import os
import re
import secrets
import socket
import ssl
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO, cast
from urllib.parse import urlsplit

import httpx

from . import http1
from .config import is_loopback_host, load_config
from .credential import expiry_text
from .env import DEFAULT_CONFDIR, bundle_content, bundle_path, ca_path
from .errors import KeyswapError, login_command
from .providers import PROVIDERS
from .store import keyrings
from .store.paths import data_dir
from .store.redis_store import KEY_ENV, RedisStore, is_redis_url, safe_url
from .tokens import BAD_STATES, Entry, TokenService

Status = Literal["ok", "fail", "unknown"]
MARKS: dict[Status, str] = {"ok": "✔", "fail": "✘", "unknown": "?"}
DEFAULT_PORT = 8080
# The TLS check dials the first provider's API host unless told another.
DEFAULT_HOST = next(h for p in PROVIDERS.values() for h in p.native_hosts)
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


@dataclass(frozen=True)
class Check:
    status: Status
    text: str
    fix: str | None = None

    def line(self) -> str:
        fix = f" — fix: {self.fix}" if self.fix and self.status != "ok" else ""
        return f"{MARKS[self.status]} {self.text}{fix}"


@dataclass(frozen=True)
class Options:
    port: int = DEFAULT_PORT
    confdir: Path | None = None  # None: the running proxy's, else ~/.mitmproxy
    config: str | None = None
    host: str = DEFAULT_HOST
    timeout: float = 5.0


def run(opts: Options, out: TextIO | None = None) -> int:
    """Run every check, print one line each as it finishes; 0 if none failed."""
    stream = out or sys.stdout
    failed = False
    for check in checks(opts):
        failed = failed or check.status == "fail"
        try:
            print(check.line(), file=stream, flush=True)
        except BrokenPipeError:  # `doctor | head`: stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
            return 1
    return 1 if failed else 0


def checks(opts: Options) -> Iterator[Check]:
    proc = find_proxy_process(opts.port)
    confdir, explicit = opts.confdir, opts.confdir is not None
    if confdir is None and isinstance(proc, ProxyProcess) and proc.confdir is not None:
        confdir = proc.confdir
    confdir = (confdir or DEFAULT_CONFDIR).expanduser()

    proxy = check_proxy(opts.port, opts.timeout)
    yield proxy
    yield check_bundle(confdir, opts, proc if isinstance(proc, ProxyProcess) else None, explicit)
    if proxy.status == "fail":
        yield Check("unknown", f"TLS through the proxy to {opts.host}: not checked (no proxy)")
    else:
        yield from check_tls(opts, confdir)
    yield check_config(opts.config)
    yield check_store(opts.config)
    yield from check_logins(opts.config)
    yield check_proxy_env(opts.port, proc)


# -- the proxy ---------------------------------------------------------------------------


def _start_fix(port: int) -> str:
    flag = "" if port == DEFAULT_PORT else f" --listen-port {port}"
    return f"start it: keyswap proxy{flag}"


def check_proxy(port: int, timeout: float) -> Check:
    where = f"127.0.0.1:{port}"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            pass
    except OSError as exc:
        return Check("fail", f"proxy not reachable at {where}: {_why(exc)}", _start_fix(port))
    try:
        with _origin() as origin:
            path = f"/keyswap-doctor-{secrets.token_hex(8)}"
            with httpx.Client(proxy=f"http://{where}", trust_env=False, timeout=timeout) as client:
                resp = client.get(origin + path)
    except httpx.HTTPError as exc:
        return Check(
            "fail",
            f"something listens at {where} but does not act as an HTTP proxy "
            f"({type(exc).__name__}: {exc or 'no answer'})",
            f"is another program on port {port}? {_start_fix(port)}, or pass --port",
        )
    if resp.status_code == 200 and resp.text == path:
        return Check("ok", f"proxy reachable at {where} (it forwarded an HTTP request)")
    return Check(
        "ok",
        f"proxy reachable at {where} (it answered {resp.status_code}, but could not reach a "
        f"test server on this machine: {_mitm_message(resp.text) or resp.reason_phrase})",
    )


@contextmanager
def _origin() -> Iterator[str]:
    """A throwaway HTTP server on loopback that echoes the request path."""

    class Echo(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = self.path.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# -- the CA bundle -----------------------------------------------------------------------


def _env_fix(opts: Options, confdir: Path, explicit: bool) -> str:
    flags = "" if opts.port == DEFAULT_PORT else f" --port {opts.port}"
    if explicit or confdir != DEFAULT_CONFDIR.expanduser():
        flags += f" --confdir {confdir}"
    return f'eval "$(keyswap env{flags})"'


def check_bundle(confdir: Path, opts: Options, proc: ProxyProcess | None, explicit: bool) -> Check:
    ca, bundle = ca_path(confdir), bundle_path()
    if proc is not None and proc.confdir is not None and _same(proc.confdir, confdir) is False:
        return Check(
            "fail",
            f"the proxy on port {opts.port} (pid {proc.pid}) keeps its CA in {proc.confdir}, "
            f"not {confdir}",
            f"keyswap doctor --confdir {proc.confdir}, and " + _env_fix(opts, proc.confdir, True),
        )
    if not ca.is_file():
        return Check(
            "fail",
            f"mitmproxy's CA {ca} does not exist",
            "start the proxy once (keyswap proxy creates the CA), or pass --confdir DIR "
            "where the proxy keeps it",
        )
    fix = _env_fix(opts, confdir, explicit)
    if not bundle.is_file():
        return Check("fail", f"no CA bundle at {bundle}", fix)
    try:
        content, wanted = bundle.read_bytes(), _pem_certs(ca.read_bytes())
        held = set(_pem_certs(content))
    except (OSError, ValueError) as exc:
        return Check("fail", f"cannot read the CA bundle {bundle} or {ca}: {exc}", fix)
    if not wanted:
        return Check(
            "fail", f"{ca} holds no certificate", f"delete it and restart the proxy; {fix}"
        )
    if not set(wanted) <= held:
        return Check(
            "fail",
            f"the CA bundle {bundle} does not hold mitmproxy's current CA from {ca} (it was "
            "written before the CA changed, or for another confdir): clients will reject the proxy",
            fix,
        )
    note = ""
    try:
        if content != bundle_content(ca):
            note = "; its other roots differ from certifi's now, `keyswap env` updates them"
    except OSError:
        pass
    return Check("ok", f"CA bundle {bundle} holds mitmproxy's current CA ({ca}){note}")


_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def _pem_certs(data: bytes) -> list[bytes]:
    """The DER of each PEM certificate in `data`."""
    return [ssl.PEM_cert_to_DER_cert(m.decode("ascii")) for m in _PEM.findall(data)]


def _same(a: Path, b: Path) -> bool | None:
    try:
        return a.expanduser().resolve() == b.expanduser().resolve()
    except OSError:
        return None


# -- TLS through the proxy -----------------------------------------------------------------


def check_tls(opts: Options, confdir: Path) -> Iterator[Check]:
    """CONNECT to the provider host through the proxy, verify its certificate the way a
    client would (with the bundle), then see whether the provider answers."""
    host, port, timeout = opts.host, opts.port, opts.timeout
    ca, bundle = ca_path(confdir), bundle_path()
    what = f"TLS through the proxy to {host}"
    if bundle.is_file():
        verify, label = bundle, f"the bundle {bundle}"
    elif ca.is_file():
        verify, label = ca, f"mitmproxy's CA {ca} (no bundle yet)"
    else:
        yield Check("unknown", f"{what}: not checked (no CA to verify with, see above)")
        return
    env_fix = _env_fix(opts, confdir, opts.confdir is not None)
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except OSError as exc:
        yield Check("fail", f"{what}: cannot connect to the proxy ({_why(exc)})", _start_fix(port))
        return
    with sock:
        try:
            sock.sendall(
                f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n"
                "User-Agent: keyswap-doctor\r\n\r\n".encode()
            )
            status, reason, _, body = _read_response(sock, body=False)
        except (OSError, ValueError) as exc:
            yield Check("fail", f"{what}: no answer to CONNECT ({_why(exc)})", _start_fix(port))
            return
        if status == 502:
            yield Check(
                "fail",
                f"{what}: the proxy could not reach {host}:443 before the handshake "
                f"({_mitm_message(body) or reason}); the certificate was not checked",
                "give the proxy network access, or start it with --set connection_strategy=lazy "
                "(keyswap proxy does)",
            )
            return
        if status != 200:
            yield Check("fail", f"{what}: the proxy answered CONNECT with {status} {reason}")
            return
        ctx = ssl.create_default_context(cafile=str(verify))
        ctx.set_alpn_protocols(["http/1.1"])
        try:
            tls = ctx.wrap_socket(sock, server_hostname=host)
        except ssl.SSLCertVerificationError as exc:
            yield Check(
                "fail",
                f"{what}: the certificate does not verify with {label} ({exc.verify_message}): "
                "clients will reject it",
                env_fix,
            )
            return
        except (OSError, ssl.SSLError) as exc:
            yield Check(
                "fail",
                f"{what}: the proxy broke off the handshake ({_why(exc)}); it may have failed to "
                f"reach {host} (see its log)",
                "start the proxy with --set connection_strategy=lazy (keyswap proxy does), "
                "or give it network access",
            )
            return
        with tls:
            issuer = _issuer(tls)
            mitm = _ca_subject(ca)
            if mitm is not None and issuer != mitm:
                yield Check(
                    "fail",
                    f"{what}: the certificate verifies but was issued by {_name(issuer)}, not "
                    f"mitmproxy's CA: the proxy passes {host} through untouched",
                    f"remove {host} from the proxy's ignore_hosts / tcp_hosts, or point --port "
                    "at keyswap's proxy",
                )
                return
            yield Check("ok", f"{what} verifies with {label} (certificate by {_name(issuer)})")
            # The one request that leaves this machine: said before it is made.
            print(
                f"… asking https://{host}/ through the proxy whether it answers (one GET with "
                "no credentials; --host HOST asks another)",
                file=sys.stderr,
                flush=True,
            )
            yield _check_upstream(tls, host, timeout)


def _check_upstream(tls: ssl.SSLSocket, host: str, timeout: float) -> Check:
    """Whether the provider answers through the proxy (any HTTP answer from it counts)."""
    try:
        tls.sendall(
            f"GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: keyswap-doctor\r\n"
            "Accept: */*\r\nConnection: close\r\n\r\n".encode()
        )
        status, reason, headers, body = _read_response(tls)
    except TimeoutError:
        return Check(
            "fail",
            f"{host} did not answer through the proxy within {timeout:g} s (slow or unreachable)",
            "check the proxy machine's network",
        )
    except (OSError, ValueError) as exc:
        return Check("fail", f"{host} through the proxy: {_why(exc)}", "see the proxy's log")
    if status == 502 and headers.get("server", "").lower().startswith("mitmproxy"):
        return Check(
            "fail",
            f"{host} is not reachable from the proxy ({_mitm_message(body) or reason}); the "
            "certificate check above did not need it",
            f"give the proxy's machine access to {host} (DNS, firewall), or chain a proxy: "
            "keyswap proxy --mode upstream:http://HOST:PORT",
        )
    return Check("ok", f"{host} reachable through the proxy (it answered HTTP {status})")


def _read_response(
    sock: socket.socket, *, body: bool = True, limit: int = 65536
) -> tuple[int, str, dict[str, str], bytes]:
    """Status, reason, headers (lower-case names) and up to `limit` bytes of body."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("the connection was closed")
        buf += chunk
        if len(buf) > limit:
            raise ValueError("the answer's head is too long")
    head, _, rest = buf.partition(b"\r\n\r\n")
    start, _, block = (head + b"\r\n").partition(b"\r\n")
    try:
        _, status, reason = http1.status_line(start)
    except http1.Malformed:
        raise ValueError(f"not an HTTP answer: {start[:60]!r}") from None
    # Strict as the relay is (http1.Malformed is a ValueError: the check fails, saying
    # why). Chunked wins over a Content-Length beside it; the doctor reads only a sized
    # body and never reuses a connection.
    fields = http1.fields(block)
    headers = {name.lower(): value for name, value in fields.headers}
    if body or status != 200:
        length = min(fields.length or 0, limit)
        while len(rest) < length:
            chunk = sock.recv(4096)
            if not chunk:
                break
            rest += chunk
    return status, reason, headers, rest


def _mitm_message(body: bytes | str) -> str | None:
    """The reason inside mitmproxy's own error page, if this is one."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    found = re.search(r"<p>(.*?)</p>", text, re.S)
    if found:
        return html.unescape(found[1]).strip() or None
    if "<" in text:
        return None
    # mitmproxy's plain-text CONNECT error ends with advice about connection_strategy
    text = " ".join(text.split(" If you plan to redirect")[0].split())
    return (text[:200] + "…" if len(text) > 200 else text) or None


Name = tuple[tuple[tuple[str, str], ...], ...]


def _issuer(tls: ssl.SSLSocket) -> Name | None:
    cert = tls.getpeercert()
    issuer = cert.get("issuer") if cert else None
    return cast(Name, issuer) if isinstance(issuer, tuple) else None


def _ca_subject(ca: Path) -> Name | None:
    if not ca.is_file():
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_verify_locations(cafile=str(ca))
    except (OSError, ssl.SSLError):
        return None
    found = ctx.get_ca_certs()
    subject = found[0].get("subject") if found else None
    return cast(Name, subject) if isinstance(subject, tuple) else None


def _name(name: Name | None) -> str:
    if not name:
        return "an unknown issuer"
    parts = [f"{k}={v}" for rdn in name for k, v in rdn]
    return ", ".join(parts) or "an unnamed issuer"


def _why(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused, nothing listens there"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, ssl.SSLError):
        return exc.reason or type(exc).__name__
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# -- config, store and logins ------------------------------------------------------------


def check_config(path: str | None) -> Check:
    try:
        config = load_config(path)
    except KeyswapError as exc:
        return Check("fail", f"config: {exc}", "fix the file, or point --config elsewhere")
    where = config.path or "none (defaults)"
    return Check("ok", f"config: {where}")


def check_store(config_path: str | None = None) -> Check:
    try:
        url = load_config(config_path).store.url
    except KeyswapError:
        url = None  # the config's own check says why
    shared = os.environ.get("KEYSWAP_STORE", "").strip() or url or ""
    if is_redis_url(shared):
        return _check_redis(shared)
    forced = shared.lower()
    files = data_dir() / "tokens"
    if forced == "file":
        return Check("ok", f"token store: encrypted files in {files} (KEYSWAP_STORE=file)")
    if forced not in ("", "keyring"):
        return Check(
            "fail",
            f"KEYSWAP_STORE={forced!r} is not valid",
            "set KEYSWAP_STORE=keyring or KEYSWAP_STORE=file, or unset it",
        )
    try:
        why = keyrings.probe()
    except Exception as exc:  # a broken backend is a finding, not a crash
        why = f"{type(exc).__name__}"
    if why is None:
        return Check("ok", "token store: the OS keyring works (service `keyswap`)")
    if forced == "keyring":
        return Check(
            "fail",
            f"KEYSWAP_STORE=keyring, but the keyring does not work: {why}",
            "unlock or install a keyring (Secret Service on Linux), or unset KEYSWAP_STORE to "
            "use the encrypted file store",
        )
    return Check("ok", f"token store: encrypted files in {files} (fallback; keyring: {why})")


def _check_redis(url: str) -> Check:
    where = safe_url(url)
    try:
        count = len(RedisStore(url).names())
    except KeyswapError as exc:
        return Check(
            "fail",
            f"token store: {exc}",
            f"start Redis at {where}, or set {KEY_ENV} to the store's key on this machine",
        )
    return Check("ok", f"token store: Redis at {where}, {count} logins, encrypted with {KEY_ENV}")


def check_logins(config_path: str | None) -> list[Check]:
    try:
        entries = TokenService(load_config(config_path)).entries()
    except KeyswapError as exc:
        return [Check("fail", f"stored logins: cannot be read: {exc}")]
    if not entries:
        return [
            Check(
                "fail",
                "no stored logins: the proxy has no token to swap in",
                f"keyswap login <provider> ({', '.join(PROVIDERS)})",
            )
        ]
    return [_login_check(e) for e in entries]


def _login_check(e: Entry) -> Check:
    name = f"{e.provider}:{e.bucket}"
    cmd = login_command(e.provider, e.bucket)
    who = f"{e.account}, " if e.account else ""
    if e.state == "valid":
        return Check("ok", f"login {name}: valid ({who}{expiry_text(e.expires_at)})")
    if e.state == "expired-refreshable":
        return Check(
            "ok",
            f"login {name}: expired-refreshable ({who}{expiry_text(e.expires_at)}; refreshed on "
            "next use)",
        )
    if e.state in BAD_STATES:  # the store's own message names the file and its fix
        return Check("fail", f"login {name}: {e.state}", e.detail or f"{cmd} to log in again")
    detail = f" ({e.detail})" if e.detail else ""
    return Check("fail", f"login {name}: {e.state}{detail}", cmd)


# -- the proxy process's own environment ---------------------------------------------------


@dataclass(frozen=True)
class ProxyProcess:
    pid: int
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] | None = None  # None: not readable
    confdir: Path | None = None  # from `--set confdir=…`, if given


def find_proxy_process(port: int) -> ProxyProcess | str:
    """The process listening on 127.0.0.1:`port` (Linux /proc), or why it cannot be found."""
    if not Path("/proc/net/tcp").is_file():
        return "no /proc on this system"
    inodes = _listening_inodes(port)
    if not inodes:
        return f"nothing listens on port {port}"
    targets = {f"socket:[{inode}]" for inode in inodes}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and _holds(proc, targets):
            return _describe(int(proc.name))
    return f"the process listening on port {port} is not yours (or not visible)"


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) < 10 or cols[3] != "0A":  # 0A: LISTEN
                continue
            addr, _, hex_port = cols[1].partition(":")
            if int(hex_port, 16) == port and _answers_loopback(addr):
                inodes.add(cols[9])
    return inodes


def _answers_loopback(hex_addr: str) -> bool:
    raw = bytes.fromhex(hex_addr)  # host byte order, in 32-bit words
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    addr = ipaddress.ip_address(raw)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback or addr.is_unspecified


def _holds(proc: Path, targets: set[str]) -> bool:
    try:
        fds = os.listdir(proc / "fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(proc / "fd" / fd) in targets:
                return True
        except OSError:
            continue
    return False


def _describe(pid: int) -> ProxyProcess:
    base = Path(f"/proc/{pid}")
    try:
        argv = [a.decode(errors="replace") for a in (base / "cmdline").read_bytes().split(b"\0")]
    except OSError:
        argv = []
    try:
        raw = (base / "environ").read_bytes().split(b"\0")
        env: dict[str, str] | None = {}
        for item in raw:
            key, sep, value = item.decode(errors="replace").partition("=")
            if sep and env is not None:
                env[key] = value
    except OSError:
        env = None
    return ProxyProcess(pid, [a for a in argv if a], env, _confdir_of(base, argv, env))


def _confdir_of(base: Path, argv: list[str], env: dict[str, str] | None) -> Path | None:
    value = None
    for i, arg in enumerate(argv):
        opt = argv[i + 1] if arg == "--set" and i + 1 < len(argv) else arg.removeprefix("--set=")
        if opt.startswith("confdir="):
            value = opt.removeprefix("confdir=")
    if value is None:
        return None
    if value.startswith("~"):
        home = (env or {}).get("HOME")
        value = (home + value[1:]) if home and value[:2] in ("~", "~/") else value
    path = Path(value).expanduser()
    if not path.is_absolute():
        try:
            path = Path(os.readlink(base / "cwd")) / path
        except OSError:
            return None
    return path


def check_proxy_env(port: int, proc: ProxyProcess | str) -> Check:
    what = "the proxy process's HTTPS_PROXY"
    if isinstance(proc, str):
        return Check("unknown", f"{what}: could not be checked ({proc})")
    who = f"pid {proc.pid}" + (f", {_command(proc.argv)}" if proc.argv else "")
    if proc.env is None:
        return Check("unknown", f"{what}: could not be checked ({who}: environment not readable)")
    loops = [var for var in PROXY_VARS if _points_at(proc.env.get(var, ""), port)]
    if loops:
        unset = " ".join(f"-u {var}" for var in PROXY_VARS)
        shown = ", ".join(f"{var}={proc.env[var]}" for var in loops)
        return Check(
            "fail",
            f"the proxy ({who}) has {shown}: that is itself",
            f"restart it without proxy variables: env {unset} keyswap proxy",
        )
    set_to = [f"{v}={proc.env[v]}" for v in PROXY_VARS if proc.env.get(v)]
    detail = ", ".join(set_to) if set_to else "no proxy variables"
    return Check("ok", f"the proxy ({who}) does not point at itself ({detail})")


def _command(argv: list[str]) -> str:
    """`mitmdump`, `python -m addon`: enough to recognise the process."""
    name = Path(argv[0]).name
    if name.startswith("python") and len(argv) > 1:
        return f"{name} -m {argv[2]}" if argv[1] == "-m" and len(argv) > 2 else Path(argv[1]).name
    return name


def _points_at(url: str, port: int) -> bool:
    if not url.strip():
        return False
    parts = urlsplit(url if "://" in url else f"http://{url}")
    try:
        target = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return False
    host = parts.hostname or ""
    return target == port and (is_loopback_host(host) or host in ("0.0.0.0", "::"))  # noqa: S104
