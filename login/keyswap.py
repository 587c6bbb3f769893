"""`keyswap`: the console command set-up installs, one name for the proxy and the login CLI.

`keyswap proxy ...` is `python -m addon ...`, `keyswap login <provider> ...` is
`python -m login <provider> ...`, and the login CLI's own commands (`status`, `env`,
`doctor`, `import`, `page`, ...) are commands of `keyswap` too. `keyswap service ...` runs
the proxy in the background at login. Each is handed to its own entry point, which defines
its arguments; this module only picks one.
"""

import sys

from login.pyversion import require

require()  # one line, not a traceback, where `python` is older than 3.12

from collections.abc import Sequence  # noqa: E402

PROG = "keyswap"
_USAGE = f"usage: {PROG} <command> [options]   ({PROG} <command> --help for its options)"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_help())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "proxy":
        from addon.__main__ import main as proxy

        return proxy(rest, prog=f"{PROG} proxy") or 0
    if command == "service":
        from .service import main as service

        return service(rest, prog=f"{PROG} service")
    from . import cli

    if command == "login":
        return cli.main(rest, prog=f"{PROG} login")
    if command in _login_commands():
        return cli.main(args, prog=PROG)
    from .providers import PROVIDERS

    hint = f"`{PROG} login {' '.join(args)}`" if command in PROVIDERS else f"`{PROG} --help`"
    print(f"✘ unknown command {command!r} (see {hint})", file=sys.stderr)
    return 2


def _login_commands() -> dict[str, str]:
    """The login CLI's commands that are not providers, with their one-line help."""
    import argparse

    from . import cli
    from .providers import PROVIDERS

    parser = cli.build_parser(PROG)
    found: dict[str, str] = {}
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                if choice.dest not in PROVIDERS:
                    found[choice.dest] = choice.help or ""
    return found


def _help() -> str:
    rows = [
        ("proxy", "start the proxy on 127.0.0.1:8080 (= python -m addon; Ctrl-C stops it)"),
        ("login <provider>", "sign in to a subscription (= python -m login <provider>)"),
        *_login_commands().items(),
        ("service", "install | uninstall | status: run the proxy in the background at login"),
    ]
    width = max(len(name) for name, _ in rows) + 2
    lines = [f"  {name:<{width}}{text}" for name, text in rows]
    from .providers import PROVIDERS

    return "\n".join(
        [
            _USAGE,
            "",
            "Use LLM subscriptions from any client: a local proxy swaps placeholder keys",
            "(oauth:<provider>) for live OAuth tokens.",
            "",
            "commands:",
            *lines,
            "",
            f"providers: {', '.join(PROVIDERS)}",
            "",
            "first time:",
            f"  {PROG} proxy                       # in one terminal, or: {PROG} service install",
            f"  {PROG} login copilot               # in another",
            f'  eval "$({PROG} env)"               # then run clients with oauth:<provider> keys',
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
