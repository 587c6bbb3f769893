"""GitHub Copilot: GitHub device flow, then the GitHub token is exchanged for a
short-lived Copilot token (docs/providers.md §1)."""

from __future__ import annotations

import datetime
import json
import os
import re
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from ..credential import Credential
from ..errors import LoginError, NeedsLogin, RefreshFailed
from ..flows.http import body_of, send
from ..redact import redact
from .base import ApiCall, LocalReply, LoginContext, Provider, Route, seconds, token_text
from .ratelimit import latest
from .sessions import body_id, claude_session, claude_session_of, header_id
from .shapes import BodyShape
from .sources import Found, Source, obj
from .streams import Reshaper
from .usage import Outcome, Window

# keyswap's editor: VS Code's Copilot Chat, at the newest versions the facts name (pi-mono's
# profile, docs/providers.md §1.2; ericc and litellm pin older ones). Copilot requires an editor and
# retires old ones with HTTP 466 (see OUTDATED), so these age: a client that names a newer
# editor of its own keeps it (`editor_headers`).
EDITOR_VERSION = "vscode/1.107.0"
EDITOR_HEADERS = {
    "Editor-Version": EDITOR_VERSION,
    "Editor-Plugin-Version": "copilot-chat/0.35.0",
    "User-Agent": "GitHubCopilotChat/0.35.0",
}
INTEGRATION_ID = "vscode-chat"
# Copilot's answer to a client it has retired: "bad request: the specified API version is no
# longer supported. You may need to update your client to a newer version." (docs/providers.md
# §1.2; the status and text users reported on 2026-02-11: ericc-ch/copilot-api#189,
# microsoft/vscode#294305). Retrying the same headers, or on another account, cannot help.
OUTDATED = 466
# What an answer means for the account. 402 `{"error":{"message":"You have no quota","code":
# "quota_exceeded"}}` is the premium-request allowance spent, sent with no header at all
# (pi#3643, github/copilot-cli#3431, anomalyco/opencode#48330); 429 is the session or weekly
# limit (docs/providers.md §1.4); 401 "unauthorized: token expired" (§1.4). A 466 is the
# client's version, which no other account changes; other 4xx are the request's.
OUTCOMES: dict[int, Outcome] = {
    429: "rotate",
    402: "rotate",
    401: "refresh",
    OUTDATED: "pass",
}
# The session header of the @github/copilot CLI profile (docs/providers.md §1.2; jc01rho
# `applyHeaders` sends it with `X-Interaction-Id` and `X-Agent-Task-Id`). `X-Interaction-Id`
# is not read: sources disagree whether it names one user turn or each request, and a
# per-request id would spread one conversation over every account. VS Code's
# `vscode-sessionid` names a whole editor window (every conversation in it), coarser than
# the addon's own digest of the first turn, so it is not read either.
SESSION_HEADERS = ("x-client-session-id",)


class Copilot(Provider):
    def import_sources(self) -> tuple[Source, ...]:
        """The GitHub token Copilot's editor plugins keep (copilot.vim, copilot.lua, JetBrains):
        `github-copilot/apps.json` (`{"github.com:<app id>": {user, oauth_token, githubAppId}}`)
        and the older `hosts.json` (`{"github.com": {user, oauth_token}}`) in
        `$XDG_CONFIG_HOME` (default `~/.config`; `%LOCALAPPDATA%` on Windows). Only logins of
        the app keyswap signs in with, on github.com, can be exchanged for Copilot tokens."""
        local = os.environ.get("LOCALAPPDATA") if sys.platform == "win32" else None
        xdg = local or os.environ.get("XDG_CONFIG_HOME")
        base = (Path(xdg).expanduser() if xdg else Path.home() / ".config") / "github-copilot"
        return (
            Source(
                "Copilot editor plugin",
                "your editor's Copilot sign-in (`:Copilot setup` in Vim/Neovim)",
                (base / "apps.json", base / "hosts.json"),
                lambda data: _editor_logins(data, self.client_id),
                wanted=f"logins of the Copilot app {self.client_id} on github.com",
            ),
        )

    async def finish_login(self, ctx: LoginContext, tokens: dict[str, Any]) -> Credential:
        github = SecretStr(str(tokens["access_token"]))
        login = await self._github_login(ctx.http, ctx.endpoints, github.get_secret_value())
        seed = Credential(
            provider=self.name,
            bucket=ctx.bucket,
            access_token=SecretStr("-"),
            refresh_token=github,
            expires_at=0,
            account=login,
            login_at=time.time(),
        )
        try:
            return await self.refresh(ctx.http, ctx.endpoints, seed)
        except NeedsLogin:
            raise LoginError(
                "GitHub accepted the login but refused a Copilot token: "
                "does this account have a Copilot subscription?"
            ) from None
        except RefreshFailed as exc:
            raise LoginError(str(exc)) from None

    async def _github_login(
        self, http: httpx.AsyncClient, endpoints: Mapping[str, str], token: str
    ) -> str | None:
        req = http.build_request(
            "GET", endpoints["user"], headers={"Authorization": f"token {token}", **_JSON}
        )
        try:
            resp = await http.send(req)
        except httpx.HTTPError:
            return None  # the account name is cosmetic
        login = body_of(resp).get("login") if resp.status_code == 200 else None
        return str(login) if login else None

    async def refresh(
        self, http: httpx.AsyncClient, endpoints: Mapping[str, str], cred: Credential
    ) -> Credential:
        """Re-exchange the GitHub token; nothing rotates."""
        github = cred.refresh
        if not github:
            raise NeedsLogin(self.name, cred.bucket, "no GitHub token stored")
        req = http.build_request(
            "GET",
            endpoints["copilot_token"],
            headers={"Authorization": f"token {github}", **_JSON, **EDITOR_HEADERS},
        )
        try:
            resp = await send(http, req, "getting a Copilot token")
        except LoginError as exc:
            raise RefreshFailed(f"{self.name}/{cred.bucket}: {exc}") from None
        data = body_of(resp)
        if resp.status_code in (401, 403, 404):
            # GitHub's message may quote the token it was sent.
            why = redact(str(data.get("message") or ""), cred.secrets()) or (
                f"HTTP {resp.status_code}"
            )
            raise NeedsLogin(self.name, cred.bucket, f"GitHub refused the Copilot token ({why})")
        token = token_text(data.get("token"))
        if resp.status_code != 200 or not token:
            raise RefreshFailed(f"{self.name}/{cred.bucket}: Copilot token HTTP {resp.status_code}")
        endpoints_said = data.get("endpoints")
        api = endpoints_said.get("api") if isinstance(endpoints_said, dict) else None
        extra = {**cred.extra, "api": str(api or endpoints["api"]).rstrip("/")}
        if data.get("sku"):
            extra["sku"] = str(data["sku"])
        now = time.time()
        # `expires_at` is absolute (unix seconds): clamped like any lifetime.
        expires_at = seconds(data.get("expires_at"))
        return Credential(
            provider=self.name,
            bucket=cred.bucket,
            access_token=SecretStr(token),
            refresh_token=cred.refresh_token,
            expires_at=self.expiry(None if expires_at is None else expires_at - now, now),
            account=cred.account,
            extra=extra,
            updated_at=now,
            login_at=cred.login_at,
        )

    def api_base(self, cred: Credential, endpoints: Mapping[str, str]) -> str:
        """The API host the Copilot token names (individual/business/enterprise)."""
        return (cred.extra.get("api") or endpoints["api"]).rstrip("/")

    def prepare(self, call: ApiCall, cred: Credential) -> ApiCall | LocalReply:
        """The headers Copilot bills and routes by, read from the conversation: who started
        this turn, and whether it shows an image. The one place a Copilot body is parsed."""
        ours = {"X-Initiator": "user"}
        if _is_conversation(call):
            conversation = _Conversation.parse(call.body)
            ours["X-Initiator"] = initiator(conversation)
            if _has_image(conversation):
                ours["Copilot-Vision-Request"] = "true"
        names = {k.lower() for k in ours}
        headers = [(k, v) for k, v in call.headers if k.lower() not in names]
        return replace(call, headers=[*headers, *ours.items()])

    def api_headers(
        self, cred: Credential, path: str, headers: Mapping[str, str], body: bytes
    ) -> dict[str, str]:
        messages = path.endswith("/v1/messages")
        out = editor_headers(headers)
        if not (own_editor(headers) and headers.get("openai-intent")):
            out["Openai-Intent"] = "messages-proxy" if messages else "conversation-panel"
        out["X-Request-Id"] = str(uuid.uuid4())
        if messages:
            # What litellm sends to /v1/messages beside that intent (docs/providers.md §1.2).
            if "x-interaction-type" not in headers:
                out["X-Interaction-Type"] = "messages-proxy"
            if "anthropic-version" not in headers:
                out["anthropic-version"] = "2023-06-01"
        return out

    def reshape(self, call: ApiCall, status: int) -> Reshaper | None:
        """Copilot's 466 names no header and is no shape an SDK reads: the client gets an
        error in its own API's shape saying which versions were refused and what helps."""
        return _Outdated(call) if status == OUTDATED else None

    async def poll_usage(
        self, http: httpx.AsyncClient, endpoints: Mapping[str, str], cred: Credential
    ) -> list[Window]:
        """The premium-request allowance from the usage endpoint, with the GitHub token
        (docs/providers.md §1.1: `quota_snapshots`); chat and completions are unlimited on
        paid plans and say so."""
        github = cred.refresh_token.get_secret_value() if cred.refresh_token else ""
        req = http.build_request(
            "GET", endpoints["usage"], headers={"Authorization": f"token {github}", **_JSON}
        )
        try:
            resp = await http.send(req)
        except httpx.HTTPError:
            return []
        data = body_of(resp) if resp.status_code == 200 else {}
        snapshots = data.get("quota_snapshots")
        resets = _reset_date(data.get("quota_reset_date"))
        windows = []
        for name, snap in (snapshots or {}).items() if isinstance(snapshots, dict) else ():
            left = seconds(snap.get("percent_remaining")) if isinstance(snap, dict) else None
            if left is None or snap.get("unlimited") is True:
                continue
            windows.append(Window(str(name), max(0.0, 1 - left / 100), resets))
        return windows

    def rate_limit_hint(self, headers: Mapping[str, str], body: bytes) -> float | None:
        """The wait a 429's message names ("Please try again in 51 hours."): for a weekly
        limit it is hours or days while Retry-After asks for minutes (docs/providers.md §1.4)."""
        return latest(super().rate_limit_hint(headers, body), _wait_named(_error_message(body)))

    def classify(self, status: int, headers: Mapping[str, str]) -> Outcome:
        return OUTCOMES.get(status) or super().classify(status, headers)

    def conversation(self, call: ApiCall) -> str | None:
        """The client's session: the Copilot CLI's `X-Client-Session-Id`; Claude Code's
        session in `metadata.user_id` (on /v1/messages); OpenAI's `prompt_cache_key`, else
        its `user` (Claude Code's session when it has that form, docs/providers.md §5.3)."""
        session = header_id(call.headers, *SESSION_HEADERS)
        if session is not None:
            return f"client-session:{session}"
        if call.path.endswith("/v1/messages"):  # an Anthropic body: only `metadata.user_id`
            claude = claude_session(call.body)
            return None if claude is None else f"claude-session:{claude}"
        key = body_id(call.body, "prompt_cache_key")
        if key is not None:
            return f"prompt_cache_key:{key}"
        user = body_id(call.body, "user")
        if user is None:
            return None
        claude = claude_session_of(user)
        return f"user:{user}" if claude is None else f"claude-session:{claude}"


def _editor_logins(data: Any, app: str) -> list[Found]:
    """Every github.com login of `app` in an apps.json or hosts.json. hosts.json names no app:
    the plugins that wrote it signed in with the same one."""
    found = []
    for key, entry in obj(data, "the file").items():
        host, _, named = str(key).partition(":")
        if not isinstance(entry, dict) or host != "github.com":
            continue
        if (named or entry.get("githubAppId") or app) != app:
            continue
        token, user = entry.get("oauth_token"), entry.get("user")
        if isinstance(token, str) and token:
            found.append(Found(refresh=token, account=user if isinstance(user, str) else None))
    return found


def own_editor(client: Mapping[str, str]) -> bool:
    """Whether the client's Editor-Version goes to Copilot as it is: another editor's (its
    plugin and integration id belong to it; keyswap cannot tell its age), or a VS Code at
    least as new as keyswap's. An older VS Code, or one that cannot be read, would only
    earn a 400 or 466 that keyswap's profile avoids."""
    name, _, text = client.get("editor-version", "").partition("/")
    version = _version(text)
    if not name or version is None:
        return False
    return name.lower() != "vscode" or version >= _OUR_VSCODE


def editor_headers(client: Mapping[str, str]) -> dict[str, str]:
    """The editor headers to set (docs/providers.md §1.2): none of the client's own when it keeps
    its editor (only the integration id Copilot requires, if it sent none), else keyswap's
    VS Code profile, whole, replacing any part of another."""
    if own_editor(client):
        return (
            {}
            if client.get("copilot-integration-id")
            else {"Copilot-Integration-Id": INTEGRATION_ID}
        )
    return {**EDITOR_HEADERS, "Copilot-Integration-Id": INTEGRATION_ID}


def _version(text: str) -> tuple[int, ...] | None:
    """ "1.107.0" -> (1, 107, 0); "1.0.81-6" -> (1, 0, 81); None for what is no version."""
    parts = text.split("-", 1)[0].split(".")
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else None


_OUR_VSCODE = _version(EDITOR_VERSION.partition("/")[2]) or ()


class _Outdated:
    """Copilot's 466 as an error in the client's API shape, naming the versions it refused."""

    content_type: str | None = "application/json"

    def __init__(self, call: ApiCall) -> None:
        self._anthropic = call.path.endswith("/v1/messages")
        self._client = {k.lower(): v for k, v in call.headers}
        self._said = bytearray()

    def feed(self, chunk: bytes) -> bytes:
        if len(self._said) < _QUOTED:
            self._said += chunk[: _QUOTED - len(self._said)]
        return b""

    def end(self) -> bytes:
        client = self._client
        if own_editor(client):
            sent = [("Editor-Version", client["editor-version"])]
            sent += [(k, client[k.lower()]) for k in _EDITOR_PARTS if client.get(k.lower())]
            whose = "the client's own"
            remedy = "update the client, or drop its Editor-Version so keyswap's is used"
        else:
            sent = [(k, v) for k, v in EDITOR_HEADERS.items() if k != "User-Agent"]
            whose = "keyswap's built-in"
            remedy = "update keyswap (its editor profile has aged)"
        if client.get("x-github-api-version"):
            sent.append(("X-GitHub-Api-Version", client["x-github-api-version"]))
            remedy += ", or stop sending X-GitHub-Api-Version"
        named = ", ".join(f"{k} {v}" for k, v in sent)
        said = _error_message(bytes(self._said)).strip()
        message = (
            f"keyswap: GitHub Copilot no longer serves this client version ({whose} {named}): "
            f"HTTP {OUTDATED}{f' "{said}"' if said else ''}. Retrying will not help; {remedy}."
        )
        if self._anthropic:
            body: dict[str, Any] = {
                "type": "error",
                "error": {"type": "invalid_request_error", "message": message},
            }
        else:
            error = {"message": message, "type": "invalid_request_error", "param": None}
            body = {"error": {**error, "code": "copilot_client_outdated"}}
        return json.dumps(body).encode()


_QUOTED = 4096  # of Copilot's own answer, enough for its message
_EDITOR_PARTS = ("Editor-Plugin-Version",)


def _error_message(body: bytes) -> str:
    """Copilot's error text: `error.message` of a JSON answer, or a plain-text answer."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return body.decode("utf-8", "replace")
    error = data.get("error") if isinstance(data, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) else ""


_WAIT = re.compile(
    r"try again in\s+(\d+(?:\.\d+)?)\s*(hour|minute|second)s?"
    r"(?:\s*(?:and\s+)?(\d+(?:\.\d+)?)\s*(hour|minute|second)s?)?",
    re.IGNORECASE,
)
_UNIT = {"hour": 3600.0, "minute": 60.0, "second": 1.0}


def _wait_named(message: str) -> float | None:
    """Seconds in "try again in 51 hours" / "in 2 hours 5 minutes"; None if none is named."""
    found = _WAIT.search(message)
    if found is None:
        return None
    wait = float(found[1]) * _UNIT[found[2].lower()]
    if found[3]:
        wait += float(found[3]) * _UNIT[found[4].lower()]
    return wait


class _Part(BodyShape):
    type: str | None = None


class _Turn(BodyShape):
    """A chat or Anthropic message, or a Responses input item."""

    role: str | None = "user"
    type: str | None = None
    content: str | list[_Part] | None = None


class _Conversation(BodyShape):
    messages: list[_Turn] | None = None
    input: str | list[_Turn] | None = None

    @property
    def turns(self) -> list[_Turn]:
        turns = self.messages or self.input
        return turns if isinstance(turns, list) else []


# Endpoints whose body is a conversation; embeddings' `input` is a list of texts.
_CONVERSATIONS = ("/chat/completions", "/responses", "/v1/messages")


def _is_conversation(call: ApiCall) -> bool:
    # A compressed body is not read (as before): Copilot judges it itself.
    encoded = any(k.lower() == "content-encoding" for k, _ in call.headers)
    return call.method == "POST" and call.path.endswith(_CONVERSATIONS) and not encoded


def initiator(conversation: _Conversation) -> str:
    """`user` when the request answers a person's new message, `agent` when it continues
    the model's own work (a tool result, an assistant turn). Copilot bills premium requests
    only for `user`, so this must be right both ways. Decided by the last turn that is not
    a system or developer message: clients append reminders after a user's message, and
    those do not make it the model's turn (issue 15.6)."""
    last = next((t for t in reversed(conversation.turns) if t.role not in _SETTING), None)
    if last is None:
        return "user"
    if last.role != "user" or last.type in _AGENT_ITEMS:
        return "agent"
    if isinstance(last.content, list) and any(p.type == "tool_result" for p in last.content):
        return "agent"
    return "user"


_AGENT_ITEMS = {"function_call_output", "function_call", "reasoning", "custom_tool_call_output"}
# Roles that set the scene rather than take a turn (Chat Completions and Responses alike).
_SETTING = {"system", "developer"}
_IMAGES = {"image_url", "image", "input_image"}


def _has_image(conversation: _Conversation) -> bool:
    return any(
        isinstance(turn.content, list) and any(p.type in _IMAGES for p in turn.content)
        for turn in conversation.turns
    )


_JSON = {"Accept": "application/json"}

_HOSTS = (
    "api.githubcopilot.com",
    "api.individual.githubcopilot.com",
    "api.business.githubcopilot.com",
    "api.enterprise.githubcopilot.com",
)

PROVIDER = Copilot(
    name="copilot",
    order=10,
    usage_poll=300.0,
    models_path="/models",
    title="GitHub Copilot",
    flow="device",
    client_id="Iv1.b507a08c87ecfe98",
    scopes=("read:user",),
    endpoints={
        "device_code": "https://github.com/login/device/code",
        "token": "https://github.com/login/oauth/access_token",
        "copilot_token": "https://api.github.com/copilot_internal/v2/token",
        "api": "https://api.githubcopilot.com",
        "usage": "https://api.github.com/copilot_internal/user",
        "user": "https://api.github.com/user",
    },
    # ~30 min tokens; re-mint at ~25 min like the editors do.
    refresh_skew=300.0,
    # An answer without a usable `expires_at`: assume 25 min (the editors' fallback TTL).
    default_lifetime=25 * 60.0,
    routes=(
        Route(hosts=_HOSTS, prefixes=("/v1/messages",), dialect="anthropic"),
        Route(hosts=_HOSTS, dialect="openai"),
        Route(
            hosts=("api.openai.com",),
            prefixes=("/v1/chat/completions", "/v1/responses", "/v1/models", "/v1/embeddings"),
            strip="/v1",
            dialect="openai",
        ),
        Route(hosts=("api.anthropic.com",), prefixes=("/v1/messages",), dialect="anthropic"),
    ),
    native_hosts=_HOSTS,
    # The Copilot token names its API host (api.individual.githubcopilot.com, ...).
    api_hosts=(".githubcopilot.com",),
)


def _reset_date(value: object) -> float | None:
    """`quota_reset_date` ("2026-12-01", UTC midnight) as unix seconds."""
    if not isinstance(value, str):
        return None
    try:
        day = datetime.date.fromisoformat(value[:10])
    except ValueError:
        return None
    return datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.UTC).timestamp()
