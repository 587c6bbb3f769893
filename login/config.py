"""The config file (TOML, optional): loading, validation and where it lives.

Every error names the file, the key and the reason, so a user can fix it
without reading code.
"""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError

Strategy = Literal["sticky", "round-robin", "failover"]
BUCKET_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9@._+-]{0,127}$"
Bucket = Annotated[str, Field(pattern=BUCKET_PATTERN)]


@functools.lru_cache(maxsize=256)  # asked on every injected request
def is_loopback_host(host: str) -> bool:
    """localhost, 127/8, ::1, and IPv4-mapped loopback (::ffff:127.0.0.1)."""
    host = host.strip("[]").lower().split("%")[0]
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def check_url(url: str) -> str:
    """An endpoint URL: https, or plain http only to a loopback host (tests, local fakes)."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{url!r} is not an absolute http(s) URL")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ValueError(f"{url!r} must use https (plain http is allowed only for loopback hosts)")
    return url


class _Strict(BaseModel):
    # strict: TOML has real types, so `allow_remote = "yes"` or `cooldown = "60"` is a mistake
    # to report, not a value to coerce.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# Where `keyswap proxy` listens on 127.0.0.1 unless `[proxy] port` says otherwise.
DEFAULT_PORT = 8080


class ProxySettings(_Strict):
    # The port `keyswap proxy` listens on, and `keyswap env` / `keyswap doctor` point at.
    port: int = Field(DEFAULT_PORT, ge=1, le=65535)
    # sticky: a conversation stays on one account (its prompt cache); round-robin: every
    # request to the next account; failover: the first account until it is limited.
    strategy: Strategy = "sticky"
    # A bucket past this fraction of any quota window gets no new conversations while
    # another has headroom (its ongoing conversations stay until it is limited).
    move_at: float = Field(0.95, gt=0, le=1)
    cooldown: float = Field(60.0, gt=0, description="seconds, when a 429 carries no reset hint")
    allow_remote: bool = False
    # How long a request waits for a login the proxy starts itself (`enabled = true`).
    login_wait: float = Field(120.0, gt=0)
    # Web pages (by origin, e.g. "https://my.app") allowed to spend the subscriptions.
    allow_origins: list[str] = Field(default_factory=list)


class ClientSettings(_Strict):
    """A client of a shared proxy: its placeholders carry `#<secret>`."""

    secret: str = Field(min_length=16, pattern=r"^[A-Za-z0-9._~+/=-]+$")
    # "provider" or "provider:bucket"; default: everything.
    allow: list[str] = Field(default_factory=lambda: ["*"])

    def admits(self, provider: str, bucket: str | None = None) -> bool:
        """Whether this client may use that bucket (or, with no bucket, some bucket)."""
        return any(
            rule in ("*", provider)
            or rule == f"{provider}:{bucket}"
            or (bucket is None and rule.startswith(f"{provider}:"))
            for rule in self.allow
        )


class BucketRules(_Strict):
    """Which models one bucket serves (shell-style patterns, e.g. "claude-*")."""

    models: list[str] | None = None
    exclude_models: list[str] = Field(default_factory=list)

    def admits(self, model: str | None) -> bool:
        if model is None:
            return True
        if any(fnmatch.fnmatchcase(model, p) for p in self.exclude_models):
            return False
        return self.models is None or any(fnmatch.fnmatchcase(model, p) for p in self.models)

    def describe(self) -> str:
        parts = []
        if self.models is not None:
            parts.append("models " + ", ".join(self.models))
        if self.exclude_models:
            parts.append("not " + ", ".join(self.exclude_models))
        return "; ".join(parts) or "any model"


# Headers that say how a request is framed or routed: a config cannot set them.
_FRAMING_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer"}
    | {"proxy-authorization", "keep-alive"}
)


class ProviderSettings(_Strict):
    # None: log in with `keyswap login`; True: also on first use, inside the proxy;
    # False: placeholders for this provider are refused.
    enabled: bool | None = None
    strategy: Strategy | None = None
    buckets: list[Bucket] | None = None
    endpoints: dict[str, str] = Field(default_factory=dict)
    bucket: dict[Bucket, BucketRules] = Field(default_factory=dict)

    # -- a provider defined here instead of built in (login/providers/defined.py) -----------
    # Set `flow` to define one; every key below is refused for a built-in provider.
    flow: Literal["device", "pkce"] | None = None
    title: str | None = Field(None, min_length=1, max_length=80)
    # OIDC: the endpoints come from `{issuer}/.well-known/openid-configuration`, or from
    # `discovery` (the document's URL); `endpoints` overrides single ones.
    issuer: str | None = None
    discovery: str | None = None
    client_id: str | None = Field(None, min_length=1)
    # An installed app's published secret, if its issuer wants one (not a user secret).
    client_secret: str | None = None
    scopes: list[str] = Field(default_factory=list)
    # The API base URL the tokens are delivered to; clients use it as their base URL.
    api: str | None = None
    # The API the clients speak, for the shape of keyswap's own error answers.
    dialect: Literal["openai", "anthropic"] = "openai"
    # How the token is sent: `<token_header>: <token_prefix><token>`.
    token_header: str = Field("Authorization", pattern=r"^[A-Za-z0-9-]{1,64}$")
    token_prefix: str = Field("Bearer ", max_length=32)
    # Static headers sent with every API request.
    headers: dict[str, str] = Field(default_factory=dict)
    # Whether the token endpoint takes a form (OAuth's default) or JSON.
    token_format: Literal["form", "json"] = "form"

    def rules(self, bucket: str) -> BucketRules:
        return self.bucket.get(bucket) or _ANY_MODEL

    @field_validator("endpoints")
    @classmethod
    def _urls(cls, value: dict[str, str]) -> dict[str, str]:
        for url in value.values():
            check_url(url)
        return value

    @field_validator("issuer", "discovery", "api")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else check_url(value)

    @field_validator("token_header")
    @classmethod
    def _token_header(cls, value: str) -> str:
        if value.lower() in _FRAMING_HEADERS:
            raise ValueError(f"{value!r} frames the request; the token cannot go there")
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", name):
                raise ValueError(f"{name!r} is not a header name")
            if name.lower() in _FRAMING_HEADERS:
                raise ValueError(f"{name!r} frames the request; keyswap sets it")
            if any(c in text for c in "\r\n\0"):
                raise ValueError(f"the value of {name!r} holds a line break or NUL")
        return value


_ANY_MODEL = BucketRules()


class StoreSettings(_Strict):
    # Where logins are kept: a redis:// or rediss:// URL shares them between proxies (its
    # password from the URL, or the server's own config; keyswap never writes it here).
    # None: the keyring, else the encrypted file store. KEYSWAP_STORE overrides it.
    url: str | None = None

    @field_validator("url")
    @classmethod
    def _redis(cls, value: str | None) -> str | None:
        if value is not None and value.split("://", 1)[0].lower() not in ("redis", "rediss"):
            raise ValueError(f"{value!r} is not a redis:// or rediss:// URL")
        return value


class Config(_Strict):
    proxy: ProxySettings = ProxySettings()
    store: StoreSettings = StoreSettings()
    resolve: dict[str, str] = Field(default_factory=dict)
    providers: dict[str, ProviderSettings] = Field(default_factory=dict)
    # The providers `providers` defines (`flow` set), built and checked by `load_config`.
    defined: dict[str, Any] = Field(default_factory=dict, exclude=True)
    # Once any client is listed, every placeholder must carry one of their secrets.
    clients: dict[str, ClientSettings] = Field(default_factory=dict)
    path: str | None = Field(None, exclude=True)

    @field_validator("resolve")
    @classmethod
    def _host_ports(cls, value: dict[str, str]) -> dict[str, str]:
        for key, target in value.items():
            for item in (key, target):
                host, sep, port = item.rpartition(":")
                if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                    raise ValueError(f"{item!r} must be host:port")
        return value

    def provider(self, name: str) -> ProviderSettings:
        return self.providers.get(name) or _UNCONFIGURED

    def resolve_target(self, host: str, port: int) -> tuple[str, int] | None:
        """Where `[resolve]` says to dial host:port instead of DNS, if anywhere."""
        target = self.resolve.get(f"{host}:{port}")
        if target is None:
            return None
        addr, _, p = target.rpartition(":")
        return addr.strip("[]"), int(p)


# What `provider()` answers for a provider the file does not mention (read-only).
_UNCONFIGURED = ProviderSettings()


def default_config_path() -> Path:
    env = os.environ.get("KEYSWAP_CONFIG")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_config_dir("keyswap", appauthor=False)) / "config.toml"


def _key_of(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)


def load_config(path: str | Path | None = None) -> Config:
    """Read and validate the config. A missing file at the default path means defaults;
    a missing file that was named explicitly is an error."""
    explicit = path is not None or bool(os.environ.get("KEYSWAP_CONFIG"))
    file = Path(path).expanduser() if path is not None else default_config_path()
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        if explicit:
            raise ConfigError(str(file), "", "file not found") from None
        return Config()
    except OSError as exc:
        raise ConfigError(str(file), "", exc.strerror or str(exc)) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(str(file), "", f"not valid TOML ({exc})") from None
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        reason = first["msg"].removeprefix("Value error, ")
        raise ConfigError(str(file), _key_of(first["loc"]), reason) from None
    defined = _check_providers(config, str(file))
    return config.model_copy(update={"path": str(file), "defined": defined})


# Names that are commands of `keyswap login` (or mean something in a placeholder), so no
# provider may take them.
RESERVED_NAMES = frozenset(
    {"status", "logout", "env", "doctor", "enable", "disable", "refresh", "page", "import"}
    | {"login", "help", "all", "oauth", "keyswap", "proxy", "service", "migrate"}
)
PROVIDER_NAME = r"^[a-z][a-z0-9-]{0,31}$"


def _check_providers(config: Config, file: str) -> dict[str, Any]:
    """The providers the file defines, built; a ConfigError for any block that is wrong."""
    from .providers import BUILT_IN  # late: providers import config helpers
    from .providers.defined import DefinitionError, define

    defined: dict[str, Any] = {}
    for name, settings in config.providers.items():
        key = f"providers.{name}"
        provider = BUILT_IN.get(name)
        if provider is None and settings.flow is None:
            known = ", ".join(sorted(BUILT_IN))
            raise ConfigError(
                file,
                key,
                f"unknown provider (built in: {known}); to define one, give it a `flow`",
            )
        if provider is None:
            if not re.match(PROVIDER_NAME, name) or name in RESERVED_NAMES:
                raise ConfigError(
                    file,
                    key,
                    "a defined provider's name is lower-case letters, digits and '-' "
                    "(up to 32), and not a command of `keyswap login`",
                )
            try:
                defined[name] = provider = define(name, settings, defined.values())
            except DefinitionError as exc:
                raise ConfigError(file, f"{key}.{exc.key}" if exc.key else key, str(exc)) from None
        else:
            set_here = settings.model_fields_set & _DEFINITION_FIELDS
            if set_here:
                raise ConfigError(
                    file,
                    f"{key}.{sorted(set_here)[0]}",
                    f"{name} is built in: only enabled, strategy, buckets, bucket and "
                    "endpoints can be set for it",
                )
        for endpoint in settings.endpoints:
            if endpoint not in provider.endpoints:
                known = ", ".join(sorted(provider.endpoints))
                raise ConfigError(
                    file, f"{key}.endpoints.{endpoint}", f"unknown endpoint (known: {known})"
                )
    return defined


_DEFINITION_FIELDS = frozenset(ProviderSettings.model_fields) - {
    "enabled",
    "strategy",
    "buckets",
    "endpoints",
    "bucket",
}
