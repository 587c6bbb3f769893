"""The shared store: logins in Redis (or Valkey, or any server speaking its protocol), for
several keyswap proxies on one or many machines.

Each entry is `keyswap:tok:<provider>:<bucket>`: AES-256-GCM with the store key, the entry's
name bound in as associated data, so Redis (and whoever reads its dumps) holds no token. The
key comes from `KEYSWAP_STORE_KEY` or the OS keyring, never from Redis; `keyswap:keycheck`
tells a wrong key from a damaged entry, and a missing or wrong key is an error, never a
fallback to plaintext.

A refresh takes a lease lock per entry (`keyswap:lock:<entry>`, renewed while it is held),
so one proxy refreshes and the others read its result; a proxy that dies mid-refresh loses
the lease after `LEASE` seconds. Each lease takes a fencing number (`keyswap:fence:<entry>`)
and a write under a lease is refused once a later lease was taken: a holder that was paused
past its lease cannot overwrite what its successor saved.

The store interface is synchronous (the CLI, and the proxy through worker threads, as for
the keyring); the lease lock is asynchronous, with redis's asyncio client.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import CorruptEntry, StoreError, command
from .base import Store

KEY_ENV = "KEYSWAP_STORE_KEY"
KEYRING_SERVICE, KEYRING_USER = "keyswap", "redis-store-key"
PASSWORD_ENV, KEYRING_PASSWORD = "KEYSWAP_REDIS_PASSWORD", "redis-password"
PREFIX = "keyswap:"
_NONCE = 12
_KEYCHECK = b"keyswap store key check"
# A refresh lease: long enough for a slow token endpoint, renewed every third of it while
# the holder lives; a dead holder's lease ends by itself.
LEASE = 15.0
# How long a refresh waits for the lease (held elsewhere, or Redis unreachable).
LOCK_WAIT = 20.0
_TIMEOUT = 3.0  # seconds per Redis command

# Write an entry only if no later lease than the writer's was taken (KEYS: entry, fence,
# names, changes; ARGV: value, the writer's fence or "", the entry's name).
_WRITE = """
if ARGV[2] ~= '' and tonumber(redis.call('GET', KEYS[2]) or '0') > tonumber(ARGV[2]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('INCR', KEYS[4])
return 1
"""
# Extend or release a lease only while it is still ours.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}{port}", parts.path, "", ""))


def connection(url: str) -> dict[str, Any]:
    """How to reach Redis: timeouts, and its password when the URL carries none, from
    KEYSWAP_REDIS_PASSWORD or the keyring's keyswap/redis-password (keyswap writes it
    nowhere)."""
    options: dict[str, Any] = {
        "socket_timeout": _TIMEOUT,
        "socket_connect_timeout": _TIMEOUT,
    }
    if urlsplit(url).password is None:
        password = os.environ.get(PASSWORD_ENV) or _keyring_secret(KEYRING_PASSWORD)
        if password:
            options["password"] = password
    return options


def is_redis_url(value: str) -> bool:
    return value.split("://", 1)[0].lower() in ("redis", "rediss", "unix")


def new_key() -> str:
    """A fresh store key, as KEYSWAP_STORE_KEY takes it."""
    return base64.urlsafe_b64encode(AESGCM.generate_key(bit_length=256)).decode()


def _store_key() -> bytes:
    text = os.environ.get(KEY_ENV, "").strip()
    where = KEY_ENV
    if not text:
        text = _keyring_secret(KEYRING_USER) or ""
        where = "the keyring's keyswap/redis-store-key"
    if not text:
        raise StoreError(
            f"the Redis store needs its key: set {KEY_ENV} to the same value on every "
            f"proxy (make one with `{command('migrate', '--new-key')}`)"
        )
    try:
        key = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise StoreError(f"{where} is not a store key (32 bytes, base64)")
    return key


def _keyring_secret(user: str) -> str | None:
    try:
        import keyring

        return keyring.get_password(KEYRING_SERVICE, user)
    except Exception:  # no keyring backend here: the env var is the way
        return None


class RedisStore(Store):
    kind = "redis"

    def __init__(self, url: str) -> None:
        self.url, self.where = url, safe_url(url)
        self._aead = AESGCM(_store_key())
        self._redis = redis.Redis.from_url(url, **connection(url))
        self._async: redis.asyncio.Redis | None = None
        self._async_loop: asyncio.AbstractEventLoop | None = None
        self._write_script = self._redis.register_script(_WRITE)
        self._fences: dict[str, int] = {}  # leases this process holds: entry → fence
        self._key_checked = False  # on first use, not here: opening the store never waits

    # -- the Store interface ----------------------------------------------------------------

    def _read(self, name: str) -> bytes | None:
        blob = self._call(self._redis.get, _entry(name))
        if blob is None:
            return None
        assert isinstance(blob, bytes)
        try:
            return self._aead.decrypt(blob[:_NONCE], blob[_NONCE:], name.encode())
        except (InvalidTag, ValueError):
            why = f"its value in Redis at {self.where} does not decrypt"
            raise CorruptEntry(name, why) from None

    def _write(self, name: str, data: bytes) -> None:
        nonce = os.urandom(_NONCE)
        value = nonce + self._aead.encrypt(nonce, data, name.encode())
        fence = self._fences.get(name)
        keys = [_entry(name), _fence(name), _NAMES, _CHANGES]
        args = [value, "" if fence is None else str(fence), name]
        written = self._call(self._write_script, keys, args)
        if not written:
            raise StoreError(
                f"{name}: a later refresh (another proxy, after this one's lease ran out) "
                "saved this login first; this proxy's copy is not written over it"
            )

    def _remove(self, name: str) -> bool:
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(_entry(name))
        pipe.srem(_NAMES, name)
        pipe.incr(_CHANGES)
        removed = self._call(pipe.execute)
        return bool(removed[0])

    def _mark(self) -> None:
        pass  # every write and removal counts itself in `keyswap:changes`

    def names(self) -> list[str]:
        found = self._call(self._redis.smembers, _NAMES)
        return sorted(n.decode() if isinstance(n, bytes) else str(n) for n in found)

    def changes(self) -> bytes:
        mark = self._call(self._redis.get, _CHANGES)
        return mark if isinstance(mark, bytes) else b""

    @contextlib.asynccontextmanager
    async def lock(self, name: str) -> AsyncIterator[None]:
        """The lease for `name` across every proxy using this Redis. Waits up to LOCK_WAIT for
        it (held elsewhere, or Redis unreachable), then StoreError: never refresh without it."""
        client = self._client()
        token, key = secrets.token_hex(16), _lock(name)
        deadline, pause = time.monotonic() + LOCK_WAIT, 0.02
        problem = "another proxy holds it"
        while True:
            try:
                if await client.set(key, token, nx=True, px=int(LEASE * 1000)):
                    fence = int(await client.incr(_fence(name)))
                    break
            except (redis.RedisError, OSError) as exc:
                problem = f"Redis at {self.where} does not answer ({type(exc).__name__})"
            if time.monotonic() > deadline:
                raise StoreError(f"{name}: no refresh lease within {LOCK_WAIT:.0f} s: {problem}")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)
        self._fences[name] = fence
        renewing = asyncio.ensure_future(self._renew(client, key, token))
        try:
            yield
        finally:
            renewing.cancel()
            if self._fences.get(name) == fence:
                del self._fences[name]
            with contextlib.suppress(redis.RedisError, OSError):
                await client.eval(_RELEASE, 1, key, token)

    # -- helpers ------------------------------------------------------------------------------

    def _client(self) -> redis.asyncio.Redis:
        """The asyncio client of the running loop (its connections belong to that loop)."""
        loop = asyncio.get_running_loop()
        if self._async is None or self._async_loop is not loop:
            self._async_loop = loop
            self._async = redis.asyncio.Redis.from_url(self.url, **connection(self.url))
        return self._async

    async def _renew(self, client: redis.asyncio.Redis, key: str, token: str) -> None:
        while True:
            await asyncio.sleep(LEASE / 3)
            with contextlib.suppress(redis.RedisError, OSError):
                await client.eval(_RENEW, 1, key, token, str(int(LEASE * 1000)))

    def _call(self, fn: Callable[..., Any], *args: object) -> Any:
        if not self._key_checked:
            self._key_checked = True
            try:
                self._check_key()
            except BaseException:
                self._key_checked = False
                raise
        try:
            return fn(*args)
        except (redis.RedisError, OSError) as exc:
            raise StoreError(f"Redis at {self.where}: {_why(exc)}") from None

    def _check_key(self) -> None:
        """A key that cannot read this Redis's entries is refused before any use, and named."""
        nonce_and_box = self._call(self._redis.get, _KEYCHECK_KEY)
        if nonce_and_box is None:
            nonce = os.urandom(_NONCE)
            box = nonce + self._aead.encrypt(nonce, _KEYCHECK, b"keycheck")
            self._call(self._redis.set, _KEYCHECK_KEY, box, None, None, True)  # nx
            nonce_and_box = self._call(self._redis.get, _KEYCHECK_KEY)
        assert isinstance(nonce_and_box, bytes)
        try:
            self._aead.decrypt(nonce_and_box[:_NONCE], nonce_and_box[_NONCE:], b"keycheck")
        except (InvalidTag, ValueError):
            raise StoreError(
                f"the store key ({KEY_ENV}) is not the one the logins in Redis at "
                f"{self.where} were saved with"
            ) from None


def _why(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def _entry(name: str) -> str:
    return f"{PREFIX}tok:{name}"


def _fence(name: str) -> str:
    return f"{PREFIX}fence:{name}"


def _lock(name: str) -> str:
    return f"{PREFIX}lock:{name}"


_NAMES = f"{PREFIX}names"
_CHANGES = f"{PREFIX}changes"
_KEYCHECK_KEY = f"{PREFIX}keycheck"
