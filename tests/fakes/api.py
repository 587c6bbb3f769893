"""Fake inference APIs of every keyswap provider, over real TLS, with real streaming.

    with FakeOAuth() as oauth, FakeAPI(oauth, ca) as api:
        config = api.resolve_toml()      # [resolve] "api.anthropic.com:443" = "127.0.0.1:PORT"
        ...
        assert api.count("anthropic", "messages") == 1

One threaded server on 127.0.0.1:<port> answers for all of `HOSTNAMES` (one certificate from
`ca`), routing by the `Host` header. An access token is valid while the fake OAuth server says
so (`oauth.valid_access_tokens(provider)`), so expiring or revoking it there shows here at
once. Each request is checked in this order: authentication (a pending `fail_auth` first),
then the provider's request rules, then a pending `rate_limit`, then it is answered. Streams
are Server-Sent Events sent as HTTP/1.1 chunks, one event per chunk, `event_gap` seconds apart;
the text deltas are "0", "1", ... (`stream_events` of them) and every OpenAI/Anthropic event
carries its position as an SSE `id:` line. Providers as labelled in `calls`: copilot, codex,
anthropic, openai (api.openai.com with a real key), google (generativelanguage with a real
key), gemini / antigravity (Code Assist, by whose token it carries).

Usage: every Anthropic OAuth answer carries the unified limiter's headers and every Codex
answer the `x-codex-*` headers, and a Codex stream opens with a `codex.rate_limits` event
(docs/providers.md §2.5, §5.3), with the numbers `usage(provider, token=..., ...)` set for
that account. Affinity: `served` logs each request's account (token) and the conversation
id it named, and `accounts(conversation)` lists the accounts that served one.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import secrets
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from functools import cache, partial
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

import httpx

from .oauth import GOOGLE, GOOGLE_UNAUTHENTICATED, PATHS, anthropic_error, google_error, number
from .server import (
    FakeServer,
    HttpError,
    Json,
    Reply,
    Request,
    Route,
    fail,
    host_of,
    json_reply,
    route,
)

if TYPE_CHECKING:
    import trustme

    from .oauth import FakeOAuth

COPILOT_HOSTS = (
    "api.githubcopilot.com",
    "api.individual.githubcopilot.com",
    "api.business.githubcopilot.com",
    "api.enterprise.githubcopilot.com",
)
CODEX_HOSTS = ("chatgpt.com",)
OPENAI_HOSTS = ("api.openai.com",)
ANTHROPIC_HOSTS = ("api.anthropic.com",)
GOOGLE_API_HOSTS = ("generativelanguage.googleapis.com",)
CODE_ASSIST_HOSTS = ("cloudcode-pa.googleapis.com", "daily-cloudcode-pa.googleapis.com")
HOSTNAMES = (
    *COPILOT_HOSTS,
    *CODEX_HOSTS,
    *OPENAI_HOSTS,
    *ANTHROPIC_HOSTS,
    *GOOGLE_API_HOSTS,
    *CODE_ASSIST_HOSTS,
    "localhost",
    "127.0.0.1",
)
# Which providers' OAuth tokens may legitimately arrive at each host (see `FakeAPI.leaks`).
TOKEN_OWNERS: dict[str, frozenset[str]] = {
    **dict.fromkeys(COPILOT_HOSTS, frozenset({"copilot"})),
    **dict.fromkeys(CODEX_HOSTS, frozenset({"codex"})),
    **dict.fromkeys(ANTHROPIC_HOSTS, frozenset({"anthropic"})),
    **dict.fromkeys(CODE_ASSIST_HOSTS, frozenset(GOOGLE)),
}
TOKEN_PROVIDERS = ("github", "copilot", "codex", "anthropic", *GOOGLE)

HINTS = ("retry-after", "body", "resets_at", "none", "weekly")
# What `FakeAPI.served` logs: requests for a model's answer, by provider label and endpoint.
_API_PROVIDERS = frozenset({"copilot", "codex", "anthropic", "openai", "google", *GOOGLE})
_INFERENCE = frozenset(
    {
        "chat_completions",
        "responses",
        "messages",
        "generateContent",
        "streamGenerateContent",
    }
)
ANTHROPIC_OAUTH_BETA = "oauth-2025-04-20"
CLAUDE_CODE_IDENTITY = "You are Claude Code, Anthropic's official CLI for Claude."

COPILOT_EXPIRED = "unauthorized: token expired"
# What Copilot answers a client it does not take for an IDE (docs/providers.md §1.2 says which
# headers the editors send; the answers are the wire texts users reported: BerriAI/litellm#18475
# and openclaw/openclaw#71538 for a missing Editor-Version, leona/helix-gpt#73 for one it cannot
# read, ericc-ch/copilot-api#189/#191 and microsoft/vscode#294305 for the HTTP 466 that retires
# an old client, 2026-02-11).
COPILOT_NO_EDITOR = "bad request: missing Editor-Version header for IDE auth"
COPILOT_UNKNOWN_EDITOR = "bad request: unknown Editor-Version header for IDE auth"
COPILOT_OUTDATED_STATUS = 466
COPILOT_OUTDATED = {
    "error": {
        "message": "bad request: the specified API version is no longer supported. "
        "You may need to update your client to a newer version.\n",
        "type": "error",
    }
}
# A weekly limit's Retry-After asks for minutes while the limit lasts hours or days
# (docs/providers.md §1.4: github/copilot-cli#2760 "5-10 minutes via the Retry-After header";
# #2696/#2769 "Please try again in 51 hours").
COPILOT_WEEKLY_RETRY_AFTER = 300
CODEX_EXPIRED = {
    "error": {
        "message": "Provided authentication token is expired. Please try signing in again.",
        "code": "token_expired",
    }
}
ANTHROPIC_EXPIRED = anthropic_error(
    "OAuth token has expired. Please obtain a new token or refresh your existing token."
)
OPENAI_DOCS = "https://platform.openai.com/account/api-keys"
GITHUB_TERMS = "https://docs.github.com/site-policy/github-terms/github-terms-of-service"

DEFAULT_MODEL = {"chat": "gpt-4.1", "responses": "gpt-5", "messages": "claude-sonnet-4-5"}


def _copilot_model(model_id: str, vendor: str, *endpoints: str) -> Json:
    return {
        "id": model_id,
        "name": model_id,
        "object": "model",
        "vendor": vendor,
        "version": model_id,
        "preview": False,
        "model_picker_enabled": True,
        "capabilities": {
            "family": model_id,
            "type": "chat",
            "limits": {"max_context_window_tokens": 128000, "max_output_tokens": 16384},
            "supports": {"streaming": True, "tool_calls": True},
        },
        "policy": {"state": "enabled"},
        "supported_endpoints": list(endpoints),
    }


COPILOT_MODELS: Json = {
    "object": "list",
    "data": [
        _copilot_model("gpt-4.1", "Azure OpenAI", "/chat/completions", "/responses"),
        _copilot_model("gpt-5-codex", "OpenAI", "/responses"),
        _copilot_model("claude-sonnet-4.5", "Anthropic", "/chat/completions", "/v1/messages"),
    ],
}
# The Codex backend gates models by the client's version (docs/providers.md §2.1 `client_version`):
# each model names the oldest Codex release that may use it; `/models?client_version=` lists
# only those the version reaches, and a turn for one it does not reach is refused (the
# numbers are the backend's own: gpt-6-astra needs 0.153.0, seen 2026-09; the refusal text is
# openinterpreter/openinterpreter#1787's).
CODEX_MODEL_FLOORS = {"gpt-5-codex": "0.0.0", "gpt-5": "0.0.0", "gpt-6-astra": "0.153.0"}
CODEX_MODELS: Json = {
    "models": [
        {
            "slug": slug,
            "display_name": slug,
            "supported_in_api": True,
            "visibility": "list",
            "priority": i,
            "minimal_client_version": floor,
        }
        for i, (slug, floor) in enumerate(CODEX_MODEL_FLOORS.items())
    ]
}


def codex_too_old(model: str) -> Json:
    message = (
        f"The '{model}' model requires a newer version of Codex. "
        "Please upgrade to the latest app or CLI and try again."
    )
    return {"error": {"type": "invalid_request_error", "message": message}}


OPENAI_MODELS: Json = {
    "object": "list",
    "data": [
        {"id": m, "object": "model", "created": 1700000000, "owned_by": "openai"}
        for m in ("gpt-4.1", "gpt-5")
    ],
}


# -- bookkeeping ---------------------------------------------------------------------------


@dataclass
class Fault:
    """A pending rate limit or auth failure for the next `times` matching requests."""

    provider: str
    token: str | None  # None: any request of the provider
    times: int
    hint: str = "retry-after"
    seconds: float = 30


@dataclass
class StreamLog:
    """One SSE response: how many of its `total` events left the server."""

    provider: str
    path: str
    total: int
    sent: int = 0
    finished: bool = False
    disconnected: bool = False


@dataclass(frozen=True)
class Attempt:
    """One request as it reached the server: when (monotonic), the Authorization it carried,
    and the status it was answered with."""

    at: float
    authorization: str | None
    status: int


@dataclass(frozen=True)
class Leak:
    """A live OAuth token of `provider` seen in `where` of a request to a foreign `host`."""

    provider: str
    host: str
    path: str
    where: str


@dataclass(frozen=True)
class Served:
    """One request to a provider's API: the account it carried (Bearer token or API key),
    the conversation id it named (`conversation_of`), and the status it was answered with."""

    provider: str
    token: str | None
    conversation: str | None
    status: int


@dataclass(frozen=True)
class AnthropicUsage:
    """What Anthropic's unified limiter reports of one account on every OAuth answer
    (docs/providers.md §5.3): each window's used fraction (0..1, sent as is), its reset (unix
    seconds; None: an hour resp. three days after each answer) and status (None: "rejected"
    at 1.0 or more, else "allowed"); `overage` (None: not sent) is the extra-usage budget."""

    five_hour: float = 0.12
    seven_day: float = 0.03
    five_hour_reset: float | None = None
    seven_day_reset: float | None = None
    five_hour_status: str | None = None
    seven_day_status: str | None = None
    overage: float | None = None


@dataclass(frozen=True)
class CodexUsage:
    """What the Codex backend reports of one account on every answer and in each stream's
    `codex.rate_limits` event (docs/providers.md §2.5; codex `rate_limits.rs`): each window's
    used fraction (sent as a percent), length in minutes and reset (unix seconds; None: half
    the window after each answer)."""

    primary: float = 0.12
    secondary: float = 0.03
    primary_minutes: int = 300
    secondary_minutes: int = 10080
    primary_reset: float | None = None
    secondary_reset: float | None = None


Usage = AnthropicUsage | CodexUsage
USAGE: dict[str, Usage] = {"anthropic": AnthropicUsage(), "codex": CodexUsage()}


# -- wire formats --------------------------------------------------------------------------


def _fraction(value: float) -> str:
    return f"{value:g}"


def anthropic_usage_headers(
    usage: AnthropicUsage, now: float, timed: bool = True
) -> tuple[tuple[str, str], ...]:
    """The `anthropic-ratelimit-unified-*` headers for `usage` (no resets unless `timed`)."""
    prefix = "anthropic-ratelimit-unified-"
    windows = (
        ("5h", usage.five_hour, usage.five_hour_reset, usage.five_hour_status, 3600.0),
        ("7d", usage.seven_day, usage.seven_day_reset, usage.seven_day_status, 3 * 86400.0),
    )
    headers: list[tuple[str, str]] = []
    statuses, resets = [], []
    for name, used, reset, status, later in windows:
        status = status or ("rejected" if used >= 1 else "allowed")
        at = str(int(reset if reset is not None else now + later))
        statuses.append(status)
        resets.append(at)
        headers.append((f"{prefix}{name}-utilization", _fraction(used)))
        headers.append((f"{prefix}{name}-status", status))
        if timed:
            headers.append((f"{prefix}{name}-reset", at))
    rejected = "rejected" in statuses
    overall = "rejected" if rejected else "allowed"
    if not rejected and "allowed_warning" in statuses:
        overall = "allowed_warning"
    headers.append((f"{prefix}status", overall))
    claim = "five_hour" if usage.five_hour >= usage.seven_day else "seven_day"
    headers.append((f"{prefix}representative-claim", claim))
    if timed:
        headers.append((f"{prefix}reset", resets[0] if claim == "five_hour" else resets[1]))
    if usage.overage is not None:
        headers.append((f"{prefix}overage-utilization", _fraction(usage.overage)))
        headers.append((f"{prefix}overage-status", "allowed"))
    return tuple(headers)


def _codex_windows(usage: CodexUsage, now: float) -> list[tuple[str, float, int, float]]:
    """(name, used fraction, minutes, reset at) of each window."""
    return [
        (name, used, minutes, reset if reset is not None else now + minutes * 30.0)
        for name, used, minutes, reset in (
            ("primary", usage.primary, usage.primary_minutes, usage.primary_reset),
            ("secondary", usage.secondary, usage.secondary_minutes, usage.secondary_reset),
        )
    ]


def codex_usage_headers(
    usage: CodexUsage, now: float, timed: bool = True
) -> tuple[tuple[str, str], ...]:
    """The `x-codex-{primary,secondary}-*` headers for `usage` (no resets unless `timed`)."""
    headers: list[tuple[str, str]] = []
    for name, used, minutes, reset in _codex_windows(usage, now):
        headers.append((f"x-codex-{name}-used-percent", _fraction(used * 100)))
        headers.append((f"x-codex-{name}-window-minutes", str(minutes)))
        if timed:
            headers.append((f"x-codex-{name}-reset-at", str(int(reset))))
            headers.append((f"x-codex-{name}-reset-after-seconds", str(max(0, int(reset - now)))))
    return tuple(headers)


def codex_rate_limits_event(usage: CodexUsage, now: float) -> Json:
    """The `codex.rate_limits` event a Codex stream opens with (the shape of codex
    `rate_limits.rs` `RateLimitEvent`, with the `reset_after_seconds` captured events carry)."""
    windows = _codex_windows(usage, now)
    limited = any(used >= 1 for _, used, _, _ in windows)
    details: Json = {"allowed": not limited, "limit_reached": limited}
    for name, used, minutes, reset in windows:
        details[name] = {
            "used_percent": number(round(used * 100, 6)),
            "window_minutes": minutes,
            "reset_after_seconds": max(0, int(reset - now)),
            "reset_at": int(reset),
        }
    return {
        "type": "codex.rate_limits",
        "plan_type": "plus",
        "rate_limits": details,
        "code_review_rate_limits": None,
    }


def _session_of_user_id(user_id: object) -> str | None:
    """The session id in Claude Code's `metadata.user_id`: the older
    `user_<hex>_account_<uuid>_session_<uuid>` or the newer JSON text with `session_id`."""
    if not isinstance(user_id, str):
        return None
    if user_id.startswith("{"):
        try:
            said = json.loads(user_id)
        except ValueError:
            return None
        session = said.get("session_id") if isinstance(said, dict) else None
        return session if isinstance(session, str) and session else None
    head, sep, session = user_id.rpartition("_session_")
    return session if sep and head.startswith("user_") and "_account_" in head else None


def conversation_of(provider: str, req: Request) -> str | None:
    """The conversation id a request names, as each provider's clients send it
    (docs/providers.md §2.2, §3.3, §4.2, §5.3): Codex's session headers, else its
    `prompt_cache_key`; Claude Code's `metadata.user_id`; Copilot's `X-Client-Session-Id`,
    Claude Code's user id, OpenAI's `prompt_cache_key` or `user`; Code Assist's
    `request.session_id` / `sessionId`. The bare id, as the client sent it."""
    headers, body = req.headers, req.body or {}

    def text(value: object) -> str | None:
        return value if isinstance(value, str) and value else None

    metadata = body.get("metadata")
    claude = _session_of_user_id(metadata.get("user_id")) if isinstance(metadata, dict) else None
    if provider == "codex":
        for name in ("session_id", "conversation_id", "session-id"):
            if headers.get(name):
                return headers[name]
        return text(body.get("prompt_cache_key"))
    if provider == "anthropic":
        return claude
    if provider in ("copilot", "openai"):
        user = body.get("user")
        return (
            text(headers.get("x-client-session-id"))
            or claude
            or text(body.get("prompt_cache_key"))
            or _session_of_user_id(user)
            or text(user)
        )
    inner = body.get("request")
    inner = inner if isinstance(inner, dict) else body
    return text(inner.get("session_id")) or text(inner.get("sessionId"))


def copilot_duration(seconds: float) -> str:
    """A wait as Copilot's 429 message words it: "51 hours", "90 seconds"."""
    whole = math.ceil(seconds)
    if whole >= 3600:
        return f"{math.ceil(whole / 3600)} hours"
    if whole >= 60 and whole % 60 == 0:
        return f"{whole // 60} minutes"
    return f"{whole} seconds"


def text_reply(text: str, status: int) -> Reply:
    return Reply(status, text.encode(), "text/plain; charset=utf-8")


def with_headers(reply: Reply, headers: tuple[tuple[str, str], ...]) -> Reply:
    return replace(reply, headers=reply.headers + headers)


def sse(data: object, event: str | None = None, seq: int | None = None) -> bytes:
    """One SSE event: optional `event:` and `id:` lines, then one `data:` line."""
    lines = [f"event: {event}"] if event else []
    if seq is not None:
        lines.append(f"id: {seq}")
    lines.append("data: " + (data if isinstance(data, str) else json.dumps(data)))
    return ("\n".join(lines) + "\n\n").encode()


def _ident(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def full_text(n: int) -> str:
    return "".join(str(i) for i in range(n))


def chat_completion(model: str, n: int) -> Json:
    return {
        "id": _ident("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": full_text(n)},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": n, "total_tokens": 10 + n},
    }


def chat_events(model: str, n: int) -> list[bytes]:
    cid, created = _ident("chatcmpl-"), int(time.time())

    def chunk(delta: Json, finish: str | None = None, **extra: object) -> Json:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [choice],
            **extra,
        }

    usage = {"prompt_tokens": 10, "completion_tokens": n, "total_tokens": 10 + n}
    payloads: list[object] = [chunk({"role": "assistant", "content": ""})]
    payloads += [chunk({"content": str(i)}) for i in range(n)]
    payloads += [chunk({}, "stop", usage=usage), "[DONE]"]
    return [sse(p, seq=i) for i, p in enumerate(payloads)]


class _Responses:
    """An OpenAI Responses API answer (also Codex's and Copilot's /responses)."""

    def __init__(self, model: str, n: int) -> None:
        self.model, self.n = model, n
        self.rid, self.mid, self.created = _ident("resp_"), _ident("msg_"), int(time.time())

    @staticmethod
    def part(text: str) -> Json:
        return {"type": "output_text", "text": text, "annotations": []}

    def message(self, done: bool) -> Json:
        return {
            "id": self.mid,
            "type": "message",
            "status": "completed" if done else "in_progress",
            "role": "assistant",
            "content": [self.part(full_text(self.n))] if done else [],
        }

    def response(self, done: bool) -> Json:
        usage = {"input_tokens": 10, "output_tokens": self.n, "total_tokens": 10 + self.n}
        return {
            "id": self.rid,
            "object": "response",
            "created_at": self.created,
            "status": "completed" if done else "in_progress",
            "model": self.model,
            "output": [self.message(True)] if done else [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": usage if done else None,
        }

    def events(self, start: int = 0) -> list[bytes]:
        """The stream's events, their SSE ids counting from `start` (after events that go
        before them, such as Codex's `codex.rate_limits`)."""
        at = {"item_id": self.mid, "output_index": 0, "content_index": 0}
        text = full_text(self.n)
        steps: list[tuple[str, Json]] = [
            ("response.created", {"response": self.response(False)}),
            ("response.in_progress", {"response": self.response(False)}),
            ("response.output_item.added", {"output_index": 0, "item": self.message(False)}),
            ("response.content_part.added", {**at, "part": self.part("")}),
            *(
                ("response.output_text.delta", {**at, "delta": str(i), "logprobs": []})
                for i in range(self.n)
            ),
            ("response.output_text.done", {**at, "text": text, "logprobs": []}),
            ("response.content_part.done", {**at, "part": self.part(text)}),
            ("response.output_item.done", {"output_index": 0, "item": self.message(True)}),
            ("response.completed", {"response": self.response(True)}),
        ]
        return [
            sse({"type": name, "sequence_number": i, **data}, event=name, seq=start + i)
            for i, (name, data) in enumerate(steps)
        ]


def anthropic_message(model: str, n: int) -> Json:
    return {
        "id": _ident("msg_"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": full_text(n)}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": n},
    }


def anthropic_events(model: str, n: int) -> list[bytes]:
    start = anthropic_message(model, n) | {"content": [], "stop_reason": None}
    start["usage"] = {"input_tokens": 10, "output_tokens": 1}
    steps: list[tuple[str, Json]] = [
        ("message_start", {"message": start}),
        ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        ("ping", {}),
        *(
            ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": str(i)}})
            for i in range(n)
        ),
        ("content_block_stop", {"index": 0}),
        (
            "message_delta",
            {
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": n},
            },
        ),
        ("message_stop", {}),
    ]
    return [sse({"type": name, **data}, event=name, seq=i) for i, (name, data) in enumerate(steps)]


def gemini_chunks(model: str, n: int, wrapped: bool) -> list[Json]:
    """Gemini `GenerateContentResponse`s, one per text delta; Code Assist wraps each one as
    `{"response": ..., "traceId": ...}`."""
    rid, trace = secrets.token_hex(8), secrets.token_hex(8)
    chunks: list[Json] = []
    for i in range(max(n, 1)):
        text = str(i) if n else ""
        candidate: Json = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
        chunk: Json = {"candidates": [candidate], "modelVersion": model, "responseId": rid}
        if i == max(n, 1) - 1:
            candidate["finishReason"] = "STOP"
            chunk["usageMetadata"] = {
                "promptTokenCount": 10,
                "candidatesTokenCount": n,
                "totalTokenCount": 10 + n,
            }
        chunks.append({"response": chunk, "traceId": trace} if wrapped else chunk)
    return chunks


def gemini_response(model: str, n: int, wrapped: bool) -> Json:
    last = gemini_chunks(model, n, wrapped)[-1]
    inner = last["response"] if wrapped else last
    inner["candidates"][0]["content"]["parts"][0]["text"] = full_text(n)
    return last


def codex_account(token: str | None) -> str | None:
    """The `chatgpt_account_id` claim of a Codex access-token JWT."""
    try:
        payload = (token or "").split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        account = claims["https://api.openai.com/auth"]["chatgpt_account_id"]
    except (IndexError, KeyError, TypeError, ValueError, binascii.Error):
        return None
    return account if isinstance(account, str) else None


def has_identity(body: Json) -> bool:
    """Whether the first system block is Claude Code's identity line."""
    system = body.get("system")
    if isinstance(system, str):
        return system.startswith(CLAUDE_CODE_IDENTITY)
    if isinstance(system, list):
        texts = [b.get("text") for b in system if isinstance(b, dict)]
        return any(t == CLAUDE_CODE_IDENTITY for t in texts[:2])
    return False


def _version(text: str) -> tuple[int, ...] | None:
    """ "1.107.0" -> (1, 107, 0); "1.0.81-6" -> (1, 0, 81); None for what is no version."""
    parts = text.split("-", 1)[0].split(".")
    if not all(p.isdigit() for p in parts):
        return None
    return tuple(int(p) for p in parts)


def _mask(key: str) -> str:
    return key[:3] + "*" * 8 + key[-4:] if len(key) > 8 else "*" * len(key)


# -- the server ----------------------------------------------------------------------------


class FakeAPI(FakeServer):
    """Fake provider APIs; see the module docstring. Knobs (set any time): `event_gap`,
    `stream_events`, `anthropic_require_identity`, `codex_gate`, `copilot_min_editor`,
    `copilot_min_api_version`, `codex_rate_limit_event`, and `usage(...)` per account."""

    def __init__(self, oauth: FakeOAuth, ca: trustme.CA) -> None:
        super().__init__(ca, hostnames=HOSTNAMES)
        self.oauth = oauth
        self.ca = ca
        self.port: int = self._httpd.server_address[1]
        self.event_gap: float = 0.05  # seconds between two SSE events
        self.stream_events: int = 5  # text deltas per stream
        # Anthropic OAuth requests must open `system` with Claude Code's identity (§5.2).
        self.anthropic_require_identity = False
        # Where the Codex backend reads the client's version for a gated model: "version"
        # = the request's `version` header (what the Codex CLI sends; pleaseai/shunt's docs),
        # "account" = not from the request at all, so no header unlocks it (a Termux port's
        # notes measured that). Sources disagree, so both shapes are here.
        self.codex_gate: Literal["version", "account"] = "version"
        # The oldest client Copilot still serves, or None for no floor: an Editor-Version of
        # the same editor below `copilot_min_editor` (e.g. "vscode/1.110.0"), or an
        # X-GitHub-Api-Version before `copilot_min_api_version` (e.g. "2026-06-01"), is
        # answered with HTTP 466. The facts name no floor (it moves as GitHub retires
        # clients), so a test sets the one it needs.
        self.copilot_min_editor: str | None = None
        self.copilot_min_api_version: str | None = None
        # Whether a Codex stream opens with its `codex.rate_limits` event (docs/providers.md §2.5).
        self.codex_rate_limit_event = True
        self.disconnects: list[tuple[str, str]] = []  # (provider, path) of abandoned streams
        self.streams: list[StreamLog] = []
        self.leaks: list[Leak] = []
        self.attempts: list[Attempt] = []
        self.served: list[Served] = []  # every request to a provider API, in arrival order
        self._usage: dict[tuple[str, str | None], Usage] = {}
        self._label = threading.local()  # the route label of the request on this thread
        self._limits: list[Fault] = []
        self._auth_faults: list[Fault] = []
        self.add_routes(self._route_table())

    # configuration and clients

    @property
    def text(self) -> str:
        """The whole text a generation answers with ("01234" for 5 events)."""
        return full_text(self.stream_events)

    def resolve_toml(self) -> str:
        """keyswap's `[resolve]` table sending every provider host here."""
        lines = ["[resolve]"]
        lines += [f'"{name}:443" = "127.0.0.1:{self.port}"' for name in HOSTNAMES]
        return "\n".join(lines) + "\n"

    def ssl_context(self) -> ssl.SSLContext:
        """A client context trusting this fake's certificate."""
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx

    def client(self, lib: ModuleType = httpx, **kwargs: Any) -> Any:
        """An httpx client that dials this fake for any https URL, keeping SNI and Host.
        `lib=httpx2` builds the same for SDKs on httpx2 (the anthropic SDK)."""
        kwargs.setdefault("timeout", 10)
        return lib.Client(transport=_dial(lib)(self.port, self.ssl_context()), **kwargs)

    def mint_token(self, provider: str, ttl: float = 3600) -> str:
        """An access token of `provider` as if the fake OAuth server had issued it (no login
        flow): "copilot", "codex" (a JWT naming `oauth.codex_account_id`), "anthropic",
        "gemini", "antigravity" or "github". Expire or revoke it through `oauth`."""
        oauth = self.oauth
        if provider == "codex":
            token = oauth._codex_jwt(int(time.time()), ttl, audience="https://api.openai.com/v1")
        else:
            prefixes = {"copilot": "tid=", "anthropic": "sk-ant-oat01-", "github": "gho_"}
            token = prefixes.get(provider, "ya29.") + secrets.token_urlsafe(32)
        with oauth._lock:
            oauth._tokens.add(provider, token, ttl)
        return token

    # test controls

    def rate_limit(
        self,
        provider: str,
        token: str | None = None,
        times: int = 1,
        hint: str = "retry-after",
        seconds: float = 30,
    ) -> None:
        """Answer the next `times` otherwise successful requests of `provider` (only those
        carrying `token` if given: the Bearer token or API key) with that provider's 429.

        `hint`: "retry-after" = all the provider sends, including a `Retry-After` header;
        "body" = no Retry-After, only the provider's own reset field (codex
        `resets_in_seconds`, anthropic `anthropic-ratelimit-unified-reset`, google
        `RetryInfo`, copilot/openai the message text); "resets_at" = like "body" but codex
        sends the absolute `resets_at`; "none" = no timing information at all; "weekly"
        (copilot only) = Copilot's weekly limit: the message says `seconds` in hours while
        Retry-After asks for 5 minutes (docs/providers.md §1.4)."""
        if hint not in HINTS:
            raise ValueError(f"hint must be one of {HINTS}")
        if hint == "weekly" and provider != "copilot":
            raise ValueError("only Copilot sends the weekly shape")
        with self._lock:
            self._limits.append(Fault(provider, token, times, hint, seconds))

    def exhaust_quota(
        self, provider: str = "copilot", token: str | None = None, times: int = 1
    ) -> None:
        """Answer the next `times` otherwise successful requests (of `token` if given) as an
        account whose allowance is spent: Copilot's 402 `quota_exceeded`, with no header at
        all (pi#3643, github/copilot-cli#3431, anomalyco/opencode#48330)."""
        if provider != "copilot":
            raise ValueError("only Copilot's quota answer is known")
        with self._lock:
            self._limits.append(Fault(provider, token, times, "quota"))

    def usage(self, provider: str, token: str | None = None, **values: float | str | None) -> None:
        """Set what `provider`'s answers report of the account `token`'s usage (None: of
        every account without its own), from that account's current numbers. Anthropic
        (`AnthropicUsage`): five_hour, seven_day (fractions 0..1), five_hour_reset,
        seven_day_reset (unix seconds), five_hour_status, seven_day_status, overage. Codex
        (`CodexUsage`): primary, secondary (fractions; sent as percents), primary_minutes,
        secondary_minutes, primary_reset, secondary_reset (unix seconds). E.g.
        `api.usage("anthropic", token=a, five_hour=0.96, seven_day=0.2)`."""
        if provider not in USAGE:
            raise ValueError(f"usage is reported by {sorted(USAGE)}, not {provider!r}")
        known = {f.name for f in fields(USAGE[provider])}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"{provider} usage has no {sorted(unknown)}; it has {sorted(known)}")
        with self._lock:
            self._usage[(provider, token)] = replace(self.usage_of(provider, token), **values)  # type: ignore[arg-type]

    def usage_of(self, provider: str, token: str | None) -> Usage:
        """The usage `provider` reports for the account `token`."""
        found = self._usage.get((provider, token)) or self._usage.get((provider, None))
        return found or USAGE[provider]

    def accounts(self, conversation: str, provider: str | None = None) -> list[str | None]:
        """The accounts (tokens) that answered the requests naming `conversation` with a
        success, in order: one conversation on one account is `len(set(...)) == 1`."""
        with self._lock:
            return [
                s.token
                for s in self.served
                if s.conversation == conversation
                and s.status < 400
                and provider in (None, s.provider)
            ]

    def fail_auth(self, provider: str, times: int = 1, token: str | None = None) -> None:
        """Answer the next `times` requests of `provider` with its 401, even if authorized."""
        with self._lock:
            self._auth_faults.append(Fault(provider, token, times))

    def clear_faults(self) -> None:
        with self._lock:
            self._limits.clear()
            self._auth_faults.clear()

    def wait_for_disconnect(self, count: int = 1, timeout: float = 10.0) -> tuple[str, str]:
        """Block until `count` streams were abandoned by their clients; return the `count`-th."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self.disconnects) >= count, timeout):
                raise TimeoutError(f"no disconnect #{count} in {timeout}s")
            return self.disconnects[count - 1]

    # routes

    def _route_table(self) -> list[Route]:
        def on(hosts: tuple[str, ...], provider: str) -> Any:
            def add(method: str, path: str, endpoint: str, handler: Any) -> Route:
                return route(method, path, handler, (provider, endpoint), hosts)

            return add

        copilot = on(COPILOT_HOSTS, "copilot")
        codex = on(CODEX_HOSTS, "codex")
        openai = on(OPENAI_HOSTS, "openai")
        anthropic = on(ANTHROPIC_HOSTS, "anthropic")
        routes = [
            copilot(
                "POST", "/chat/completions", "chat_completions", partial(self._copilot, "chat")
            ),
            copilot("POST", "/responses", "responses", partial(self._copilot, "responses")),
            copilot("POST", "/v1/messages", "messages", partial(self._copilot, "messages")),
            copilot("GET", "/models", "models", partial(self._copilot, "models")),
            codex("POST", "/backend-api/codex/responses", "responses", self._codex_responses),
            codex("GET", "/backend-api/codex/models", "models", self._codex_models),
            anthropic("POST", "/v1/messages", "messages", self._anthropic),
            anthropic("GET", "/api/oauth/profile", "profile", self._anthropic_profile),
            anthropic("POST", "/v1/echo/{status}", "echo", self._echo),
            openai(
                "POST", "/v1/chat/completions", "chat_completions", partial(self._openai, "chat")
            ),
            openai("POST", "/v1/responses", "responses", partial(self._openai, "responses")),
            openai("GET", "/v1/models", "models", partial(self._openai, "models")),
        ]
        for version in ("v1", "v1beta"):
            routes.append(
                route(
                    "POST",
                    f"/{version}/models/{{target}}",
                    self._google_api,
                    lambda req: ("google", req.args["target"].partition(":")[2] or "unknown"),
                    GOOGLE_API_HOSTS,
                )
            )
        for method, path, name, handler in (
            ("POST", "/v1internal:generateContent", "generateContent", self._code_assist),
            (
                "POST",
                "/v1internal:streamGenerateContent",
                "streamGenerateContent",
                self._code_assist,
            ),
            ("POST", "/v1internal:countTokens", "countTokens", self._code_assist),
            ("POST", "/v1internal:loadCodeAssist", "loadCodeAssist", self._to_oauth),
            ("POST", "/v1internal:onboardUser", "onboardUser", self._to_oauth),
            ("GET", "/v1internal/operations/{op}", "operation", self._to_oauth),
        ):
            label = partial(self._code_assist_label, name)
            routes.append(route(method, path, handler, label, CODE_ASSIST_HOSTS))
        return routes

    def dispatch(self, req: Request) -> Reply:
        at = time.monotonic()
        self._find_leaks(req)
        self._label.value = None
        reply = super().dispatch(req)
        label = self._label.value
        with self._lock:
            self.attempts.append(Attempt(at, req.headers.get("authorization"), reply.status))
            if label is not None and label[0] in _API_PROVIDERS and label[1] in _INFERENCE:
                token = (
                    req.credential("bearer")
                    or req.headers.get("x-api-key")
                    or req.headers.get("x-goog-api-key")
                    or req.params.get("key")
                )
                conversation = conversation_of(label[0], req)
                self.served.append(Served(label[0], token, conversation, reply.status))
        return reply

    def _record(self, req: Request, label: tuple[str, str]) -> None:
        super()._record(req, label)
        self._label.value = label

    def _find_leaks(self, req: Request) -> None:
        host = host_of(req)
        owners = TOKEN_OWNERS.get(host, frozenset())
        places = [(f"header {k}", v) for k, v in req.headers.items()]
        places += [(f"query {k}", v) for k, v in req.params.items()]
        found = [
            Leak(provider, host, req.path, where)
            for provider in TOKEN_PROVIDERS
            if provider not in owners
            for token in self.oauth.valid_access_tokens(provider)
            for where, value in places
            if token in value
        ]
        if found:
            with self._lock:
                self.leaks.extend(found)

    # checks shared by the providers (called under the lock)

    def _take(self, faults: list[Fault], provider: str, token: str | None) -> Fault | None:
        for fault in faults:
            if fault.provider == provider and fault.token in (None, token):
                fault.times -= 1
                if fault.times <= 0:
                    faults.remove(fault)
                return fault
        return None

    def _authenticate(self, provider: str, token: str | None, ok: bool) -> None:
        if self._take(self._auth_faults, provider, token) is not None or not ok:
            raise HttpError(self._unauthorized(provider, token))

    def _throttle(self, provider: str, token: str | None) -> None:
        fault = self._take(self._limits, provider, token)
        if fault is not None:
            raise HttpError(self._too_many(provider, fault, token))

    def _valid(self, provider: str, token: str | None) -> bool:
        return token is not None and token in self.oauth.valid_access_tokens(provider)

    def _unauthorized(self, provider: str, token: str | None) -> Reply:
        if provider == "copilot":
            return text_reply(COPILOT_EXPIRED, 401)
        if provider == "codex":
            return json_reply(CODEX_EXPIRED, 401)
        if provider == "anthropic":
            return json_reply(ANTHROPIC_EXPIRED, 401)
        if provider == "openai":
            error = {
                "message": f"Incorrect API key provided: {_mask(token or '')}. "
                f"You can find your API key at {OPENAI_DOCS}.",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
            return json_reply({"error": error}, 401)
        return json_reply(GOOGLE_UNAUTHENTICATED, 401)

    def _too_many(self, provider: str, fault: Fault, token: str | None) -> Reply:
        now = time.time()
        secs = number(fault.seconds)
        reset_at = int(now + fault.seconds)
        timed = fault.hint != "none"
        retry_after: tuple[tuple[str, str], ...] = ()
        if fault.hint == "retry-after":
            retry_after = (("Retry-After", str(math.ceil(fault.seconds))),)
        if fault.hint == "quota":  # Copilot's spent allowance (see `exhaust_quota`)
            spent: Json = {"message": "You have no quota", "code": "quota_exceeded"}
            return json_reply({"error": spent}, 402)
        if provider == "copilot":
            message = (
                "Sorry, you've hit a rate limit that restricts the number of Copilot model "
                "requests you can make within a specific time period."
            )
            if timed:
                message += f" Please try again in {copilot_duration(fault.seconds)}."
            if fault.hint == "weekly":
                message += f" Please review our Terms of Service ({GITHUB_TERMS})."
                retry_after = (("Retry-After", str(COPILOT_WEEKLY_RETRY_AFTER)),)
            body: Json = {"error": {"message": message, "code": "user_weekly_rate_limited"}}
            return with_headers(json_reply(body, 429), retry_after)
        if provider == "codex":
            error: Json = {
                "type": "usage_limit_reached",
                "message": "The usage limit has been reached",
                "plan_type": "plus",
            }
            if fault.hint in ("retry-after", "body"):
                error["resets_in_seconds"] = secs
            if fault.hint in ("retry-after", "resets_at"):
                error["resets_at"] = reset_at
            # The limited window is full; the answer carries the usage headers as any does.
            codex = self.usage_of("codex", token)
            assert isinstance(codex, CodexUsage)
            spent_codex = replace(codex, primary=max(codex.primary, 1.0), primary_reset=reset_at)
            headers = (*codex_usage_headers(spent_codex, now, timed), *retry_after)
            return with_headers(json_reply({"error": error}, 429), headers)
        if provider == "anthropic":
            usage = self.usage_of("anthropic", token)
            assert isinstance(usage, AnthropicUsage)
            spent_claude = replace(
                usage,
                five_hour=max(usage.five_hour, 1.0),
                five_hour_status="rejected",
                five_hour_reset=reset_at,
            )
            headers = anthropic_usage_headers(spent_claude, now, timed)
            body = {
                "type": "error",
                "error": {
                    "type": "rate_limit_error",
                    "message": "This request would exceed your account's rate limit. "
                    "Please try again later.",
                },
            }
            return with_headers(json_reply(body, 429), headers + retry_after)
        if provider == "openai":
            message = "Rate limit reached for requests."
            if timed:
                message += f" Please try again in {secs}s."
            limited: Json = {
                "message": message,
                "type": "requests",
                "param": None,
                "code": "rate_limit_exceeded",
            }
            return with_headers(json_reply({"error": limited}, 429), retry_after)
        # Google RPC shape (gemini, antigravity, google): no Retry-After header, ever (§3.5).
        info: Json = {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "RATE_LIMIT_EXCEEDED",
            "domain": "cloudcode-pa.googleapis.com",
            "metadata": {"model": "gemini-2.5-pro"},
        }
        details = [info]
        message = "You have exhausted your capacity on this model."
        if timed:
            info["metadata"]["quotaResetDelay"] = f"{secs}s"
            details.append(
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{secs}s"}
            )
            message += f" Your quota will reset after {secs}s."
        body = google_error(429, "RESOURCE_EXHAUSTED", message)
        body["error"]["details"] = details
        return json_reply(body, 429)

    # answers

    def _generate(
        self,
        style: str,
        provider: str,
        req: Request,
        headers: tuple[tuple[str, str], ...] = (),
        lead: list[Json] | None = None,
    ) -> Reply:
        """An answer in `style`; a stream opens with the `lead` events (Responses only)."""
        body = req.body or {}
        model = body.get("model")
        model = model if isinstance(model, str) else DEFAULT_MODEL[style]
        n = self.stream_events
        if body.get("stream") is True:
            if style == "chat":
                events = chat_events(model, n)
            elif style == "responses":
                first = [sse(e, event=e["type"], seq=i) for i, e in enumerate(lead or [])]
                events = first + _Responses(model, n).events(start=len(first))
            else:
                events = anthropic_events(model, n)
            return self._sse(provider, req, events, headers)
        if style == "chat":
            answer = chat_completion(model, n)
        elif style == "responses":
            answer = _Responses(model, n).response(True)
        else:
            answer = anthropic_message(model, n)
        return with_headers(json_reply(answer), headers)

    def _sse(
        self,
        provider: str,
        req: Request,
        events: list[bytes],
        headers: tuple[tuple[str, str], ...] = (),
    ) -> Reply:
        """A streamed reply pacing `events` `event_gap` apart, noticing a client that leaves."""
        gap = self.event_gap
        log = StreamLog(provider, req.path, len(events))
        self.streams.append(log)

        def produce() -> Iterator[bytes]:
            for i, event in enumerate(events):
                if i and gap > 0:
                    time.sleep(gap)
                yield event
                log.sent += 1  # resumed: the handler wrote it and asks for the next
            log.finished = True

        def gone() -> None:
            with self._lock:
                log.disconnected = True
                self.disconnects.append((provider, req.path))
                self._lock.notify_all()

        return Reply(
            200,
            b"",
            "text/event-stream; charset=utf-8",
            headers,
            stream=produce(),
            on_disconnect=gone,
        )

    # Copilot (§1)

    def _copilot(self, style: str, req: Request) -> Reply:
        token = req.credential("bearer")
        self._authenticate("copilot", token, self._valid("copilot", token))
        self._copilot_client(req)
        self._throttle("copilot", token)
        if style == "models":
            return json_reply(COPILOT_MODELS)
        request_id = (("x-request-id", secrets.token_hex(8)),)
        return self._generate(style, "copilot", req, request_id)

    def _copilot_client(self, req: Request) -> None:
        """Copilot serves IDEs: it wants an Editor-Version it can read, an integration id,
        and refuses a client it has retired with 466 (see COPILOT_OUTDATED)."""
        editor = req.headers.get("editor-version", "")
        if not editor:
            raise HttpError(text_reply(COPILOT_NO_EDITOR, 400))
        name, _, text = editor.partition("/")
        version = _version(text)
        if not name or version is None:
            raise HttpError(text_reply(COPILOT_UNKNOWN_EDITOR, 400))
        if not req.headers.get("copilot-integration-id"):
            raise HttpError(text_reply("bad request: missing Copilot-Integration-Id header", 400))
        floor_name, _, floor_text = (self.copilot_min_editor or "").partition("/")
        floor = _version(floor_text) if floor_name == name else None
        if floor is not None and version < floor:
            raise fail(COPILOT_OUTDATED_STATUS, COPILOT_OUTDATED)
        api_version = req.headers.get("x-github-api-version")
        oldest = self.copilot_min_api_version
        if api_version is not None and oldest is not None and api_version < oldest:
            raise fail(COPILOT_OUTDATED_STATUS, COPILOT_OUTDATED)

    # Codex (§2)

    def _codex_auth(self, req: Request) -> str | None:
        token = req.credential("bearer")
        self._authenticate("codex", token, self._valid("codex", token))
        account = codex_account(token) or self.oauth.codex_account_id
        if req.headers.get("chatgpt-account-id") != account:
            error = {
                "message": "The chatgpt-account-id header does not match the token's account.",
                "type": "invalid_request_error",
                "code": "account_mismatch",
            }
            raise fail(403, {"error": error})
        return token

    def _codex_usage(self, token: str | None) -> CodexUsage:
        usage = self.usage_of("codex", token)
        assert isinstance(usage, CodexUsage)
        return usage

    def _codex_responses(self, req: Request) -> Reply:
        token = self._codex_auth(req)
        body = req.body or {}
        if body.get("stream") is not True:
            raise fail(400, {"detail": "Stream must be set to true"})
        if body.get("store") is not False:
            raise fail(400, {"detail": "Store must be set to false"})
        if body.get("instructions") is None:
            raise fail(400, {"detail": "Instructions are required"})
        model = body.get("model")
        if isinstance(model, str) and not self._codex_reaches(req, model):
            raise fail(400, codex_too_old(model))
        self._throttle("codex", token)
        usage, now = self._codex_usage(token), time.time()
        lead = [codex_rate_limits_event(usage, now)] if self.codex_rate_limit_event else []
        return self._generate("responses", "codex", req, codex_usage_headers(usage, now), lead)

    def _codex_reaches(self, req: Request, model: str) -> bool:
        """Whether this request's client may use `model` (see `codex_gate`)."""
        floor = _version(CODEX_MODEL_FLOORS.get(model, "0.0.0")) or (0,)
        if not any(floor):
            return True
        if self.codex_gate == "account":
            return False
        said = _version(req.headers.get("version", ""))
        return said is not None and said >= floor

    def _codex_models(self, req: Request) -> Reply:
        """Only the models the asking client's `client_version` reaches; without one, only
        those that need no particular version."""
        self._throttle("codex", self._codex_auth(req))
        said = _version(req.params.get("client_version", "")) or (0,)
        listed = [
            m
            for m in CODEX_MODELS["models"]
            if said >= (_version(m["minimal_client_version"]) or ())
        ]
        usage = codex_usage_headers(self._codex_usage(req.credential("bearer")), time.time())
        return with_headers(json_reply({"models": listed}), usage)

    # Anthropic (§5) and the real-API-key path

    def _anthropic(self, req: Request) -> Reply:
        bearer, api_key = req.credential("bearer"), req.headers.get("x-api-key")
        if api_key is not None:
            if bearer is not None or not api_key.startswith("sk-ant-api"):
                raise fail(401, anthropic_error("invalid x-api-key"))
            self._authenticate("anthropic", api_key, True)
            token = api_key
        elif bearer is None:
            raise fail(401, anthropic_error("x-api-key header is required"))
        else:
            self._authenticate("anthropic", bearer, self._valid("anthropic", bearer))
            betas = [b.strip() for b in req.headers.get("anthropic-beta", "").split(",")]
            if ANTHROPIC_OAUTH_BETA not in betas:
                raise fail(401, anthropic_error("OAuth authentication is currently not supported."))
            if self.anthropic_require_identity and not has_identity(req.body or {}):
                error = {
                    "type": "invalid_request_error",
                    "message": "This credential is only authorized for use with Claude Code "
                    "and cannot be used for other API requests.",
                }
                raise fail(400, {"type": "error", "error": error})
            token = bearer
        self._throttle("anthropic", token)
        headers: tuple[tuple[str, str], ...] = (("request-id", _ident("req_")),)
        if api_key is None:  # the unified limiter reports subscription use (§5.3)
            usage = self.usage_of("anthropic", token)
            assert isinstance(usage, AnthropicUsage)
            headers += anthropic_usage_headers(usage, time.time())
        else:
            headers += (("anthropic-ratelimit-unified-status", "allowed"),)
        return self._generate("messages", "anthropic", req, headers)

    def _anthropic_profile(self, req: Request) -> Reply:
        return self.oauth.dispatch(replace(req, path=PATHS["anthropic"]["profile"], args={}))

    def _echo(self, req: Request) -> Reply:
        """A careless API that quotes the Authorization header it got, in a header and in
        the body: an Anthropic error for `/v1/echo/<status>`, or for 200 an SSE stream whose
        first event is split in two chunks in the middle of the token."""
        auth = req.headers.get("authorization", "")
        echo = (("x-echo-authorization", auth),)
        status = int(req.args["status"])
        if status != 200:
            error = anthropic_error(f"invalid authorization header: {auth}")
            return with_headers(json_reply(error, status), echo)
        quoted = sse({"authorization": auth}, event="echo")
        cut = quoted.index(auth.encode()) + len(auth) // 2
        return self._sse("anthropic", req, [quoted[:cut], quoted[cut:], sse({}, "done")], echo)

    # api.openai.com with a real key

    def _openai(self, style: str, req: Request) -> Reply:
        key = req.credential("bearer")
        self._authenticate("openai", key, bool(key and key.startswith("sk-")))
        self._throttle("openai", key)
        if style == "models":
            return json_reply(OPENAI_MODELS)
        return self._generate(style, "openai", req)

    # Google: Code Assist (§3, §4) and generativelanguage with a real key

    def _code_assist_provider(self, req: Request) -> str:
        token = req.credential("bearer")
        for provider in GOOGLE:
            if self._valid(provider, token):
                return provider
        return "antigravity" if host_of(req).startswith("daily-") else "gemini"

    def _code_assist_label(self, name: str, req: Request) -> tuple[str, str]:
        return self._code_assist_provider(req), name

    def _to_oauth(self, req: Request) -> Reply:
        """loadCodeAssist / onboardUser / operations: the fake OAuth server answers those."""
        base = PATHS[self._code_assist_provider(req)]["code_assist"]
        return self.oauth.dispatch(replace(req, path=base + req.path, args={}))

    def _code_assist(self, req: Request) -> Reply:
        provider = self._code_assist_provider(req)
        token = req.credential("bearer")
        self._authenticate(provider, token, self._valid(provider, token))
        body = req.body or {}
        method = req.path.rpartition(":")[2]

        def invalid(message: str) -> HttpError:
            return fail(400, google_error(400, "INVALID_ARGUMENT", message))

        if not isinstance(body.get("request"), dict):
            raise invalid("request is required.")
        if method != "countTokens":
            for name in ("model", "project"):
                if not isinstance(body.get(name), str) or not body[name]:
                    raise invalid(f"{name} is required.")
        self._throttle(provider, token)
        if method == "countTokens":
            return json_reply({"totalTokens": 10})
        return self._gemini(provider, req, str(body["model"]), wrapped=True)

    def _google_api(self, req: Request) -> Reply:
        model, _, action = req.args["target"].partition(":")
        key = req.headers.get("x-goog-api-key") or req.params.get("key")
        if not key:
            if req.credential("bearer"):
                raise fail(401, GOOGLE_UNAUTHENTICATED)
            raise fail(
                403,
                google_error(
                    403,
                    "PERMISSION_DENIED",
                    "Method doesn't allow unregistered callers. Please use an API Key.",
                ),
            )
        if not key.startswith("AIza"):
            body = google_error(
                400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key."
            )
            body["error"]["details"] = [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                }
            ]
            raise fail(400, body)
        self._authenticate("google", key, True)
        self._throttle("google", key)
        if action == "countTokens":
            return json_reply({"totalTokens": 10})
        if action not in ("generateContent", "streamGenerateContent"):
            raise fail(404, google_error(404, "NOT_FOUND", f"Unknown method {action!r}."))
        return self._gemini("google", req, model, wrapped=False)

    def _gemini(self, provider: str, req: Request, model: str, wrapped: bool) -> Reply:
        n = self.stream_events
        if req.path.endswith(":streamGenerateContent"):
            chunks = gemini_chunks(model, n, wrapped)
            if req.params.get("alt") == "sse":
                return self._sse(provider, req, [sse(c) for c in chunks])
            return json_reply(chunks)
        return json_reply(gemini_response(model, n, wrapped))


@cache
def _dial(lib: ModuleType) -> Any:
    """A transport class of `lib` (httpx or httpx2) sending every request to 127.0.0.1:port,
    with the URL's host as SNI and Host."""

    class Dial(lib.BaseTransport):  # type: ignore[name-defined,misc]
        def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
            self._port = port
            self._inner = lib.HTTPTransport(verify=ctx)

        def handle_request(self, request: Any) -> Any:
            host = request.url.host
            request.url = request.url.copy_with(host="127.0.0.1", port=self._port)
            request.extensions = {**request.extensions, "sni_hostname": host}
            return self._inner.handle_request(request)

        def close(self) -> None:
            self._inner.close()

    return Dial
