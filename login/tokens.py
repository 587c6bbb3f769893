"""The credentials API: log in, hand out valid access tokens, refresh safely.

`TokenService.access(provider, bucket)` is what the addon calls for every
request. A valid cached token costs no I/O. A refresh is single-flight within the
process and serialised across processes by a lock per provider+bucket; under
that lock the store is re-read (another process may have refreshed already) and
the rotated tokens are saved before anyone gets the new access token.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

from .config import Config
from .credential import Credential, State
from .errors import BadEntry, KeyswapError, NeedsLogin
from .net import make_client
from .providers import PROVIDERS, LoginContext, Provider
from .store import Store, async_file_lock, entry_name, open_store
from .ui import LoginUI


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
        return {**extra, "Authorization": f"Bearer {self.token}"}


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
        self._locks: dict[str, asyncio.Lock] = {}
        self._endpoints: dict[str, dict[str, str]] = {}

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = open_store()
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
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            if not force and (cached := self._usable(self._cache.get(name), p, rejected)):
                return cached
            async with async_file_lock(name):
                cred = await asyncio.to_thread(self.store.load, provider, bucket)
                if cred is None:
                    self._cache.pop(name, None)
                    raise NeedsLogin(provider, bucket, "not logged in")
                if cred.needs_login:
                    raise NeedsLogin(provider, bucket, cred.needs_login)
                fresh = None if force else self._usable(cred, p, rejected)
                if fresh is None:
                    fresh = await self._refresh_stored(p, cred)
            self._cache[name] = fresh
            return fresh

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
        except NeedsLogin as exc:
            dead = cred.model_copy(update={"needs_login": str(exc), "updated_at": time.time()})
            await asyncio.to_thread(self.store.save, dead)
            self._cache.pop(cred.name, None)
            raise
        await asyncio.to_thread(self.store.save, fresh)
        return fresh

    # -- the CLI's API -------------------------------------------------------------------

    async def login(
        self,
        provider: str,
        bucket: str,
        ui: LoginUI,
        *,
        timeout: float = 300.0,
    ) -> Credential:
        p = get_provider(provider)
        ctx = LoginContext(self.http, self.endpoints(provider), ui, bucket, timeout)
        cred = await p.login(ctx)
        async with async_file_lock(cred.name):
            await asyncio.to_thread(self.store.save, cred)
        self._cache[cred.name] = cred
        return cred

    def retain(self, names: set[str]) -> None:
        """Forget cached tokens of logins no longer in the store (logged out elsewhere)."""
        for name in [n for n in self._cache if n not in names]:
            del self._cache[name]

    def logout(self, provider: str, bucket: str) -> bool:
        get_provider(provider)
        name = entry_name(provider, bucket)
        self._cache.pop(name, None)
        return self.store.delete(provider, bucket)

    def buckets(self, provider: str) -> list[str]:
        """The provider's buckets in rotation order: the config's list, else by name."""
        configured = self.config.provider(provider).buckets
        return list(configured) if configured is not None else self.store.buckets(provider)

    def entries(self, provider: str | None = None) -> list[Entry]:
        """One line per login; a bad entry is listed with its problem, never stops the rest."""
        out = []
        for name in self.store.names():
            prov, _, bucket = name.partition(":")
            if provider and prov != provider:
                continue
            try:
                cred = self.store.load(prov, bucket)
            except BadEntry as exc:
                out.append(Entry(prov, bucket, exc.state, detail=str(exc)))
                continue
            if cred is None:
                continue
            rules = self.config.provider(prov).rules(bucket)
            out.append(
                Entry(
                    prov,
                    bucket,
                    cred.state(),
                    cred.account,
                    cred.expires_at,
                    cred.needs_login,
                    rules.models,
                    rules.exclude_models,
                )
            )
        return out
