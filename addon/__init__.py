"""The mitmproxy side of keyswap: swaps placeholder keys for live tokens on the way out."""
