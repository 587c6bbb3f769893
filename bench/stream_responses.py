"""`mitmdump -s bench/stream_responses.py`: the benchmark's bare-stream baseline.

Bare mitmdump buffers every answer, so it has no time to first event to compare; this
streams every response, as keyswap streams its SSE answers, and nothing else. (mitmproxy's
`stream_large_bodies=1` would also stream each request body, which keyswap does not do and
which costs mitmproxy more per request.)
"""

from __future__ import annotations

from mitmproxy import http


class StreamResponses:
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            flow.response.stream = True


addons = [StreamResponses()]
