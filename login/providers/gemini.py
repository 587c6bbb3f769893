"""Gemini Code Assist via Google login, with gemini-cli's OAuth client (docs/providers.md §3).

The individual ("Login with Google") tier ended 2026-06-18; Code Assist Standard and
Enterprise accounts with a Google Cloud project still work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..credential import jwt_claims
from .google import (
    GEMINI_API_ROUTES,
    GOOGLE_AUTH,
    GOOGLE_AUTHORIZE_PARAMS,
    GOOGLE_SCOPES,
    GoogleProvider,
)
from .sources import Found, Source, millis, obj, optional_text, text


class GeminiCli(GoogleProvider):
    def import_sources(self) -> tuple[Source, ...]:
        """Gemini CLI's `~/.gemini/oauth_creds.json`: google-auth-library's credentials
        (`access_token`, `refresh_token`, `expiry_date` in ms, `id_token`, `scope`)."""
        path = Path.home() / ".gemini" / "oauth_creds.json"
        return (Source("Gemini CLI", "`gemini` (Login with Google)", (path,), _oauth_creds),)


def _oauth_creds(data: Any) -> list[Found]:
    root = obj(data, "the file")
    email = jwt_claims(optional_text(root, "id_token") or "").get("email")
    return [
        Found(
            refresh=text(root, "refresh_token"),
            access=optional_text(root, "access_token"),
            expires_at=millis(root.get("expiry_date")),
            account=str(email) if email else None,
        )
    ]


PROVIDER = GeminiCli(
    name="gemini",
    order=40,
    title="Gemini Code Assist",
    flow="auth_code",
    client_id="681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com",
    client_secret="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",
    scopes=GOOGLE_SCOPES,
    endpoints={
        **GOOGLE_AUTH,
        # Port 0: any free loopback port, as gemini-cli does.
        "redirect_uri": "http://127.0.0.1:0/oauth2callback",
        "code_assist": "https://cloudcode-pa.googleapis.com",
    },
    authorize_params=GOOGLE_AUTHORIZE_PARAMS,
    routes=GEMINI_API_ROUTES,
    native_hosts=("generativelanguage.googleapis.com",),
    envelope={"user_prompt_id": "{uuid}"},
    models=("gemini-2.5-pro", "gemini-2.5-flash", "gemini-3-pro-preview", "gemini-3-flash-preview"),
    ide_metadata={
        "ideType": "IDE_UNSPECIFIED",
        "platform": "PLATFORM_UNSPECIFIED",
        "pluginType": "GEMINI",
    },
)
