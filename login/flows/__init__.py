"""The OAuth flows, provider-neutral: device code (RFC 8628), auth code + PKCE (RFC 7636)."""
