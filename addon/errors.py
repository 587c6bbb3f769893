"""Error answers in the shape the client's SDK understands (OpenAI, Anthropic, Google)."""

from __future__ import annotations

import json

from login.providers.base import Dialect

_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
}
_ANTHROPIC_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}
_OPENAI_TYPE = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    429: "rate_limit_exceeded",
}


def error_body(dialect: Dialect, status: int, message: str) -> bytes:
    message = f"keyswap: {message}"
    if dialect == "anthropic":
        kind = _ANTHROPIC_TYPE.get(status, "api_error")
        body: object = {"type": "error", "error": {"type": kind, "message": message}}
    elif dialect == "google":
        body = {
            "error": {
                "code": status,
                "message": message,
                "status": _GOOGLE_STATUS.get(status, "UNKNOWN"),
            }
        }
    else:
        kind = _OPENAI_TYPE.get(status, "server_error")
        body = {"error": {"message": message, "type": kind, "code": f"keyswap_{status}"}}
    return json.dumps(body).encode()


def error_headers(retry_after: float | None = None) -> dict[str, str]:
    headers = {"content-type": "application/json", "cache-control": "no-store"}
    if retry_after is not None:
        headers["retry-after"] = str(max(1, int(retry_after + 0.999)))
    return headers
