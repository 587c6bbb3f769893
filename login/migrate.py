"""`keyswap migrate` (`python -m login migrate`): move every login to another store (the
keyring, the file store, or a shared Redis), or make a key for a Redis store.

A login is moved, not copied: with refresh tokens that rotate, two stores holding one login
are two owners, and the first refresh in one burns it in the other. Each entry is taken
under both stores' locks, written to the destination, read back, and only then deleted
from the source.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from typing import Any

from .config import load_config
from .errors import KeyswapError, StoreError
from .store import Store, open_store, store_named
from .store.redis_store import KEY_ENV, new_key, safe_url

HELP = "move every login to another store (keyring, file, or a redis:// URL)"
DESCRIPTION = """\
Move every stored login to another store, e.g. to share them between proxies:

  export KEYSWAP_STORE_KEY="$(keyswap migrate --new-key)"
  keyswap migrate --to redis://127.0.0.1:6379/0

then run every proxy with KEYSWAP_STORE=redis://127.0.0.1:6379/0 and the same
KEYSWAP_STORE_KEY. Logins are moved, not copied (a refresh token that rotates
works in one place only); `--to file` or `--to keyring` moves them back.
The source is the store in use now: KEYSWAP_STORE, the config's [store] url,
else the keyring or the file store."""


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "migrate",
        parents=[common],
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--to", metavar="STORE", help="keyring, file, or redis://… / rediss://…")
    what.add_argument(
        "--new-key",
        action="store_true",
        help=f"print a new key for a Redis store ({KEY_ENV}) and do nothing else",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.new_key:
        print(new_key())
        print(
            f"✔ a new store key; give every proxy the same {KEY_ENV} (keep it secret)",
            file=sys.stderr,
        )
        return 0
    config = load_config(args.config)
    source = open_store(config.store.url)
    target = store_named(args.to)
    if _same(source, target):
        raise StoreError(f"the logins are in {_describe(target)} already")
    names = source.names()
    if not names:
        print(f"✔ nothing to move: {_describe(source)} holds no login", file=sys.stderr)
        return 0
    moved, failed = asyncio.run(_move(source, target, names))
    for name, why in failed:
        print(f"✘ {name}: {why}; left in {_describe(source)}", file=sys.stderr)
    print(f"✔ moved {moved} of {len(names)} logins to {_describe(target)}", file=sys.stderr)
    if moved:
        print(f"  use it: KEYSWAP_STORE={_selector(args.to)} (or [store] url)", file=sys.stderr)
    return 0 if not failed else 1


async def _move(
    source: Store, target: Store, names: list[str]
) -> tuple[int, list[tuple[str, str]]]:
    moved, failed = 0, []
    for name in names:
        provider, _, bucket = name.partition(":")
        try:
            async with contextlib.AsyncExitStack() as locks:
                await locks.enter_async_context(source.lock(name))
                if type(target).lock is not type(source).lock:  # one file lock serves both
                    await locks.enter_async_context(target.lock(name))
                cred = await asyncio.to_thread(source.load, provider, bucket)
                if cred is None:
                    continue  # logged out meanwhile
                await asyncio.to_thread(target.save, cred)
                back = await asyncio.to_thread(target.load, provider, bucket)
                if back is None or back.to_json() != cred.to_json():
                    raise StoreError("it did not read back the same from the destination")
                await asyncio.to_thread(source.delete, provider, bucket)
            moved += 1
        except KeyswapError as exc:
            failed.append((name, str(exc)))
    return moved, failed


def _same(a: Store, b: Store) -> bool:
    if a.kind != b.kind:
        return False
    return a.kind != "redis" or getattr(a, "url", None) == getattr(b, "url", None)


def _describe(store: Store) -> str:
    where = getattr(store, "where", None)
    return f"the {store.kind} store" + (f" at {where}" if where else "")


def _selector(to: str) -> str:
    return safe_url(to) if "://" in to else to
