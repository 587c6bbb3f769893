"""Antigravity via Google login (providers.md §4). Google's terms may not allow this use;
the README says so."""

from .google import GOOGLE_AUTH, GOOGLE_AUTHORIZE_PARAMS, GOOGLE_SCOPES, GoogleProvider

PROVIDER = GoogleProvider(
    name="antigravity",
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
    # CPA refreshes Antigravity tokens 50 minutes early.
    refresh_skew=3000.0,
)
