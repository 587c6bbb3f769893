"""`keyswap import <provider> [bucket]`: take over a login another tool already holds.

Which tool, which files and what is in them is each provider's (`Provider.import_sources`);
this module is the command around them: find the login, say what will happen to it (whose
it will be) before doing anything, ask when it matters, then refresh it once through the
token service (proof that it is alive, and tokens of keyswap's own) and store it. Nothing
here prints a token: messages name files, accounts and expiries only.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from pydantic import SecretStr

from .config import load_config
from .credential import Credential, expiry_text
from .errors import BadEntry, KeyswapError, NeedsLogin, RefreshFailed, login_command
from .providers import PROVIDERS, Provider
from .providers.sources import (
    IMPORTED_BY,
    IMPORTED_FP,
    IMPORTED_FROM,
    Found,
    Read,
    Source,
    describe,
    fingerprint,
    read,
)
from .tokens import TokenService
from .ui import Console


def sources_help() -> str:
    """One line per provider: where its login is imported from (for `import --help`)."""
    lines = []
    for name, provider in PROVIDERS.items():
        found = provider.import_sources()
        where = (
            "; ".join(f"{s.tool}: {describe(s.files, s.keychain)}" for s in found)
            or "nothing to import yet"
        )
        if found:
            where += " (keyswap takes it over)" if provider.rotates_refresh else " (shared)"
        lines.append(f"  {name:<12} {where}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    provider = PROVIDERS[args.provider]
    override = Path(args.source).expanduser() if args.source else None
    got = _find(provider, override)
    place, found = _choose(provider, got, args.account)
    source = got.source
    account = found.account or (source.account() if source.account else None)

    service = TokenService(load_config(args.config))
    stored = _stored(service, provider.name, args.bucket)
    if isinstance(stored, Credential) and stored.extra.get(IMPORTED_FP) == fingerprint(
        found.refresh
    ):
        if stored.needs_login:
            raise KeyswapError(
                f"{stored.name} was imported from {place}, and that login no longer works; "
                f"log in again with {source.login_how} (then import it again) or with "
                f"`{login_command(provider.name, args.bucket)}`"
            )
        print(
            f"✓ {stored.name} already holds this login, imported from {place}; nothing to do",
            file=sys.stderr,
        )
        return 0
    existing = _described(stored)
    print(_plan(provider, args.bucket, source, place, found, account, existing))
    if args.dry_run:
        print("Dry run: nothing was stored and nothing was contacted.")
        return 0
    if (provider.rotates_refresh or existing) and not args.yes and not _confirmed():
        print("✘ not imported; nothing changed", file=sys.stderr)
        return 1

    seed = Credential(
        provider=provider.name,
        bucket=args.bucket,
        access_token=SecretStr(found.access or ""),
        refresh_token=SecretStr(found.refresh),
        expires_at=found.expires_at if found.access and found.expires_at else 0.0,
        account=account,
        extra={
            **found.extra,
            IMPORTED_FROM: place,
            IMPORTED_BY: source.tool,
            IMPORTED_FP: fingerprint(found.refresh),
        },
        updated_at=time.time(),
        login_at=time.time(),
    )
    cred = _adopt(service, provider, seed, source, place)
    who = f" as {cred.account}" if cred.account else ""
    print(f"✓ Imported {provider.title}{who} from {place}", file=sys.stderr)
    print(
        f"✓ Stored as {cred.name} in the {service.store.kind} store; "
        f"{expiry_text(cred.expires_at)}",
        file=sys.stderr,
    )
    if "project" in cred.extra:
        print(f"✓ Code Assist project: {cred.extra['project']}", file=sys.stderr)
    if provider.rotates_refresh:
        print(
            f"! {source.tool}'s copy of this login is spent now: to use {source.tool} again, "
            f"log in there ({source.login_how})",
            file=sys.stderr,
        )
    return 0


def _find(provider: Provider, override: Path | None) -> Read:
    sources = provider.import_sources()
    if not sources:
        raise KeyswapError(
            f"keyswap knows no other tool's {provider.title} login to import; log in with "
            f"`keyswap login {provider.name}`"
        )
    for source in sources[:1] if override is not None else sources:
        got = read(source, override)
        if got is not None:
            return got
    first = sources[0]
    places = str(override) if override is not None else describe(first.files, first.keychain)
    raise KeyswapError(
        f"no {first.tool} login found at {places} (log in with {first.login_how} or use "
        f"`keyswap login {provider.name}`)"
    )


def _choose(provider: Provider, got: Read, account: str | None) -> tuple[str, Found]:
    logins = got.logins
    if account is not None:
        logins = [(p, f) for p, f in logins if f.account == account]
    if not logins:
        held = sorted({f.account for _, f in got.logins if f.account})
        if account is not None and held:
            raise KeyswapError(
                f"{got.where} holds no login of {account} (it holds: {', '.join(held)})"
            )
        wanted = f" ({got.source.wanted})" if got.source.wanted else ""
        raise KeyswapError(
            f"{got.where} holds no {provider.title} login keyswap can use{wanted}"
            + (f" for {account}" if account is not None else "")
        )
    if len(logins) > 1:
        names = ", ".join(f.account or "(unnamed)" for _, f in logins)
        raise KeyswapError(
            f"{got.where} holds {len(logins)} logins ({names}): choose one with --account USER"
        )
    return logins[0]


def _stored(service: TokenService, provider: str, bucket: str) -> Credential | str | None:
    """What the bucket holds now: a login, "unreadable", or None when it is free."""
    try:
        return service.store.load(provider, bucket)
    except BadEntry:
        return "unreadable"


def _described(stored: Credential | str | None) -> str | None:
    if stored is None:
        return None
    if not isinstance(stored, Credential):
        return "an unreadable login"
    return f"the login of {stored.account}" if stored.account else "a login"


def _plan(
    provider: Provider,
    bucket: str,
    source: Source,
    place: str,
    found: Found,
    account: str | None,
    existing: str | None,
) -> str:
    if found.access and found.expires_at:
        access = expiry_text(found.expires_at) + " (keyswap refreshes it on import)"
    else:
        access = "none in the file (keyswap gets one on import)"
    if provider.rotates_refresh:
        owner = (
            f"keyswap alone. {provider.title} refresh tokens rotate: once keyswap refreshes "
            f"this login, {source.tool}'s copy is spent, and {source.tool} will have to log in "
            f"again at its next refresh ({source.login_how})"
        )
    else:
        owner = (
            f"shared. {provider.title} refresh tokens do not rotate: {source.tool} and "
            "keyswap can both keep using this login"
        )
    lines = [
        f"Import a {provider.title} login from {source.tool}",
        f"  from:     {place}",
        f"  into:     {provider.name}:{bucket}",
        f"  account:  {account or 'not named in the file'}",
    ]
    if found.note:
        lines.append(f"  plan:     {found.note}")
    lines.append(f"  access:   {access}")
    lines.append(f"  owner:    {owner}")
    if existing:
        lines.append(f"  replaces: {existing}, stored as {provider.name}:{bucket} now")
    return "\n".join(lines)


def _confirmed() -> bool:
    if not sys.stdin.isatty():
        raise KeyswapError(
            "not imported: this import needs a yes and there is no terminal to ask on; "
            "run it again with --yes to go ahead (see above what it does)"
        )
    print("Import it? [y/N] ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def _adopt(
    service: TokenService, provider: Provider, seed: Credential, source: Source, place: str
) -> Credential:
    async def job() -> Credential:
        try:
            cred = await service.adopt(seed, Console())
            await service.settle(cred.name)
            return cred
        finally:
            await service.aclose()

    nothing = "nothing was stored"
    try:
        return asyncio.run(job())
    except NeedsLogin as exc:
        raise KeyswapError(
            f"the {source.tool} login in {place} no longer works ({exc.why}): log in again "
            f"with {source.login_how} or with `{login_command(provider.name, seed.bucket)}`; "
            f"{nothing}"
        ) from None
    except RefreshFailed as exc:
        raise KeyswapError(f"{exc}; {nothing}") from None
    except KeyswapError as exc:
        if provider.rotates_refresh:
            raise  # the refreshed login was stored before this
        raise KeyswapError(f"{exc}; {nothing}") from None
