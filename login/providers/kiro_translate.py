"""Kiro's wire formats: Anthropic Messages and OpenAI Chat Completions requests as Kiro's
`conversationState`, and Kiro's event stream back as the client's own SSE events (or one JSON
answer). Shapes from docs/providers.md §7.1 (KLB `converters_core.py`; CPA-jc
`translator/kiro/{claude,openai}/*`, `executor/kiro_executor.go`; the `WireToolUseEvent` /
`WireMetadataEvent` types of the dsh-kiro adapter): read for facts, nothing copied.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from typing import Any

from ..errors import ClientError
from .base import LocalReply
from .kiro_stream import EventStreamDecoder, EventStreamError, Message
from .streams import BrokenStream

Json = dict[str, Any]

# Kiro's model ids are dotted. The names clients send, and what keyswap asks Kiro for
# (README "Kiro" has this table): a date suffix goes, `-4-5` becomes `-4.5`; any other name
# goes as it is (Kiro answers an unknown one with 400 INVALID_MODEL_ID, which the client
# gets in its own error shape).
MODEL_TABLE = {
    "claude-sonnet-4-6": "claude-sonnet-4.6",
    "claude-sonnet-4-5": "claude-sonnet-4.5",
    "claude-sonnet-4-0": "claude-sonnet-4",
    "claude-sonnet-4": "claude-sonnet-4",
    "claude-haiku-4-5": "claude-haiku-4.5",
    "claude-opus-4-5": "claude-opus-4.5",
    "claude-opus-4-6": "claude-opus-4.6",
    "claude-3-7-sonnet": "claude-3.7-sonnet",
    "default": "auto",
}
# What keyswap lists for /v1/models (docs/providers.md §7.1 names these; Kiro's own list is
# `ListAvailableModels` on q.{region}, which depends on the account).
KNOWN_MODELS = (
    "auto",
    "claude-sonnet-4.6",
    "claude-sonnet-4.5",
    "claude-sonnet-4",
    "claude-haiku-4.5",
    "claude-opus-4.5",
)
MAX_TOOL_NAME = 64  # Kiro refuses longer tool names
MAX_DESCRIPTION = 10_000  # longer tool descriptions are cut (CPA-jc)
# Thinking is asked for in the prompt (CPA-jc, kiro.rs: the system text carries these tags),
# and comes back as `reasoningContentEvent`s or as a leading <thinking>…</thinking> in the text.
THINKING_OPEN, THINKING_CLOSE = "<thinking>", "</thinking>"
_EFFORT_BUDGET = {"minimal": 1024, "low": 4096, "medium": 10_000, "high": 24_576}
EMPTY = "(empty)"
_DATE = re.compile(r"-(\d{8}|latest)$")
_DOTTABLE = re.compile(r"^(claude-[a-z]+)-(\d+)-(\d+)$")


def kiro_model(name: str | None) -> str:
    if not name:
        return "auto"
    base = _DATE.sub("", name)
    if base in MODEL_TABLE:
        return MODEL_TABLE[base]
    if found := _DOTTABLE.match(base):
        return f"{found[1]}-{found[2]}.{found[3]}"
    return name


def models_reply(openai: bool) -> LocalReply:
    now = int(time.time())
    data = [{"id": m, "object": "model", "created": now, "owned_by": "kiro"} for m in KNOWN_MODELS]
    return LocalReply(200, json.dumps({"object": "list", "data": data}).encode())


# -- requests ---------------------------------------------------------------------------------


class _Turn:
    def __init__(self, role: str) -> None:
        self.role = role
        self.text: list[str] = []
        self.images: list[Json] = []
        self.tool_uses: list[Json] = []
        self.tool_results: list[Json] = []


def _text_of(content: Any) -> str:
    """Text of a string or a list of text parts (images and others left out)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p
        )
    return ""


def _image(media_type: str, data: str) -> Json:
    return {"format": media_type.rpartition("/")[2] or "png", "source": {"bytes": data}}


def _data_url(url: str) -> Json | None:
    head, _, data = url.partition(",")
    if not head.startswith("data:") or ";base64" not in head:
        return None  # Kiro takes image bytes only
    return _image(head[5:].split(";")[0], data)


def _anthropic(body: Json, names: dict[str, str]) -> tuple[str, list[_Turn], list[Json], int]:
    system = _text_of(body.get("system"))
    turns = []
    for msg in body.get("messages") or []:
        if not isinstance(msg, dict):
            raise ClientError(400, "each message must be an object")
        turn = _Turn("assistant" if msg.get("role") == "assistant" else "user")
        content = msg.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for block in blocks or []:
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind == "text":
                turn.text.append(str(block.get("text") or ""))
            elif kind == "image":
                source = block.get("source")
                if isinstance(source, dict) and source.get("type") == "base64":
                    media, data = str(source.get("media_type")), str(source.get("data"))
                    turn.images.append(_image(media, data))
            elif kind == "tool_use":
                turn.tool_uses.append(
                    {
                        "toolUseId": block.get("id"),
                        "name": _short(str(block.get("name")), names),
                        "input": block.get("input") or {},
                    }
                )
            elif kind == "tool_result":
                status = "error" if block.get("is_error") else "success"
                text = _text_of(block.get("content")) or EMPTY
                turn.tool_results.append(
                    {
                        "toolUseId": block.get("tool_use_id"),
                        "status": status,
                        "content": [{"text": text}],
                    }
                )
            # thinking / redacted_thinking blocks of earlier turns are not sent back: Kiro's
            # history has no place keyswap can fill faithfully (its signature is Kiro's own).
        turns.append(turn)
    tools = []
    for tool in body.get("tools") or []:
        if isinstance(tool, dict) and isinstance(tool.get("input_schema"), dict):
            tools.append(_tool(tool["name"], tool.get("description"), tool["input_schema"], names))
    thinking = body.get("thinking")
    budget = 0
    if isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive"):
        budget = int(thinking.get("budget_tokens") or _EFFORT_BUDGET["high"])
    return system, turns, tools, budget


def _openai(body: Json, names: dict[str, str]) -> tuple[str, list[_Turn], list[Json], int]:
    system: list[str] = []
    turns: list[_Turn] = []
    for msg in body.get("messages") or []:
        if not isinstance(msg, dict):
            raise ClientError(400, "each message must be an object")
        role = msg.get("role")
        content = msg.get("content")
        if role in ("system", "developer"):
            system.append(_text_of(content))
            continue
        if role == "tool":
            turn = _Turn("user")
            turn.tool_results.append(
                {
                    "toolUseId": msg.get("tool_call_id"),
                    "status": "success",
                    "content": [{"text": _text_of(content) or EMPTY}],
                }
            )
            turns.append(turn)
            continue
        turn = _Turn("assistant" if role == "assistant" else "user")
        if isinstance(content, str):
            turn.text.append(content)
        for part in content if isinstance(content, list) else []:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "text":
                turn.text.append(str(part.get("text") or ""))
            elif part.get("type") == "image_url":
                url = (part.get("image_url") or {}).get("url") or ""
                if (image := _data_url(str(url))) is not None:
                    turn.images.append(image)
        for call in msg.get("tool_calls") or []:
            fn = call.get("function") or {}
            try:
                args = json.loads(fn.get("arguments") or "{}")
            except ValueError:
                args = {}
            turn.tool_uses.append(
                {
                    "toolUseId": call.get("id"),
                    "name": _short(str(fn.get("name")), names),
                    "input": args,
                }
            )
        turns.append(turn)
    tools = []
    for tool in body.get("tools") or []:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(fn, dict) and fn.get("name"):
            schema = fn.get("parameters") or {"type": "object", "properties": {}}
            tools.append(_tool(fn["name"], fn.get("description"), schema, names))
    effort = body.get("reasoning_effort")
    budget = _EFFORT_BUDGET.get(effort, 0) if isinstance(effort, str) else 0
    return "\n\n".join(s for s in system if s), turns, tools, budget


def _short(name: str, names: dict[str, str]) -> str:
    """A tool name Kiro takes (≤ 64 characters): a longer one is cut and given a hash, and
    mapped back to the client's name in the answer."""
    if len(name) <= MAX_TOOL_NAME:
        return name
    short = f"{name[:55]}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    names[short] = name
    return short


def _clean_schema(schema: Any) -> Any:
    """Without `additionalProperties` and empty `required` lists, which Kiro refuses."""
    if isinstance(schema, dict):
        return {
            k: _clean_schema(v)
            for k, v in schema.items()
            if k != "additionalProperties" and not (k == "required" and v == [])
        }
    if isinstance(schema, list):
        return [_clean_schema(v) for v in schema]
    return schema


def _tool(name: str, description: Any, schema: Json, names: dict[str, str]) -> Json:
    text = str(description or "") or name
    return {
        "toolSpecification": {
            "name": _short(str(name), names),
            "description": text[:MAX_DESCRIPTION],
            "inputSchema": {"json": _clean_schema(schema)},
        }
    }


def _alternating(turns: list[_Turn]) -> list[_Turn]:
    """One turn per role change, starting with the user and ending with the user's."""
    merged: list[_Turn] = []
    for turn in turns:
        if merged and merged[-1].role == turn.role:
            last = merged[-1]
            last.text += turn.text
            last.images += turn.images
            last.tool_uses += turn.tool_uses
            last.tool_results += turn.tool_results
        else:
            merged.append(turn)
    if not merged or merged[0].role != "user":
        merged.insert(0, _Turn("user"))
    if merged[-1].role != "user":
        # Kiro answers the current user message; a trailing assistant turn (a prefill) goes
        # to the history and the model is asked to continue.
        follow = _Turn("user")
        follow.text.append("Continue.")
        merged.append(follow)
    return merged


def _untooled(turns: list[_Turn]) -> None:
    """Tool calls and results as text, for a request that declares no tools (Kiro refuses
    `toolResults` without `tools`)."""
    for turn in turns:
        for use in turn.tool_uses:
            turn.text.append(f"[tool call {use['name']} {json.dumps(use['input'])}]")
        for res in turn.tool_results:
            turn.text.append(f"[tool result {res['toolUseId']}]: {res['content'][0]['text']}")
        turn.tool_uses, turn.tool_results = [], []


def to_kiro(dialect: str, body: Json, profile_arn: str | None) -> tuple[Json, Json]:
    """The Kiro request for a client's body, and the notes its answer is read with."""
    names: dict[str, str] = {}
    reader = _anthropic if dialect == "anthropic" else _openai
    system, turns, tools, budget = reader(body, names)
    model = kiro_model(body.get("model") if isinstance(body.get("model"), str) else None)
    if budget:
        prefix = (
            f"<thinking_mode>enabled</thinking_mode>"
            f"<max_thinking_length>{budget}</max_thinking_length>"
        )
        system = f"{prefix}\n{system}" if system else prefix
    turns = _alternating(turns)
    if not tools:
        _untooled(turns)
    if system:
        turns[0].text.insert(0, system)
    history: list[Json] = []
    for turn in turns[:-1]:
        history.append(_wire(turn, model, None))
    current = _wire(turns[-1], model, tools)
    state: Json = {
        "chatTriggerType": "MANUAL",
        "conversationId": str(uuid.uuid4()),
        "currentMessage": current,
    }
    if history:
        state["history"] = history
    out: Json = {"conversationState": state}
    if profile_arn:
        out["profileArn"] = profile_arn
    options = body.get("stream_options")
    notes: Json = {
        "stream": body.get("stream") is True,
        "model": body.get("model") or model,
        "thinking": bool(budget),
        "names": names,
        "include_usage": isinstance(options, dict) and options.get("include_usage") is True,
    }
    return out, notes


def _wire(turn: _Turn, model: str, tools: list[Json] | None) -> Json:
    text = "\n\n".join(t for t in turn.text if t)
    if turn.role == "assistant":
        msg: Json = {"content": text or EMPTY}
        if turn.tool_uses:
            msg["toolUses"] = turn.tool_uses
        return {"assistantResponseMessage": msg}
    user: Json = {"content": text or EMPTY, "modelId": model, "origin": "AI_EDITOR"}
    if turn.images:
        user["images"] = turn.images
    context: Json = {}
    if tools:
        context["tools"] = tools
    if turn.tool_results:
        context["toolResults"] = turn.tool_results
    if context:
        user["userInputMessageContext"] = context
    return {"userInputMessage": user}


# -- answers ----------------------------------------------------------------------------------


class _Thinking:
    """Splits a leading <thinking>…</thinking> out of the answer's text, across chunks."""

    def __init__(self, on: bool) -> None:
        self.state = "start" if on else "text"
        self.held = ""

    def feed(self, text: str) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        self.held += text
        while self.held:
            if self.state == "text":
                out.append(("text", self.held))
                self.held = ""
            elif self.state == "after":  # the blank lines after </thinking> are no answer
                self.held = self.held.lstrip("\n")
                if self.held:
                    self.state = "text"
            elif self.state == "start":
                stripped = self.held.lstrip()
                if stripped.startswith(THINKING_OPEN):
                    self.held = stripped[len(THINKING_OPEN) :]
                    self.state = "thinking"
                elif THINKING_OPEN.startswith(stripped):
                    break  # not yet known
                else:
                    self.state = "text"
            else:  # thinking
                end = self.held.find(THINKING_CLOSE)
                if end >= 0:
                    if end:
                        out.append(("thinking", self.held[:end]))
                    self.held = self.held[end + len(THINKING_CLOSE) :]
                    self.state = "after"
                    continue
                keep = _partial_suffix(self.held, THINKING_CLOSE)
                if len(self.held) > keep:
                    out.append(("thinking", self.held[: len(self.held) - keep]))
                    self.held = self.held[len(self.held) - keep :]
                break
        return out

    def end(self) -> list[tuple[str, str]]:
        held, self.held = self.held, ""
        if not held:
            return []
        if self.state == "after":
            return []
        return [("thinking" if self.state == "thinking" else "text", held)]


def _partial_suffix(text: str, tag: str) -> int:
    """How many trailing characters of `text` could begin `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


_STOP = {"MAX_TOKENS": "max_tokens", "TOOL_USE": "tool_use", "END_TURN": "end_turn"}
_FINISH = {"max_tokens": "length", "tool_use": "tool_calls", "end_turn": "stop"}
_ERROR_STATUS = {"ThrottlingException": 429, "ValidationException": 400}


def _sse(event: str | None, data: Json) -> bytes:
    head = f"event: {event}\n" if event else ""
    return (head + "data: " + json.dumps(data, separators=(",", ":")) + "\n\n").encode()


class KiroAnswer:
    """Kiro's event stream as the client's answer: Anthropic or OpenAI SSE event by event, or
    one JSON object at the end for a call that asked for no stream. A broken frame (bad CRC)
    becomes an error event in the client's dialect, then `BrokenStream`, so the relay ends
    the client's stream abruptly: never a clean, silently truncated answer."""

    def __init__(self, notes: Json) -> None:
        self.dialect = notes.get("dialect", "anthropic")
        self.stream = bool(notes.get("stream"))
        self.model = str(notes.get("model") or "auto")
        self.names: dict[str, str] = notes.get("names") or {}
        self.include_usage = bool(notes.get("include_usage"))
        self.content_type: str | None = "text/event-stream" if self.stream else "application/json"
        self._decoder = EventStreamDecoder()
        self._thinking = _Thinking(bool(notes.get("thinking")))
        self._id = uuid.uuid4().hex[:24]
        self._created = int(time.time())
        self._started = False
        self._done = False
        self._broken = False
        # The answer so far: blocks of {"type": text|thinking|tool_use, ...}.
        self.blocks: list[Json] = []
        self._open: Json | None = None  # the block events go to
        self._tool_ids: dict[str, int] = {}  # Kiro's toolUseId → tool call index (OpenAI)
        self.usage: Json = {}
        self.stop: str | None = None
        self._error_body: Json | None = None

    # -- the reshaper's protocol

    def feed(self, chunk: bytes) -> bytes:
        if self._broken:
            raise BrokenStream("Kiro's event stream was broken")
        try:
            messages = self._decoder.feed(chunk)
        except EventStreamError as exc:
            return self._break(str(exc))
        return b"".join(self._message(m) for m in messages)

    def end(self) -> bytes:
        if self._broken:
            raise BrokenStream("Kiro's event stream was broken")
        try:
            self._decoder.end()
        except EventStreamError as exc:
            out = self._break(str(exc))
            if self.stream:
                return out
            raise BrokenStream(str(exc)) from None
        if self._error_body is not None:
            return json.dumps(self._error_body).encode()
        if self._done:
            return b""
        out = self._flush_thinking() + self._finish()
        return out if self.stream else self._whole()

    # -- decoding

    def _break(self, why: str) -> bytes:
        self._broken = True
        return self._error(502, f"keyswap: Kiro's answer broke off ({why})")

    def _message(self, msg: Message) -> bytes:
        if self._done:
            return b""
        kind = msg.header(":message-type") or "event"
        if kind in ("exception", "error"):
            name = msg.header(":exception-type") or msg.header(":error-code") or "error"
            payload = _json(msg.payload)
            said = payload.get("message") or payload.get("Message") or msg.header(":error-message")
            status = _ERROR_STATUS.get(name.rsplit("#", 1)[-1], 502)
            reason = payload.get("reason")
            text = f"Kiro: {name}: {said or ''}{f' ({reason})' if reason else ''}".strip()
            self._done = True
            out = self._error(status, text)
            return out if self.stream else b""
        event = msg.header(":event-type") or ""
        data = _json(msg.payload)
        if event == "assistantResponseEvent":
            out = b""
            for kind_, text in self._thinking.feed(str(data.get("content") or "")):
                out += self._text(kind_, text)
            return out
        if event == "reasoningContentEvent":
            out = self._flush_thinking()
            if data.get("text"):
                out += self._text("thinking", str(data["text"]))
            if data.get("signature"):
                out += self._signature(str(data["signature"]))
            return out
        if event == "toolUseEvent":
            return self._flush_thinking() + self._tool(data)
        if event in ("messageMetadataEvent", "metadataEvent"):
            usage = data.get("tokenUsage")
            if isinstance(usage, dict):
                self.usage = usage
            if isinstance(data.get("stopReason"), str):
                self.stop = data["stopReason"]
            return b""
        if event == "invalidStateEvent":
            self._done = True
            text = f"Kiro: invalid state: {data.get('message') or data.get('reason') or ''}"
            out = self._error(400, text.strip())
            return out if self.stream else b""
        return b""  # meteringEvent, contextUsageEvent, messageStopEvent, anything new

    def _flush_thinking(self) -> bytes:
        return b"".join(self._text(k, t) for k, t in self._thinking.end())

    # -- building the answer

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        if not self.stream:
            return b""
        if self.dialect == "anthropic":
            message: Json = {
                "id": f"msg_{self._id}",
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }
            return _sse("message_start", {"type": "message_start", "message": message})
        return self._chunk({"role": "assistant", "content": ""})

    def _chunk(self, delta: Json, finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return _sse(
            None,
            {
                "id": f"chatcmpl-{self._id}",
                "object": "chat.completion.chunk",
                "created": self._created,
                "model": self.model,
                "choices": [choice],
            },
        )

    def _open_block(self, block: Json) -> bytes:
        out = self._close_block()
        self.blocks.append(block)
        self._open = block
        if not self.stream or self.dialect != "anthropic":
            return out
        index = len(self.blocks) - 1
        shown = {k: v for k, v in block.items() if not k.startswith("_")}
        if block["type"] == "tool_use":
            shown["input"] = {}
        return out + _sse(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": shown},
        )

    def _close_block(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        if not self.stream or self.dialect != "anthropic":
            return b""
        index = len(self.blocks) - 1
        return _sse("content_block_stop", {"type": "content_block_stop", "index": index})

    def _text(self, kind: str, text: str) -> bytes:
        if not text:
            return b""
        out = self._start()
        if self._open is None or self._open["type"] != kind:
            fresh: Json = {"type": "text", "text": ""}
            if kind == "thinking":
                fresh = {"type": "thinking", "thinking": "", "signature": ""}
            out += self._open_block(fresh)
        assert self._open is not None
        self._open["text" if kind == "text" else "thinking"] += text
        if not self.stream:
            return out
        if self.dialect == "anthropic":
            index = len(self.blocks) - 1
            delta = (
                {"type": "text_delta", "text": text}
                if kind == "text"
                else {"type": "thinking_delta", "thinking": text}
            )
            return out + _sse(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        key = "content" if kind == "text" else "reasoning_content"
        return out + self._chunk({key: text})

    def _signature(self, signature: str) -> bytes:
        out = self._start()
        if self._open is None or self._open["type"] != "thinking":
            out += self._open_block({"type": "thinking", "thinking": "", "signature": ""})
        assert self._open is not None
        self._open["signature"] += signature
        if self.stream and self.dialect == "anthropic":
            index = len(self.blocks) - 1
            delta = {"type": "signature_delta", "signature": signature}
            out += _sse(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        return out

    def _tool(self, data: Json) -> bytes:
        out = self._start()
        use_id = str(data.get("toolUseId") or "")
        block = self._open
        if block is None or block["type"] != "tool_use" or block["id"] != use_id:
            name = str(data.get("name") or "")
            block = {
                "type": "tool_use",
                "id": use_id,
                "name": self.names.get(name, name),
                "_input": "",
            }
            index = self._tool_ids.setdefault(use_id, len(self._tool_ids))
            out += self._open_block(block)
            if self.stream and self.dialect == "openai":
                call = {
                    "index": index,
                    "id": use_id,
                    "type": "function",
                    "function": {"name": block["name"], "arguments": ""},
                }
                out += self._chunk({"tool_calls": [call]})
        piece = data.get("input")
        if isinstance(piece, dict):  # some answers carry the whole input as an object
            piece = json.dumps(piece)
        if isinstance(piece, str) and piece:
            block["_input"] += piece
            if self.stream and self.dialect == "anthropic":
                index = len(self.blocks) - 1
                delta = {"type": "input_json_delta", "partial_json": piece}
                out += _sse(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
            elif self.stream:
                call = {"index": self._tool_ids[use_id], "function": {"arguments": piece}}
                out += self._chunk({"tool_calls": [call]})
        if data.get("stop"):
            out += self._close_block()
        return out

    def _stop_reason(self) -> str:
        if any(b["type"] == "tool_use" for b in self.blocks):
            return "tool_use"
        return _STOP.get(self.stop or "", "end_turn")

    def _usage_numbers(self) -> tuple[int, int, int]:
        u = self.usage

        def num(key: str) -> int:
            value = u.get(key)
            return int(value) if isinstance(value, int | float) else 0

        return num("uncachedInputTokens"), num("outputTokens"), num("cacheReadInputTokens")

    def _finish(self) -> bytes:
        self._done = True
        out = self._start() + self._close_block()
        if not self.stream:
            return b""
        stop = self._stop_reason()
        fresh, output, cached = self._usage_numbers()
        if self.dialect == "anthropic":
            usage = {"input_tokens": fresh, "output_tokens": output}
            if cached:
                usage["cache_read_input_tokens"] = cached
            out += _sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": usage,
                },
            )
            return out + _sse("message_stop", {"type": "message_stop"})
        out += self._chunk({}, _FINISH.get(stop, "stop"))
        if self.include_usage:
            total = fresh + cached
            out += _sse(
                None,
                {
                    "id": f"chatcmpl-{self._id}",
                    "object": "chat.completion.chunk",
                    "created": self._created,
                    "model": self.model,
                    "choices": [],
                    "usage": {
                        "prompt_tokens": total,
                        "completion_tokens": output,
                        "total_tokens": total + output,
                    },
                },
            )
        return out + b"data: [DONE]\n\n"

    def _whole(self) -> bytes:
        stop = self._stop_reason()
        fresh, output, cached = self._usage_numbers()
        if self.dialect == "anthropic":
            content = []
            for b in self.blocks:
                if b["type"] == "tool_use":
                    content.append(
                        {"type": "tool_use", "id": b["id"], "name": b["name"], "input": _input(b)}
                    )
                else:
                    content.append(b)
            usage = {"input_tokens": fresh, "output_tokens": output}
            if cached:
                usage["cache_read_input_tokens"] = cached
            answer: Json = {
                "id": f"msg_{self._id}",
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": content,
                "stop_reason": stop,
                "stop_sequence": None,
                "usage": usage,
            }
        else:
            message: Json = {
                "role": "assistant",
                "content": "".join(b["text"] for b in self.blocks if b["type"] == "text"),
            }
            reasoning = "".join(b["thinking"] for b in self.blocks if b["type"] == "thinking")
            if reasoning:
                message["reasoning_content"] = reasoning
            calls = [
                {
                    "id": b["id"],
                    "type": "function",
                    "function": {"name": b["name"], "arguments": json.dumps(_input(b))},
                }
                for b in self.blocks
                if b["type"] == "tool_use"
            ]
            if calls:
                message["tool_calls"] = calls
            answer = {
                "id": f"chatcmpl-{self._id}",
                "object": "chat.completion",
                "created": self._created,
                "model": self.model,
                "choices": [
                    {"index": 0, "message": message, "finish_reason": _FINISH.get(stop, "stop")}
                ],
                "usage": {
                    "prompt_tokens": fresh + cached,
                    "completion_tokens": output,
                    "total_tokens": fresh + cached + output,
                },
            }
        return json.dumps(answer, separators=(",", ":")).encode()

    def _error(self, status: int, message: str) -> bytes:
        """An error in the client's dialect: an SSE event in a stream, else the JSON body
        (the status is upstream's 200 by then: the body says what went wrong)."""
        body = error_json(self.dialect, status, message)
        if not self.stream:
            self._error_body = body
            return b""
        if self.dialect == "anthropic":
            return _sse("error", body)
        return _sse(None, body)


def _input(block: Json) -> Any:
    raw = block.get("_input") or ""
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        return {"_raw": raw}


def _json(payload: bytes) -> Json:
    try:
        data = json.loads(payload) if payload else {}
    except (ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


_ANTHROPIC_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    429: "rate_limit_error",
}


def error_json(dialect: str, status: int, message: str) -> Json:
    if dialect == "anthropic":
        kind = _ANTHROPIC_TYPE.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    kind = "invalid_request_error" if 400 <= status < 500 else "server_error"
    if status == 429:
        kind = "rate_limit_exceeded"
    return {"error": {"message": message, "type": kind, "code": f"kiro_{status}"}}


class KiroError:
    """A Kiro error answer (`{message, reason}`, or AWS's `__type`) in the client's error
    shape, with Kiro's reason: `CONTENT_LENGTH_EXCEEDS_THRESHOLD`, `INVALID_MODEL_ID`,
    `MONTHLY_REQUEST_COUNT`, `TEMPORARILY_SUSPENDED` (docs/providers.md §7.1)."""

    content_type: str | None = "application/json"

    def __init__(self, dialect: str, status: int) -> None:
        self.dialect, self.status = dialect, status
        self._said = bytearray()

    def feed(self, chunk: bytes) -> bytes:
        if len(self._said) < 16384:
            self._said += chunk[: 16384 - len(self._said)]
        return b""

    def end(self) -> bytes:
        data = _json(bytes(self._said))
        message: Any = data.get("message") or data.get("Message") or ""
        reason = data.get("reason")
        kind = str(data.get("__type") or "").rsplit("#", 1)[-1]
        parts = [p for p in (kind, str(message)) if p]
        text = f"Kiro answered HTTP {self.status}" + (f": {': '.join(parts)}" if parts else "")
        if reason:
            text += f" ({reason})"
        if not data and self._said:
            text += f": {bytes(self._said[:300]).decode('utf-8', 'replace')}"
        return json.dumps(error_json(self.dialect, self.status, text)).encode()
