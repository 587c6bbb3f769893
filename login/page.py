"""`keyswap page`: a one-time link that opens the status page with full control.

The status page's authority must be something a program that can only talk to the proxy
cannot fetch. The link carries a token the CLI signs with the per-install management secret
(`<data dir>/manage.secret`, 0600, written by the proxy), so minting one needs no request to
the proxy and proves the holder can read the user's files. The proxy checks the signature,
the expiry and that the nonce was not used before, then trades the link for a session cookie.

    token = <expires>.<nonce>.<mac>
    mac   = base64url(HMAC-SHA256(HMAC-SHA256(secret, CONTEXT), "<expires>.<nonce>"))
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import secrets
import sys
import time
from dataclasses import dataclass
from typing import Any

from .errors import KeyswapError
from .store.paths import MANAGE_SECRET, data_dir, read_private
from .ui import Console

PAGE = "http://keyswap.local"
LINK_PATH = "/auth"
LINK_TTL = 300  # seconds a link stays good; also how long the proxy remembers its nonce
SECRET_MIN = 32  # shorter is damaged (the proxy replaces it at start)
_CONTEXT = b"keyswap status page link v1"  # keeps link MACs apart from any other use
_SKEW = 5  # seconds a link may claim beyond LINK_TTL (same machine, same clock)


def manage_secret() -> str:
    """The per-install management secret the proxy wrote; KeyswapError saying what to do."""
    path = data_dir() / MANAGE_SECRET
    try:
        secret = read_private(path).decode("ascii", "replace").strip()
    except FileNotFoundError:
        raise KeyswapError(
            f"no management secret at {path}: start the proxy once (keyswap proxy)"
        ) from None
    except OSError as exc:
        raise KeyswapError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(secret) < SECRET_MIN:
        raise KeyswapError(f"{path} is damaged: restart the proxy, which replaces it")
    return secret


def _mac(secret: str, body: str) -> str:
    key = hmac.new(secret.encode(), _CONTEXT, hashlib.sha256).digest()
    digest = hmac.new(key, body.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def mint(secret: str, now: float | None = None, ttl: int = LINK_TTL) -> str:
    """A link token, good once until `now + ttl`."""
    expires = int((time.time() if now is None else now) + ttl)
    body = f"{expires}.{secrets.token_urlsafe(16)}"
    return f"{body}.{_mac(secret, body)}"


@dataclass(frozen=True)
class Link:
    nonce: str
    expires: int


class LinkError(KeyswapError):
    """Why a link token is refused, in words for the person holding it."""


def verify(secret: str, token: str, now: float | None = None) -> Link:
    """The link `token` stands for, if this install's secret signed it and it has not
    expired. Whether it was used before is the proxy's to remember."""
    now = time.time() if now is None else now
    parts = token.split(".")
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1]:
        raise LinkError("this is not a keyswap link")
    expires, nonce, mac = parts
    if not hmac.compare_digest(mac.encode(), _mac(secret, f"{expires}.{nonce}").encode()):
        raise LinkError("this link was not made by this keyswap install")
    if int(expires) <= now:
        raise LinkError("this link has expired")
    if int(expires) > now + LINK_TTL + _SKEW:
        raise LinkError("this link claims to last longer than a link may")
    return Link(nonce, int(expires))


def link_url(token: str) -> str:
    return f"{PAGE}{LINK_PATH}?t={token}"


# -- the command ------------------------------------------------------------------------------

HELP = "print (and open) a one-time link to the status page"
DESCRIPTION = (
    f"Print a one-time link to the status page ({PAGE}/) and open it in a browser where "
    "one can be opened. The link gives that browser full control of the page (log in and "
    f"out, reset cooldowns) and works once, within {LINK_TTL // 60} minutes, in a browser "
    "that uses the proxy. It is signed with the management secret in the keyswap data dir, "
    "so only someone who can read your files can make one; the proxy need not be asked."
)


def add_parser(sub: Any) -> None:
    """Register `page` on the CLI's subcommands."""
    p = sub.add_parser("page", help=HELP, description=DESCRIPTION)
    p.add_argument(
        "--no-browser",
        action="store_true",
        help="only print the link (automatic over SSH and without a display)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    url = link_url(mint(manage_secret()))
    ui = Console(no_browser=args.no_browser)
    terms = f"it works once, within {LINK_TTL // 60} minutes"
    if ui.open(url):
        ui.step("Opened the status page; if it shows nothing, open this link in a browser")
        ui.say(f"  that uses the keyswap proxy ({terms}):")
    else:
        ui.step(f"Open this link in a browser that uses the keyswap proxy ({terms}):")
    # The link itself on stdout alone, so `keyswap page --no-browser` can be piped.
    print(url, file=sys.stdout, flush=True)
    return 0
