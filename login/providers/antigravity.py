"""Antigravity via Google login (docs/providers.md §4). Google's terms may not allow this use;
the README says so."""

from .google import (
    GEMINI_API_ROUTES,
    GOOGLE_AUTH,
    GOOGLE_AUTHORIZE_PARAMS,
    GOOGLE_SCOPES,
    GoogleProvider,
)

PROVIDER = GoogleProvider(
    name="antigravity",
    order=50,
    title="Antigravity",
    flow="auth_code",
    client_id="1071006060591-tmhssin2h21lcre235vtolojh4g403ep.apps.googleusercontent.com",
    client_secret="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",
    scopes=(
        *GOOGLE_SCOPES,
        "https://www.googleapis.com/auth/cclog",
        "https://www.googleapis.com/auth/experimentsandconfigs",
    ),
    endpoints={
        **GOOGLE_AUTH,
        "redirect_uri": "http://localhost:51121/oauth-callback",
        "code_assist": "https://daily-cloudcode-pa.googleapis.com",
    },
    authorize_params=GOOGLE_AUTHORIZE_PARAMS,
    ide_metadata={
        "ideType": "ANTIGRAVITY",
        "platform": "PLATFORM_UNSPECIFIED",
        "pluginType": "GEMINI",
    },
    fallback_project="rising-fact-p41fc",
    routes=GEMINI_API_ROUTES,
    envelope={"userAgent": "antigravity", "requestType": "agent", "requestId": "agent-{uuid}"},
    drop_fields=("safetySettings",),
    models=("gemini-3-pro-preview", "gemini-3-flash-preview", "gemini-2.5-pro", "gemini-2.5-flash"),
    # CPA refreshes Antigravity tokens 50 minutes early.
    refresh_skew=3000.0,
)
