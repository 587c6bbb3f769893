"""Kiro (AWS): AWS Builder ID or IAM Identity Center (AWS SSO OIDC device flow), or a social
login (Google/GitHub) through Kiro's own auth service; Anthropic Messages and OpenAI Chat
Completions requests are translated for Kiro's runtime and its AWS event stream answer is
re-emitted in the client's dialect (kiro_translate.py, kiro_stream.py). Facts with sources:
docs/providers.md §7.1 (KLB = minpeter/kiro-lb, CPA-jc = jc01rho/CLIProxyAPIPlus).

Terms: Kiro's pricing FAQ says use "through third-party automation harnesses … that route
requests outside of Kiro's native interfaces is not permitted", and suspensions (403
`TEMPORARILY_SUSPENDED`) are reported. keyswap supports it as the user's own account and
risk, and does not forge per-account Kiro IDE fingerprints.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import httpx
from pydantic import SecretStr

from ..credential import Credential
from ..errors import ClientError, LoginError, NeedsLogin, RefreshFailed
from ..flows import authcode
from ..flows.http import body_of, send
from ..redact import redact
from .base import (
    BROWSER_WAIT,
    ApiCall,
    LocalReply,
    LoginContext,
    LoginOption,
    Provider,
    Route,
    seconds,
)
from .kiro_translate import (
    KNOWN_MODELS,
    KiroAnswer,
    KiroError,
    models_reply,
    to_kiro,
)
from .streams import Reshaper
from .usage import Outcome, Window

BUILDER_ID = "builder-id"
IDC = "idc"
SOCIAL = "social"
DEFAULT_REGION = "us-east-1"
# AWS SSO OIDC scopes (KLB `kiro/device_login.py`; CPA-jc `sso_oidc.go` adds more).
SCOPES = (
    "codewhisperer:completions",
    "codewhisperer:analysis",
    "codewhisperer:conversations",
)
CLIENT_NAME = "kiro-cli"  # KLB; CPA-jc says "Kiro IDE"
SOCIAL_CLIENT = "kiro-cli"  # the social device flow's clientId (KLB, CPA-jc)
SOCIAL_PROVIDERS = {"google": "Google", "github": "Github"}
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
# What an answer means for the account (KLB `kiro_errors.py`, `account_errors.py`): 429 is
# throttling, 402 `MONTHLY_REQUEST_COUNT` the month's allowance spent (the bucket rests until
# the reset the usage endpoint names, `poll_usage`), 403 an expired token (refresh once; a
# 403 that survives the refresh, such as `TEMPORARILY_SUSPENDED`, reaches the client with
# Kiro's reason), 401 likewise.
OUTCOMES: dict[int, Outcome] = {429: "rotate", 402: "rotate", 401: "refresh", 403: "refresh"}
# The SDK identity Kiro's runtime is sent (KLB `kiro/utils.py` names the IDE's; keyswap names
# itself rather than forging the IDE's per-account fingerprint).
USER_AGENT = "aws-sdk-js/1.0.0 KiroIDE keyswap"


def _at(url: str, region: str) -> str:
    return url.replace("{region}", region).rstrip("/")


def _region_of_arn(arn: str | None) -> str | None:
    """`arn:aws:codewhisperer:REGION:…` → REGION (docs/providers.md §7.1: the API region
    comes from the profile ARN and may differ from the OIDC region)."""
    parts = (arn or "").split(":")
    return parts[3] if len(parts) > 4 and parts[0] == "arn" and parts[3] else None


def _secret_parts(cred: Credential) -> dict[str, str]:
    """The refresh token field: for OIDC logins a JSON object holding the refresh token and
    the client secret (both secrets, kept where secrets go); for social logins the bare
    refresh token."""
    raw = cred.refresh or ""
    if raw.startswith("{"):
        try:
            data = json.loads(raw)
        except ValueError:
            return {}
        return {k: str(v) for k, v in data.items() if isinstance(v, str)}
    return {"refreshToken": raw} if raw else {}


def _sealed(refresh: str, client_secret: str | None) -> SecretStr:
    if client_secret is None:
        return SecretStr(refresh)
    return SecretStr(json.dumps({"refreshToken": refresh, "clientSecret": client_secret}))


class Kiro(Provider):
    # -- login -----------------------------------------------------------------------------

    async def login(self, ctx: LoginContext) -> Credential:
        opts = ctx.options
        region = opts.get("region") or DEFAULT_REGION
        if opts.get("social"):
            method = SOCIAL_PROVIDERS[opts["social"].lower()]
            if getattr(ctx.ui, "no_browser", True):
                tokens = await self._social_device(ctx, method, region)
            else:
                tokens = await self._social_browser(ctx, method, region)
            return self._social_credential(ctx.bucket, tokens, method, region)
        start = opts.get("start_url")
        kind = IDC if start else BUILDER_ID
        return await self._oidc_login(ctx, kind, start or ctx.endpoints["start_url"], region)

    async def _post(
        self, http: httpx.AsyncClient, url: str, body: dict[str, Any], what: str
    ) -> tuple[int, dict[str, Any]]:
        req = http.build_request("POST", url, json=body, headers={"Accept": "application/json"})
        resp = await send(http, req, what)
        return resp.status_code, body_of(resp)

    async def _oidc_login(
        self, ctx: LoginContext, kind: str, start_url: str, region: str
    ) -> Credential:
        oidc = _at(ctx.endpoints["oidc"], region)
        status, reg = await self._post(
            ctx.http,
            f"{oidc}/client/register",
            {"clientName": CLIENT_NAME, "clientType": "public", "scopes": list(SCOPES)},
            "registering a client",
        )
        client_id, client_secret = reg.get("clientId"), reg.get("clientSecret")
        if status != 200 or not isinstance(client_id, str) or not isinstance(client_secret, str):
            raise LoginError(f"registering a client failed: HTTP {status}")
        sent: list[str | None] = [client_secret]
        status, auth = await self._post(
            ctx.http,
            f"{oidc}/device_authorization",
            {"clientId": client_id, "clientSecret": client_secret, "startUrl": start_url},
            "starting the device login",
        )
        device_code, user_code = auth.get("deviceCode"), auth.get("userCode")
        if status != 200 or not isinstance(device_code, str) or not isinstance(user_code, str):
            raise LoginError(f"starting the device login failed: HTTP {status}")
        sent.append(device_code)
        uri = str(auth.get("verificationUriComplete") or auth.get("verificationUri") or "")
        await ctx.ui.device_code(user_code, uri)
        interval = seconds(auth.get("interval")) or 5.0
        expires = seconds(auth.get("expiresIn")) or 600.0
        limit = expires if ctx.timeout is None else min(expires, ctx.timeout)
        deadline = time.monotonic() + limit
        body = {
            "clientId": client_id,
            "clientSecret": client_secret,
            "deviceCode": device_code,
            "grantType": DEVICE_GRANT,
        }
        while True:
            await asyncio.sleep(interval)
            if time.monotonic() > deadline:
                raise LoginError("the device code expired before it was approved; log in again")
            status, tokens = await self._post(
                ctx.http, f"{oidc}/token", body, "waiting for approval"
            )
            if status == 200 and isinstance(tokens.get("accessToken"), str):
                break
            code = _aws_error(tokens)
            if code == "authorization_pending":
                continue
            if code == "slow_down":
                interval += 5.0
                continue
            if code in ("expired_token", "access_denied"):
                raise LoginError(f"the device login ended: {code}")
            why = redact(str(tokens.get("error_description") or code or ""), sent)
            raise LoginError(f"the device login failed: HTTP {status} {why}".strip())
        now = time.time()
        extra = {
            "kind": kind,
            "region": region,
            "client_id": client_id,
            "start_url": start_url,
        }
        expiry = seconds(reg.get("clientSecretExpiresAt"))
        if expiry is not None:
            extra["client_secret_expires_at"] = str(int(expiry))
        arn = tokens.get("profileArn")
        if kind == IDC and isinstance(arn, str):
            extra["profile_arn"] = arn
        refresh = tokens.get("refreshToken")
        return Credential(
            provider=self.name,
            bucket=ctx.bucket,
            access_token=SecretStr(tokens["accessToken"]),
            refresh_token=_sealed(refresh, client_secret) if isinstance(refresh, str) else None,
            expires_at=self.expiry(seconds(tokens.get("expiresIn")), now),
            account="AWS Builder ID" if kind == BUILDER_ID else start_url,
            extra=extra,
            updated_at=now,
            login_at=now,
        )

    async def _social_device(self, ctx: LoginContext, method: str, region: str) -> dict[str, Any]:
        """Kiro's own device flow (KLB `device_login.py`, CPA-jc `device_login.go`): times
        in milliseconds; pending is a 200 with `status: authorization_pending`."""
        auth_base = _at(ctx.endpoints["social_auth"], region)
        status, auth = await self._post(
            ctx.http,
            f"{auth_base}/oauth/device/authorization",
            {"clientId": SOCIAL_CLIENT, "loginProvider": method},
            "starting the device login",
        )
        device_code, user_code = auth.get("deviceCode"), auth.get("userCode")
        if status != 200 or not isinstance(device_code, str) or not isinstance(user_code, str):
            raise LoginError(f"starting the device login failed: HTTP {status}")
        uri = str(auth.get("verificationUriComplete") or auth.get("verificationUri") or "")
        await ctx.ui.device_code(user_code, uri)
        interval = (seconds(auth.get("interval")) or 5000.0) / 1000
        expires = (seconds(auth.get("expiresIn")) or 600000.0) / 1000
        limit = expires if ctx.timeout is None else min(expires, ctx.timeout)
        deadline = time.monotonic() + limit
        while True:
            await asyncio.sleep(interval)
            if time.monotonic() > deadline:
                raise LoginError("the device code expired before it was approved; log in again")
            status, tokens = await self._post(
                ctx.http,
                f"{auth_base}/oauth/device/poll",
                {"clientId": SOCIAL_CLIENT, "deviceCode": device_code},
                "waiting for approval",
            )
            said = tokens.get("status") or _aws_error(tokens)
            if status == 200 and isinstance(tokens.get("accessToken"), str):
                return tokens
            if said == "authorization_pending":
                continue
            if said == "slow_down":
                interval += 5.0
                continue
            why = redact(str(said or tokens.get("message") or ""), [device_code])
            raise LoginError(f"the device login failed: HTTP {status} {why}".strip())

    async def _social_browser(self, ctx: LoginContext, method: str, region: str) -> dict[str, Any]:
        """The IDE's browser sign-in with PKCE, on its fixed callback port 3128 (KLB
        `src/browser_login.rs`: any other port is `redirect_mismatch`). The token exchange
        repeats the callback's redirect_uri exactly, `login_option` included."""
        pkce, state = authcode.Pkce.new(), authcode.new_state()
        base = ctx.endpoints["social_redirect"].rstrip("/")
        listener = authcode.CallbackListener.bind(f"{base}/oauth/callback", state)
        option = method.lower()
        url = authcode.authorize_url(
            ctx.endpoints["social_signin"],
            {
                "redirect_uri": base,
                "code_challenge": pkce.challenge,
                "code_challenge_method": "S256",
                "state": state,
                "redirect_from": "KiroIDE",
                "signin_methods": option,
            },
        )
        ctx.ui.authorize_url(url, self.title, listening=True)
        wait = BROWSER_WAIT if ctx.timeout is None else ctx.timeout
        code = await authcode.wait_for_code(listener, state, ctx.ui, wait)
        auth_base = _at(ctx.endpoints["social_auth"], region)
        status, tokens = await self._post(
            ctx.http,
            f"{auth_base}/oauth/token",
            {
                "code": code,
                "code_verifier": pkce.verifier,
                "redirect_uri": f"{base}/oauth/callback?login_option={option}",
            },
            "signing in",
        )
        if status != 200 or not isinstance(tokens.get("accessToken"), str):
            why = redact(str(tokens.get("message") or ""), [code, pkce.verifier])
            raise LoginError(f"signing in failed: HTTP {status} {why}".strip())
        return tokens

    def _social_credential(
        self, bucket: str, tokens: dict[str, Any], method: str, region: str
    ) -> Credential:
        now = time.time()
        extra = {"kind": SOCIAL, "region": region, "identity_provider": method}
        arn = tokens.get("profileArn")
        if isinstance(arn, str):
            extra["profile_arn"] = arn
        refresh = tokens.get("refreshToken")
        return Credential(
            provider=self.name,
            bucket=bucket,
            access_token=SecretStr(str(tokens["accessToken"])),
            refresh_token=SecretStr(refresh) if isinstance(refresh, str) else None,
            expires_at=self.expiry(seconds(tokens.get("expiresIn")), now),
            account=f"{method} login",
            extra=extra,
            updated_at=now,
            login_at=now,
        )

    # -- refresh ---------------------------------------------------------------------------

    async def refresh(
        self, http: httpx.AsyncClient, endpoints: Mapping[str, str], cred: Credential
    ) -> Credential:
        """OIDC logins: `/token` with the JSON body `{grantType: refresh_token, clientId,
        clientSecret, refreshToken}` (KLB `kiro/auth.py`); social logins: `refreshToken` at
        Kiro's auth service, whose refresh token rotates (docs/providers.md §7.1)."""
        parts = _secret_parts(cred)
        refresh = parts.get("refreshToken")
        if not refresh:
            raise NeedsLogin(self.name, cred.bucket, "the login expired and cannot be refreshed")
        extra = cred.extra
        region = extra.get("region") or DEFAULT_REGION
        secret = parts.get("clientSecret")
        if extra.get("kind") == SOCIAL:
            url = f"{_at(endpoints['social_auth'], region)}/refreshToken"
            body: dict[str, str] = {"refreshToken": refresh}
        else:
            until = seconds(extra.get("client_secret_expires_at"))
            if until is not None and until <= time.time():
                raise NeedsLogin(
                    self.name,
                    cred.bucket,
                    "the client registration expired (AWS registers a client for ~90 days); "
                    "logging in again registers a new one",
                )
            if not secret or not extra.get("client_id"):
                raise NeedsLogin(self.name, cred.bucket, "the client registration is missing")
            url = f"{_at(endpoints['oidc'], region)}/token"
            body = {
                "grantType": "refresh_token",
                "clientId": extra["client_id"],
                "clientSecret": secret,
                "refreshToken": refresh,
            }
        hidden = (*cred.secrets(), refresh, secret)
        try:
            status, tokens = await self._post(http, url, body, "refreshing")
        except LoginError as exc:
            raise RefreshFailed(f"{self.name}/{cred.bucket}: {exc}") from None
        access = tokens.get("accessToken")
        if status != 200 or not isinstance(access, str) or not access:
            why = redact(str(_aws_error(tokens) or tokens.get("message") or ""), hidden)
            why = why or f"HTTP {status}"
            if status in (400, 401, 403):
                raise NeedsLogin(self.name, cred.bucket, f"refresh refused ({why})")
            raise RefreshFailed(f"{self.name}/{cred.bucket}: refresh failed ({why})")
        new_refresh = tokens.get("refreshToken")
        if not isinstance(new_refresh, str) or not new_refresh:
            new_refresh = refresh
        extra = dict(extra)
        arn = tokens.get("profileArn")
        if isinstance(arn, str) and extra.get("kind") != BUILDER_ID:
            extra["profile_arn"] = arn
        now = time.time()
        return Credential(
            provider=self.name,
            bucket=cred.bucket,
            access_token=SecretStr(access),
            refresh_token=_sealed(new_refresh, secret),
            expires_at=self.expiry(seconds(tokens.get("expiresIn")), now),
            account=cred.account,
            extra=extra,
            updated_at=now,
            login_at=cred.login_at,
        )

    # -- requests ----------------------------------------------------------------------------

    def _api_region(self, cred: Credential) -> str:
        return (
            _region_of_arn(cred.extra.get("profile_arn"))
            or cred.extra.get("region")
            or DEFAULT_REGION
        )

    def api_base(self, cred: Credential, endpoints: Mapping[str, str]) -> str:
        """Builder ID tokens go to `q.{region}` (they have no profile ARN), social and
        Identity Center tokens to `runtime.{region}.kiro.dev`: a token at the other host is
        refused (docs/providers.md §7.1, KLB `kiro/config.py`, CPA-jc `kiro_models.go`)."""
        key = "api_q" if cred.extra.get("kind") == BUILDER_ID else "api"
        return _at(endpoints[key], self._api_region(cred))

    def may_deliver_to(self, host: str, endpoints: Mapping[str, str]) -> bool:
        """The `api` and `api_q` hosts in any region (the region comes from the login)."""
        for key in ("api", "api_q"):
            template = endpoints.get(key, "")
            authority = template.partition("://")[2].partition("/")[0].rpartition("@")[2]
            name = authority.rpartition(":")[0] if authority.count(":") == 1 else authority
            head, marker, tail = name.lower().partition("{region}")
            if not marker:
                if template and host == httpx.URL(template).host:
                    return True
            elif (
                host.startswith(head)
                and host.endswith(tail)
                and _is_region(host[len(head) : len(host) - len(tail)])
            ):
                return True
        return False

    def known_models(self) -> tuple[str, ...] | None:
        return KNOWN_MODELS

    def prepare(self, call: ApiCall, cred: Credential) -> ApiCall | LocalReply:
        if call.method == "GET" and call.client_path.rstrip("/").endswith("/models"):
            return models_reply(call.client_path.startswith("/v1/models"))
        if call.method != "POST":
            raise ClientError(404, "Kiro serves only /v1/messages and /v1/chat/completions")
        if call.client_path.endswith("/v1/messages"):
            dialect = "anthropic"
        elif call.client_path.endswith("/chat/completions"):
            dialect = "openai"
        else:
            raise ClientError(404, "Kiro serves only /v1/messages and /v1/chat/completions")
        builder = cred.extra.get("kind") == BUILDER_ID
        arn = None if builder else cred.extra.get("profile_arn")
        body, notes = to_kiro(dialect, call.json(), arn)
        path = "/generateAssistantResponse" if builder else "/"
        keep = {"accept-encoding"}
        headers = [(k, v) for k, v in call.headers if k.lower() in keep]
        headers += [
            ("content-type", "application/x-amz-json-1.0" if not builder else "application/json"),
            ("accept", "application/vnd.amazon.eventstream"),
        ]
        notes["dialect"] = dialect
        return replace(
            call,
            path=path,
            query=[],
            headers=headers,
            body=json.dumps(body, separators=(",", ":")).encode(),
            notes=notes,
        )

    def api_headers(
        self, cred: Credential, path: str, headers: Mapping[str, str], body: bytes
    ) -> dict[str, str]:
        """Per host (docs/providers.md §7.1): `runtime.*` takes the `x-amz-target` of
        `KiroRuntimeService`; `q.*` takes no target (CPA-jc; KLB names the Q streaming
        service's `SendMessage`)."""
        out = {
            "x-amzn-kiro-client-attribution": "kiro-ide",
            "x-amzn-codewhisperer-optout": "true",
            "amz-sdk-invocation-id": str(uuid.uuid4()),
            "amz-sdk-request": "attempt=1; max=1",
            "User-Agent": USER_AGENT,
            "x-amz-user-agent": USER_AGENT,
        }
        if path == "/":
            out["x-amz-target"] = "KiroRuntimeService.GenerateAssistantResponse"
        return out

    def reshape(self, call: ApiCall, status: int) -> Reshaper | None:
        if "dialect" not in call.notes:
            return None
        if status == 200:
            return KiroAnswer(call.notes)
        return KiroError(call.notes["dialect"], status)

    # -- limits ----------------------------------------------------------------------------

    def classify(self, status: int, headers: Mapping[str, str]) -> Outcome:
        return OUTCOMES.get(status) or super().classify(status, headers)

    def rate_limit_hint(self, headers: Mapping[str, str], body: bytes) -> float | None:
        """A 402 names no wait: the month's reset comes from the usage endpoint (the
        dispatcher falls back to the full window's reset, `Quota.spent_until`)."""
        return super().rate_limit_hint(headers, body)

    async def poll_usage(
        self, http: httpx.AsyncClient, endpoints: Mapping[str, str], cred: Credential
    ) -> list[Window]:
        """`GET q.{region}/getUsageLimits?origin=AI_EDITOR&resourceType=AGENTIC_REQUEST`
        (KLB `kiro/usage.py`): `usageBreakdownList[].{currentUsage, usageLimit}` (also with
        `WithPrecision` suffixes) and `nextDateReset` (unix seconds)."""
        region = self._api_region(cred)
        query = {"origin": "AI_EDITOR", "resourceType": "AGENTIC_REQUEST"}
        query["isEmailRequired"] = "true"
        arn = cred.extra.get("profile_arn")
        if arn and cred.extra.get("kind") != BUILDER_ID:
            query["profileArn"] = arn
        req = http.build_request(
            "GET",
            f"{_at(endpoints['api_q'], region)}/getUsageLimits",
            params=query,
            headers={
                "Authorization": f"Bearer {cred.token}",
                "Accept": "application/json",
                "User-Agent": USER_AGENT,
            },
        )
        try:
            resp = await http.send(req)
        except httpx.HTTPError:
            return []
        if resp.status_code != 200:
            return []
        return usage_windows(body_of(resp))


def usage_windows(data: Mapping[str, Any]) -> list[Window]:
    reset = seconds(data.get("nextDateReset"))
    if reset is not None and reset > 1e11:  # milliseconds
        reset /= 1000
    windows = []
    items = data.get("usageBreakdownList")
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, dict):
            continue
        used = seconds(item.get("currentUsageWithPrecision", item.get("currentUsage")))
        limit = seconds(item.get("usageLimitWithPrecision", item.get("usageLimit")))
        if used is None or not limit:
            continue
        name = str(item.get("resourceType") or item.get("displayName") or "monthly").lower()
        item_reset = seconds(item.get("nextDateReset"))
        if item_reset is not None and item_reset > 1e11:
            item_reset /= 1000
        windows.append(Window(name, used / limit, item_reset or reset, None, "monthly"))
    return windows


def _is_region(text: str) -> bool:
    """An AWS region name such as us-east-1 or eu-central-1 (letters, digits, dashes)."""
    return 3 <= len(text) <= 20 and all(c.isalnum() or c == "-" for c in text) and "-" in text


def _aws_error(data: Mapping[str, Any]) -> str | None:
    """The error code of an AWS SSO OIDC answer: `error` (RFC 8628 style), else the
    `__type` exception name (`AuthorizationPendingException` → authorization_pending)."""
    err = data.get("error")
    if isinstance(err, str) and err:
        return err
    kind = data.get("__type") or data.get("reason")
    if not isinstance(kind, str) or not kind:
        return None
    name = kind.rsplit("#", 1)[-1].removesuffix("Exception")
    known = {
        "AuthorizationPending": "authorization_pending",
        "SlowDown": "slow_down",
        "ExpiredToken": "expired_token",
        "AccessDenied": "access_denied",
        "InvalidGrant": "invalid_grant",
    }
    return known.get(name, name)


_ROUTES = (
    Route(hosts=("api.anthropic.com",), prefixes=("/v1/messages",), dialect="anthropic"),
    Route(
        hosts=("api.openai.com",),
        prefixes=("/v1/chat/completions", "/v1/models"),
        dialect="openai",
    ),
)

PROVIDER = Kiro(
    name="kiro",
    order=60,
    title="Kiro (AWS)",
    flow="device",
    client_id=CLIENT_NAME,
    scopes=SCOPES,
    usage_poll=600.0,
    rotates_refresh=True,
    # KLB `config.py`: no `expiresIn` → 3600 s; refresh ~600 s early.
    refresh_skew=600.0,
    default_lifetime=3600.0,
    endpoints={
        "oidc": "https://oidc.{region}.amazonaws.com",
        "start_url": "https://view.awsapps.com/start",
        "social_auth": "https://prod.{region}.auth.desktop.kiro.dev",
        "social_signin": "https://app.kiro.dev/signin",
        "social_redirect": "http://localhost:3128",
        "api": "https://runtime.{region}.kiro.dev",
        "api_q": "https://q.{region}.amazonaws.com",
    },
    login_options=(
        LoginOption(
            flag="--start-url",
            dest="start_url",
            metavar="URL",
            help="IAM Identity Center: your organisation's start URL (default: AWS Builder ID)",
        ),
        LoginOption(
            flag="--region",
            dest="region",
            metavar="REGION",
            help=f"the AWS region of the login (default: {DEFAULT_REGION})",
        ),
        LoginOption(
            flag="--social",
            dest="social",
            choices=tuple(SOCIAL_PROVIDERS),
            help="sign in with Google or GitHub through Kiro (device flow; the browser "
            "sign-in on port 3128 when a browser is available)",
        ),
    ),
    routes=_ROUTES,
)
