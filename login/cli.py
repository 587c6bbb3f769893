"""`python -m login`: sign in to subscriptions and manage the stored logins."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, NoReturn

from . import usage
from .config import BUCKET_PATTERN, DEFAULT_PORT, BucketRules, load_config
from .credential import Credential, expiry_text
from .doctor import DEFAULT_HOST
from .errors import KeyswapError
from .hardening import forbid_core_dumps
from .providers import PROVIDERS, use
from .providers.base import BROWSER_WAIT
from .tokens import BAD_STATES, Entry, TokenService
from .ui import Console

DEFAULT_BUCKET = "default"

# `python -m login` and `keyswap login` are the same program.
PROG = "python -m login"


def _epilog(prog: str) -> str:
    first, second = (*PROVIDERS.values(), *PROVIDERS.values())[:2]
    return f"""\
examples:
  {prog} {first.name:<23} sign in to {first.title}
  {prog} {second.name + " work":<23} another {second.title} account, as bucket "work"
  {prog} status                  what is logged in, and until when
  {prog} logout {second.name + " --all":<16} forget every {second.title} login

Tokens are kept in the OS keyring (or an encrypted file where none works;
KEYSWAP_STORE=keyring|file chooses). Config: --config PATH, $KEYSWAP_CONFIG,
or the user config dir's keyswap/config.toml.
"""


def _import_help() -> str:
    from .imports import sources_help

    return f"""\
Take over a login another tool already holds, instead of logging in again. keyswap checks it
with the provider (one refresh or token exchange) before storing it; no token is printed.

where each provider's login is read from (--from PATH reads another file in the same format):
{sources_help()}

ownership: where a provider's refresh tokens rotate, a refresh spends the old one, so a login
cannot be shared: after the import keyswap owns it, and the other tool has to log in again at
its next refresh. This is said, and confirmed (y/N on a terminal, or --yes), before anything
is done; without a terminal and without --yes nothing is imported. Where tokens do not rotate,
both keep using the login. Replacing a login already stored in the bucket is confirmed too.
--dry-run shows the login, its account, expiry, source and owner, and does nothing else.
"""


def _bucket(value: str) -> str:
    import re

    if not re.match(BUCKET_PATTERN, value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a bucket name (letters, digits and @._+- ; no spaces or colons)"
        )
    return value


def _provider(value: str) -> str:
    if value not in PROVIDERS:
        raise argparse.ArgumentTypeError(
            f"unknown provider {value!r} (choose from {', '.join(sorted(PROVIDERS))})"
        )
    return value


# Why the providers the config defines are not known, when its file could not be read.
_config_problem: str | None = None


def _use_config(argv: Sequence[str]) -> None:
    """Providers a config defines are commands too: read it before the parser is built. A
    config that cannot be read leaves the built-in ones; the command that reads it says why."""
    global _config_problem
    path = None
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
        elif arg.startswith("--config="):
            path = arg.partition("=")[2]
    try:
        use(load_config(path).defined)
    except KeyswapError as exc:
        _config_problem = str(exc)


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error of the CLI."""

    def error(self, message: str) -> NoReturn:
        unknown = "argument <provider> | <command>: invalid choice:"
        if unknown in message and _config_problem:
            message += f"; no provider the config defines is known: {_config_problem}"
        message = message.replace(unknown, "unknown provider or command")
        self.exit(2, f"✘ {message} (see `{self.prog} --help`)\n")


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--config", metavar="PATH", help="config file (TOML)")
    parser = _Parser(
        prog=prog,
        description="Sign in to the subscriptions keyswap uses, and manage the stored logins.",
        epilog=_epilog(prog),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(
        dest="command", metavar="<provider> | <command>", required=True, parser_class=_Parser
    )

    for name, provider in sorted(PROVIDERS.items()):
        flow = "device code" if provider.flow == "device" else "browser sign-in"
        p = sub.add_parser(
            name,
            parents=[common],
            help=f"sign in to {provider.title} ({flow})",
            description=f"Sign in to {provider.title} and store the tokens as one bucket.",
        )
        p.add_argument(
            "bucket",
            nargs="?",
            default=DEFAULT_BUCKET,
            type=_bucket,
            help=f"name for this account (default: {DEFAULT_BUCKET}); log in again with "
            "another name to add a second account",
        )
        p.add_argument(
            "--no-browser",
            action="store_true",
            help="do not open a browser: print the URL, and accept the pasted redirect URL or "
            "code (automatic over SSH and without a display)",
        )
        if provider.device_alternative:
            p.add_argument(
                "--device",
                action="store_true",
                help="sign in with a one-time code entered in a browser anywhere, instead of a "
                "redirect to this machine (the account may first have to allow device codes; "
                "automatic when no browser opens and stdin is not a terminal)",
            )
        p.add_argument(
            "--timeout",
            type=float,
            metavar="SECONDS",
            help="give up after this long (default: 300 for a browser sign-in, the code's "
            "lifetime for a device code)",
        )
        for option in provider.login_options:
            p.add_argument(
                option.flag,
                dest=f"option_{option.dest}",
                metavar=option.metavar,
                choices=option.choices,
                help=option.help,
            )
        p.set_defaults(run=_login, provider=name, device=False)

    p = sub.add_parser(
        "status", parents=[common], help="show stored logins and whether they are usable"
    )
    p.add_argument("provider", nargs="?", type=_provider, help="only this provider")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=_status)

    p = sub.add_parser("logout", parents=[common], help="forget a stored login")
    p.add_argument("provider", type=_provider)
    p.add_argument("bucket", nargs="?", type=_bucket, help=f"default: {DEFAULT_BUCKET}")
    p.add_argument("--all", action="store_true", help="every bucket of this provider")
    p.set_defaults(run=_logout)

    p = sub.add_parser(
        "env",
        parents=[common],
        help="print the variables that point clients at the proxy and its CA",
        description='Print shell lines that point clients at keyswap:\n\n  eval "$(keyswap env)"',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--shell", choices=("sh", "fish", "powershell"), default="sh")
    p.add_argument(
        "--port", type=int, help="the proxy's port (default: [proxy] port in the config, 8080)"
    )
    p.add_argument(
        "--confdir", metavar="DIR", help="mitmproxy's confdir, where its CA lives (~/.mitmproxy)"
    )
    p.set_defaults(run=_env)

    p = sub.add_parser(
        "doctor",
        parents=[common],
        help="check the proxy, its CA, TLS through it, the token store and every login",
        description="Check that clients can use keyswap: one line per check, ✔ or ✘ with the "
        "fix (? = could not be checked). Exit status 0 when nothing failed. Never prints a token. "
        "It contacts the proxy and a test server of its own on 127.0.0.1, and through the "
        "proxy one provider host (--host) with a GET that carries no credentials, said on "
        "stderr before it is sent; logins are checked from the store, no provider is asked.",
    )
    p.add_argument(
        "--port", type=int, help="the proxy's port (default: [proxy] port in the config, 8080)"
    )
    p.add_argument(
        "--confdir",
        metavar="DIR",
        help="mitmproxy's confdir, where its CA lives (default: the running proxy's, "
        "else ~/.mitmproxy)",
    )
    p.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"provider host for the TLS check (default: {DEFAULT_HOST})",
    )
    p.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="per network step")
    p.set_defaults(run=_doctor)

    for verb, does in (("enable", "log in on first use"), ("disable", "refuse placeholders")):
        p = sub.add_parser(
            verb,
            parents=[common],
            help=f"{verb} a provider in the config ({does})",
            description=(
                "enable: when a request needs this provider and no login is usable, the "
                "proxy starts the login itself (the code or URL appears on its console and "
                "status page) and serves the request once it completes.\n"
                "disable: placeholders for this provider are refused with a clear 401."
            ),
        )
        p.add_argument("provider", type=_provider)
        p.set_defaults(run=_switch, enabled=verb == "enable")

    p = sub.add_parser(
        "import",
        parents=[common],
        help="take over a login another tool already has (its CLI or editor plugin)",
        description=_import_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("provider", type=_provider)
    p.add_argument("bucket", nargs="?", default=DEFAULT_BUCKET, type=_bucket)
    p.add_argument(
        "--from",
        dest="source",
        metavar="PATH",
        help="read this file instead (in the same tool's format)",
    )
    p.add_argument(
        "--account", metavar="USER", help="the account to take when the file holds several"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="show what would be imported and whose it would be; store nothing, contact nothing",
    )
    p.add_argument(
        "--yes",
        "-y",
        action="store_true",
        help="go ahead without asking (taking over a login, replacing a stored one)",
    )
    p.set_defaults(run=_import)

    p = sub.add_parser("refresh", parents=[common], help="refresh a login's access token now")
    p.add_argument("provider", type=_provider)
    p.add_argument("bucket", nargs="?", default=DEFAULT_BUCKET, type=_bucket)
    p.set_defaults(run=_refresh)

    from .migrate import add_parser as add_migrate
    from .page import add_parser as add_page

    add_page(sub)
    add_migrate(sub, common)
    return parser


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    forbid_core_dumps()  # before any token is read into memory
    argv = sys.argv[1:] if argv is None else argv
    _use_config(argv)
    args = build_parser(prog).parse_args(argv)
    try:
        result: int = args.run(args)
        return result
    except KeyswapError as exc:
        print(f"✘ {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("✘ cancelled; nothing was stored", file=sys.stderr)
        return 130


def _service(args: argparse.Namespace) -> TokenService:
    return TokenService(load_config(args.config))


def _run[T](service: TokenService, job: Callable[[], Coroutine[Any, Any, T]]) -> T:
    async def go() -> T:
        try:
            return await job()
        finally:
            await service.aclose()

    return asyncio.run(go())


def _login(args: argparse.Namespace) -> int:
    service = _service(args)
    ui = Console(no_browser=args.no_browser)
    provider = PROVIDERS[args.provider]
    options = {
        o.dest: value
        for o in provider.login_options
        if (value := getattr(args, f"option_{o.dest}", None)) is not None
    }
    device = args.device
    if provider.device_alternative and not device and ui.stranded:
        ui.step("No browser opens here and nothing can be pasted: signing in with a device code")
        device = True
    if provider.flow == "auth_code" and not device and not options:
        from .delegate import delegate

        wait = BROWSER_WAIT if args.timeout is None else args.timeout
        account = asyncio.run(delegate(args.provider, args.bucket, ui, wait))
        if account is not None:
            who = f" as {account}" if account else ""
            ui.done(f"Logged in to {provider.title}{who} (through the running proxy)")
            return 0

    async def job() -> Credential:
        cred = await service.login(
            args.provider,
            args.bucket,
            ui,
            timeout=args.timeout,
            device=device,
            paste=args.no_browser,
            options=options,
        )
        await service.settle(cred.name)
        return cred

    cred = _run(service, job)
    who = f" as {cred.account}" if cred.account else ""
    ui.done(f"Logged in to {provider.title}{who}")
    ui.done(f"Stored as {args.provider}:{args.bucket} in the {service.store.kind} store")
    if "project" in cred.extra:
        ui.done(f"Code Assist project: {cred.extra['project']}")
    return 0


def _status(args: argparse.Namespace) -> int:
    service = _service(args)
    entries = service.entries(args.provider)
    code = 1 if any(e.state in BAD_STATES for e in entries) else 0
    now = time.time()
    saved, records = _saved_usage()
    usages = [usage.view(records.get(f"{e.provider}:{e.bucket}"), now) for e in entries]
    if args.json:
        kind = service.store.kind
        listed = [{**_entry_json(e, kind), **u} for e, u in zip(entries, usages, strict=True)]
        print(json.dumps(listed, indent=2))
        return code
    if not entries:
        which = args.provider or "any provider"
        print(f"Not logged in to {which}. Run `keyswap login <provider>` (see --help).")
        return 0
    slots = max(len(u["windows"]) for u in usages)
    rows = [
        [
            e.provider,
            e.bucket,
            e.account or "-",
            e.state,
            expiry_text(e.expires_at),
            "imported" if e.imported else "",
            *usage.columns(u, slots, now),
        ]
        for e, u in zip(entries, usages, strict=True)
    ]
    # Usage columns no login has (no state file, no window, no cooldown) take no room.
    shown = [i for i in range(len(rows[0])) if any(row[i] for row in rows)]
    widths = {i: max(len(row[i]) for row in rows) for i in shown}
    for row in rows:
        print("  ".join(row[i].ljust(widths[i]) for i in shown).rstrip())
    for e in entries:
        if e.detail:
            print(f"  {e.provider}:{e.bucket}: {e.detail}")
        if e.models is not None or e.exclude_models:
            rules = BucketRules(models=e.models, exclude_models=e.exclude_models).describe()
            print(f"  {e.provider}:{e.bucket} serves {rules}")
    print(f"(store: {service.store.kind})")
    if saved is not None and any(u["requests"] is not None for u in usages):
        print(f"(usage: saved by the proxy {usage.span(now - saved)} ago)")
    return code


def _saved_usage() -> tuple[float | None, dict[str, Any]]:
    """The proxy's saved quota state, whether or not it runs; a damaged file is said once
    and shown as no usage."""
    path = usage.state_path()
    try:
        return usage.read_state(path)
    except usage.UnreadableState as exc:
        print(f"! the usage state {path} is unreadable ({exc}); showing no usage", file=sys.stderr)
        return None, {}


def _entry_json(e: Entry, store: str) -> dict[str, Any]:
    return {
        "provider": e.provider,
        "bucket": e.bucket,
        "account": e.account,
        "email": e.account if e.account and "@" in e.account else None,
        "state": e.state,
        "expires_at": e.expires_at,
        "expires_in": int(e.expires_at - time.time()) if e.expires_at else None,
        "store": store,
        "detail": e.detail,
        "models": e.models,
        "exclude_models": e.exclude_models,
        "imported_from": e.imported,
    }


def _logout(args: argparse.Namespace) -> int:
    service = _service(args)
    if args.all and args.bucket:
        raise KeyswapError("give a bucket or --all, not both")
    buckets = service.store.buckets(args.provider) if args.all else [args.bucket or DEFAULT_BUCKET]
    removed = [b for b in buckets if service.logout(args.provider, b)]
    if not removed:
        raise KeyswapError(
            f"no stored login for {args.provider}" + ("" if args.all else f":{buckets[0]}")
        )
    for bucket in removed:
        print(f"✓ Logged out of {args.provider}:{bucket}", file=sys.stderr)
    return 0


def _env(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .env import env_lines, mitmproxy_ca, write_bundle

    bundle = write_bundle(mitmproxy_ca(Path(args.confdir) if args.confdir else None))
    print("\n".join(env_lines(_port(args), bundle, args.shell)))
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .doctor import Options, run

    confdir = Path(args.confdir).expanduser() if args.confdir else None
    return run(Options(_port(args), confdir, args.config, args.host, args.timeout))


def _port(args: argparse.Namespace) -> int:
    """--port, else the config's `[proxy] port` (a config that cannot be read: 8080, and
    `doctor` says why)."""
    if args.port is not None:
        return int(args.port)
    try:
        return load_config(args.config).proxy.port
    except KeyswapError:
        return DEFAULT_PORT


def _switch(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .config_edit import set_enabled

    file = set_enabled(Path(args.config) if args.config else None, args.provider, args.enabled)
    state = "enabled (logs in on first use)" if args.enabled else "disabled"
    print(f"✓ {args.provider} {state} in {file}", file=sys.stderr)
    return 0


def _import(args: argparse.Namespace) -> int:
    from .imports import run

    return run(args)


def _refresh(args: argparse.Namespace) -> int:
    service = _service(args)

    async def job() -> Credential:
        cred = await service.refresh(args.provider, args.bucket, force=True)
        await service.settle(cred.name)
        return cred

    cred = _run(service, job)
    print(f"✓ Refreshed {cred.name}; {expiry_text(cred.expires_at)}", file=sys.stderr)
    return 0
