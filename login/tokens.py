"""The credentials API: log in, hand out valid access tokens, refresh safely.

`TokenService.access(provider, bucket)` is what the addon calls for every
request. A valid cached token costs no I/O. A refresh is single-flight within the
process and serialised across processes by a lock per provider+bucket; under
that lock the store is re-read (another process may have refreshed already) and
the rotated tokens are saved before anyone gets the new access token.

When the store cannot take new tokens (a full disk, a locked keyring), they are held in
memory, served, used for the next refresh instead of the spent ones on disk, and saved as
soon as the store takes them again: a rotated refresh token is never thrown away.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

from .config import Config
from .credential import Credential, State
from .errors import BadEntry, KeyswapError, NeedsLogin, RefreshFailed, StoreError, login_command
from .net import make_client
from .providers import PROVIDERS, LoginContext, Provider
from .providers.sources import IMPORTED_FROM
from .providers.usage import Window
from .redact import redact
from .store import Store, entry_name, open_store
from .ui import LoginUI

log = logging.getLogger(__name__)

# Seconds between tries to save held tokens (each access and the proxy's timer try when due).
SAVE_RETRY = 5.0
# A process about to exit (the CLI) tries this many more times, this far apart.
SETTLE_TRIES = 3
SETTLE_PAUSE = 1.0


@dataclass(frozen=True)
class Access:
    """A usable access token, where it goes, and the headers its provider wants beside it."""

    credential: Credential
    provider: Provider = field(repr=False)
    endpoints: Mapping[str, str] = field(repr=False)

    @property
    def token(self) -> str:
        return self.credential.token

    @property
    def base_url(self) -> str:
        return self.provider.api_base(self.credential, self.endpoints)

    def headers(self, path: str, client_headers: Mapping[str, str], body: bytes) -> dict[str, str]:
        extra = self.provider.api_headers(self.credential, path, client_headers, body)
        return {**extra, **self.provider.auth_headers(self.token)}


# States of a login whose store entry cannot be used as it is (`status` exits 1).
BAD_STATES = ("corrupt", "unsafe")


@dataclass(frozen=True)
class Entry:
    """One line of `status`: never carries a token."""

    provider: str
    bucket: str
    state: State | str
    account: str | None = None
    expires_at: float | None = None
    detail: str | None = None
    models: list[str] | None = None
    exclude_models: list[str] = field(default_factory=list)
    imported: str | None = None  # the file (or keychain item) an imported login came from


@dataclass
class _Held:
    """New tokens the store refused: maybe the only copy of a live refresh token."""

    cred: Credential
    reason: str
    retry_at: float  # time.monotonic()

    @property
    def note(self) -> str:
        return f"not saved yet ({self.reason}); held in memory and retried"


def _reason(exc: OSError | StoreError) -> str:
    """Why a save failed, in a few words ("No space left on device")."""
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc)


def get_provider(name: str) -> Provider:
    try:
        return PROVIDERS[name]
    except KeyError:
        known = ", ".join(sorted(PROVIDERS))
        raise KeyswapError(f"unknown provider {name!r} (known: {known})") from None


class TokenService:
    def __init__(
        self,
        config: Config | None = None,
        store: Store | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.config = config or Config()
        self._store = store
        self._client = client
        self._cache: dict[str, Credential] = {}
        self._held: dict[str, _Held] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._endpoints: dict[str, dict[str, str]] = {}
        self._mark: bytes | None = None  # the store's change mark when `follow` last looked

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = open_store(self.config.store.url)
        return self._store

    @property
    def http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = make_client(self.config)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    def endpoints(self, provider: str) -> dict[str, str]:
        found = self._endpoints.get(provider)
        if found is None:
            overrides = self.config.provider(provider).endpoints
            found = self._endpoints[provider] = {**get_provider(provider).endpoints, **overrides}
        return found

    def reconfigure(self, config: Config, client: httpx.AsyncClient | None = None) -> None:
        """Use a new config (and outbound client); cached tokens stay valid."""
        self.config = config
        self._endpoints.clear()
        if client is not None:
            old, self._client = self._client, client
            if old is not None:
                asyncio.get_running_loop().create_task(old.aclose())

    # -- the addon's API -----------------------------------------------------------------

    async def access(self, provider: str, bucket: str) -> Access:
        """A valid access token for provider/bucket, refreshed if it is (nearly) expired.
        Raises NeedsLogin when only a new login can help."""
        p = get_provider(provider)
        name = entry_name(provider, bucket)
        if self._held:
            await self.save_held()
        cred = self._cache.get(name)
        if cred is None or cred.state(p.refresh_skew) != "valid":
            cred = await self.refresh(provider, bucket, force=False)
        return Access(cred, p, self.endpoints(provider))

    async def refresh(
        self, provider: str, bucket: str, *, force: bool = True, rejected: str | None = None
    ) -> Credential:
        """Refresh provider/bucket. `rejected` is a token the API just refused (401): a
        different, valid token from the store or another caller is used instead of
        refreshing again. `force=False` refreshes only when needed."""
        p = get_provider(provider)
        name = entry_name(provider, bucket)
        async with self._lock(name):
            if not force and (cached := self._usable(self._cache.get(name), p, rejected)):
                return cached
            async with self.store.lock(name):
                cred = await self._current(provider, bucket)
                if cred is None:
                    self._cache.pop(name, None)
                    raise NeedsLogin(provider, bucket, "not logged in")
                if cred.needs_login:
                    raise NeedsLogin(provider, bucket, cred.detail or "a new login is needed")
                fresh = None if force else self._usable(cred, p, rejected)
                if fresh is None:
                    fresh = await self._refresh_stored(p, cred)
            self._cache[name] = fresh
            return fresh

    async def usage(self, provider: str, bucket: str) -> list[Window]:
        """The account's quota windows from the provider's usage endpoint, if it has one."""
        p = get_provider(provider)
        cred = self._cache.get(entry_name(provider, bucket)) or await asyncio.to_thread(
            self.store.load, provider, bucket
        )
        if cred is None or cred.needs_login:
            return []
        return await p.poll_usage(self.http, self.endpoints(provider), cred)

    async def revoked(self, provider: str, bucket: str, token: str, why: str) -> None:
        """The provider refused the login itself when `token` was sent (revoked, suspended):
        store it as needing a new login, so that no process uses it again, also after a
        restart, until the user logs in again; unless a login since replaced that token."""
        name = entry_name(provider, bucket)
        async with self._lock(name), self.store.lock(name):
            cred = await self._current(provider, bucket)
            if cred is None or cred.needs_login or cred.token != token:
                return
            dead = cred.model_copy(update={"needs_login": why, "updated_at": time.time()})
            await self._keep(dead)
            self._cache.pop(name, None)
        log.warning("keyswap: %s/%s needs a new login: %s", provider, bucket, why)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def _current(self, provider: str, bucket: str) -> Credential | None:
        """The newest credential, with the entry's locks held: held tokens (saved first if the
        store takes them now), else the store's."""
        name = entry_name(provider, bucket)
        if name in self._held:
            await self._save_held(name)
        held = self._held.get(name)
        return held.cred if held else await asyncio.to_thread(self.store.load, provider, bucket)

    def _usable(
        self, cred: Credential | None, p: Provider, rejected: str | None
    ) -> Credential | None:
        if cred is None or cred.token == rejected or cred.state(p.refresh_skew) != "valid":
            return None
        return cred

    async def _refresh_stored(self, p: Provider, cred: Credential) -> Credential:
        """Called with the cross-process lock held: the new tokens reach the store before
        they reach anyone else."""
        try:
            fresh = await p.refresh(self.http, self.endpoints(p.name), cred)
        except NeedsLogin as refused:
            # An imported login whose tool has refreshed it since: say so, not just "refused".
            exc = await asyncio.to_thread(p.taken_back, cred) or refused
            why = redact(exc.why, cred.secrets())
            dead = cred.model_copy(update={"needs_login": why, "updated_at": time.time()})
            await self._keep(dead)
            self._cache.pop(cred.name, None)
            raise exc from None
        await self._keep(fresh)
        if not fresh.token:
            self._cache.pop(cred.name, None)  # the old access token went with the old pair
            raise RefreshFailed(
                f"{cred.provider}/{cred.bucket}: the token endpoint sent a new refresh token but "
                "no access token; the new refresh token is kept and the next request refreshes"
            )
        return fresh

    # -- saving, and holding what cannot be saved yet ------------------------------------

    async def _keep(self, cred: Credential) -> None:
        """Save `cred` (its file lock is held). When the store refuses, hold it in memory: it
        may carry the only live refresh token, the one on disk being spent."""
        try:
            await asyncio.to_thread(self.store.save, cred)
        except (OSError, StoreError) as exc:
            self._hold(cred, _reason(exc))
        else:
            if self._held.pop(cred.name, None) is not None:
                log.info("%s/%s: the held tokens are saved now", cred.provider, cred.bucket)

    def _hold(self, cred: Credential, reason: str) -> None:
        before = self._held.get(cred.name)
        self._held[cred.name] = _Held(cred, reason, time.monotonic() + SAVE_RETRY)
        if before is None or before.reason != reason:  # one line per problem, not per try
            log.warning(
                "%s/%s: the new tokens could not be saved (%s); keeping them in memory and "
                "retrying",
                cred.provider,
                cred.bucket,
                reason,
            )

    async def _save_held(self, name: str) -> None:
        """Try to save held tokens (the entry's locks are held), unless a login made
        elsewhere since (`keyswap login` again) has replaced them."""
        held = self._held.get(name)
        if held is None:
            return
        stored = await asyncio.to_thread(self._stored, held.cred)
        if stored and stored.updated_at > held.cred.updated_at and not stored.needs_login:
            del self._held[name]
            self._cache.pop(name, None)
            return
        await self._keep(held.cred)

    def _stored(self, cred: Credential) -> Credential | None:
        try:
            return self.store.load(cred.provider, cred.bucket)
        except StoreError:
            return None  # unreadable: the held tokens replace it

    async def _retry(self, name: str) -> None:
        async with self._lock(name), self.store.lock(name):
            await self._save_held(name)

    async def save_held(self) -> None:
        """Try again to save held tokens that are due; the proxy calls this every second."""
        now = time.monotonic()
        for name in [n for n, h in self._held.items() if h.retry_at <= now]:
            await self._retry(name)

    async def settle(self, name: str) -> None:
        """For a process about to exit: try held tokens a few more times, then raise a
        StoreError naming the login and the reason, since they are lost with the process."""
        for _ in range(SETTLE_TRIES):
            if name not in self._held:
                return
            await asyncio.sleep(SETTLE_PAUSE)
            await self._retry(name)
        held = self._held.get(name)
        if held is not None:
            provider, bucket = held.cred.provider, held.cred.bucket
            raise StoreError(
                f"{provider}/{bucket}: the new tokens could not be saved ({held.reason}) and "
                "are lost when this command ends; fix that, then run "
                f"`{login_command(provider, bucket)}` if the login no longer works"
            )

    # -- the CLI's API -------------------------------------------------------------------

    async def login(
        self,
        provider: str,
        bucket: str,
        ui: LoginUI,
        *,
        timeout: float | None = None,
        device: bool = False,
        paste: bool = False,
        options: Mapping[str, str] | None = None,
    ) -> Credential:
        """Sign in (see LoginContext for `timeout`, `device` and `paste`) and keep the login."""
        p = get_provider(provider)
        ctx = LoginContext(
            self.http,
            self.endpoints(provider),
            ui,
            bucket,
            timeout,
            device,
            paste,
            dict(options or {}),
        )
        cred = await p.login(ctx)
        async with self.store.lock(cred.name):
            await self._keep(cred)
        self._cache[cred.name] = cred
        return cred

    async def adopt(self, seed: Credential, ui: LoginUI) -> Credential:
        """Take over a login another tool made (`keyswap import`): refresh it once
        with the provider, as any refresh, to prove it alive and get tokens of keyswap's own.
        Under the entry's locks; a rotated refresh token is saved as soon as it arrives,
        before anything else may fail. NeedsLogin (nothing stored) when the grant is dead."""
        p = get_provider(seed.provider)
        endpoints = self.endpoints(p.name)
        async with self._lock(seed.name), self.store.lock(seed.name):
            fresh = await p.refresh(self.http, endpoints, seed)
            if p.rotates_refresh:
                await self._keep(fresh)  # the source's refresh token is spent now
            ctx = LoginContext(self.http, endpoints, ui, seed.bucket)
            fresh = await p.finish_import(ctx, fresh)
            await self._keep(fresh)
            if fresh.token:
                self._cache[fresh.name] = fresh
            else:
                self._cache.pop(fresh.name, None)
        return fresh

    def names(self) -> list[str]:
        """Every login as "provider:bucket": the store's, and any held that it lacks."""
        return sorted(set(self.store.names()) | set(self._held))

    async def follow(self) -> list[Credential]:
        """Take up what other processes stored for the logins held in memory (a login or a
        refresh made by the CLI or another proxy), once the store says something changed.
        Returns the ones that are new logins (`login_at` differs), whose bucket may now be
        another account."""
        mark = await asyncio.to_thread(self.store.changes)
        last, self._mark = self._mark, mark
        if last is None or mark == last:
            return []
        held = [c for n, c in self._cache.items() if n not in self._held]
        stored = await asyncio.to_thread(lambda: {c.name: self._stored(c) for c in held})
        new_logins = []
        for cred in held:
            now = self._cache.get(cred.name)
            found = stored.get(cred.name) or cred  # gone: `retain` forgets it
            if now is not cred or found.updated_at <= cred.updated_at:
                continue  # unchanged, or changed here meanwhile (this process's is newer)
            if found.login_at != cred.login_at:
                new_logins.append(found)
            if found.state(get_provider(found.provider).refresh_skew) == "valid":
                self._cache[cred.name] = found
            else:
                del self._cache[cred.name]  # the next use refreshes it, or says to log in
        return new_logins

    def retain(self, names: set[str]) -> None:
        """Forget cached tokens of logins no longer in the store (logged out elsewhere)."""
        for name in [n for n in self._cache if n not in names and n not in self._held]:
            del self._cache[name]

    def logout(self, provider: str, bucket: str) -> bool:
        get_provider(provider)
        name = entry_name(provider, bucket)
        self._cache.pop(name, None)
        held = self._held.pop(name, None)
        return self.store.delete(provider, bucket) or held is not None

    def buckets(self, provider: str) -> list[str]:
        """The provider's buckets in rotation order: the config's list, else by name."""
        configured = self.config.provider(provider).buckets
        return list(configured) if configured is not None else self.store.buckets(provider)

    def entries(self, provider: str | None = None) -> list[Entry]:
        """One line per login; a bad entry is listed with its problem, never stops the rest."""
        out = []
        held = dict(self._held)  # the proxy calls this from a thread
        for name in self.names():
            prov, _, bucket = name.partition(":")
            if provider and prov != provider:
                continue
            try:
                cred = held[name].cred if name in held else self.store.load(prov, bucket)
            except BadEntry as exc:
                out.append(Entry(prov, bucket, exc.state, detail=str(exc)))
                continue
            if cred is None:
                continue
            rules = self.config.provider(prov).rules(bucket)
            detail = cred.detail or (held[name].note if name in held else None)
            out.append(
                Entry(
                    prov,
                    bucket,
                    cred.state(),
                    cred.account,
                    cred.expires_at,
                    detail,
                    rules.models,
                    rules.exclude_models,
                    cred.extra.get(IMPORTED_FROM),
                )
            )
        return out
