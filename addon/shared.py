"""Scheduling state shared by every proxy on one Redis store (issue 18): rests after a 429,
quota windows, and which bucket holds each conversation, so that a bucket one proxy saw
limited is spared by the others and a conversation keeps its account whichever proxy
serves its next turn.

Nothing here is on a request's path. Rotation, Quota and Affinity tell `Shared` what changed
through their hooks, which only append to a queue; one task writes the queue to Redis (keys
with expiries, which a proxy that starts later reads) and publishes it on one channel;
another applies what the other proxies publish. Quota windows, which every answer reports,
are sent when they change by a point or more, or every QUOTA_EVERY seconds. Redis down:
each proxy goes on with what it knows, logs one line, and reads everything again once Redis
is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections import deque
from dataclasses import asdict
from typing import Any

import redis
import redis.asyncio

from login.providers.usage import Window
from login.store.redis_store import PREFIX, connection, safe_url

from .affinity import Affinity
from .quota import Account, Quota
from .rotation import Rotation

log = logging.getLogger(__name__)

CHANNEL = f"{PREFIX}events"
QUOTA_EVERY = 10.0  # seconds between two sends of a bucket's unchanged windows
_QUOTA_TTL = 8 * 86400  # a bucket's windows are kept this long after they were last sent
_RETRY = 1.0  # seconds before connecting again after Redis went away


class Shared:
    def __init__(self, url: str, rotation: Rotation, quota: Quota, affinity: Affinity) -> None:
        self.url, self.where = url, safe_url(url)
        self.rotation, self.quota, self.affinity = rotation, quota, affinity
        self.id = secrets.token_hex(8)  # this proxy's, to skip its own messages
        self._queue: deque[dict[str, Any]] = deque(maxlen=50_000)
        self._wake = asyncio.Event()
        self._sent: dict[tuple[str, str], tuple[float, tuple[Any, ...]]] = {}
        self._applying = False  # applying another proxy's news: not news to send
        rotation.on_cool = self._cooled
        quota.on_observe = self._observed
        affinity.on_place = self._placed

    # -- the hooks (on the request's path: O(1), never blocking) ----------------------------

    def _cooled(self, provider: str, bucket: str, until: float) -> None:
        if not self._applying:
            self._send({"k": "cool", "p": provider, "b": bucket, "until": until})

    def _placed(self, provider: str, conversation: str, bucket: str) -> None:
        if not self._applying:
            self._send({"k": "aff", "p": provider, "c": conversation, "b": bucket})

    def _observed(self, provider: str, bucket: str, account: Account) -> None:
        if self._applying:
            return
        shape = tuple((w.name, round(w.used, 2), w.status) for w in account.windows.values())
        now = time.monotonic()
        last = self._sent.get((provider, bucket))
        if last is not None and last[1] == shape and now - last[0] < QUOTA_EVERY:
            return
        self._sent[provider, bucket] = (now, shape)
        windows = [asdict(w) for w in account.windows.values()]
        self._send({"k": "quota", "p": provider, "b": bucket, "w": windows})

    def _send(self, event: dict[str, Any]) -> None:
        self._queue.append(event)
        self._wake.set()

    # -- the tasks ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Keep in step with Redis for as long as the proxy runs."""
        down = False
        while True:
            options = {**connection(self.url), "socket_timeout": None}  # it waits for news
            client = redis.asyncio.Redis.from_url(self.url, health_check_interval=10, **options)
            try:
                pubsub = client.pubsub()
                await pubsub.subscribe(CHANNEL)  # first: nothing sent meanwhile is missed
                await self._load(client)
                if down:
                    log.info("keyswap: Redis at %s is back; shared state read again", self.where)
                down = False
                await asyncio.gather(self._write(client), self._read(pubsub))
            except asyncio.CancelledError:
                raise
            except (redis.RedisError, OSError) as exc:
                if not down:
                    log.warning(
                        "keyswap: Redis at %s is unreachable (%s); going on with what this "
                        "proxy knows",
                        self.where,
                        type(exc).__name__,
                    )
                down = True
            finally:
                with contextlib.suppress(Exception):
                    await client.aclose()
            await asyncio.sleep(_RETRY)

    async def _write(self, client: redis.asyncio.Redis) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), 500))]
                pipe = client.pipeline(transaction=False)
                now = time.time()
                for event in batch:
                    _store(pipe, event, now, self.affinity.ttl)
                    pipe.publish(CHANNEL, json.dumps({**event, "from": self.id}))
                try:
                    await pipe.execute()
                except BaseException:
                    self._queue.extendleft(reversed(batch))  # sent once Redis is back
                    raise

    async def _read(self, pubsub: Any) -> None:
        async for message in pubsub.listen():
            if message.get("type") != "message":
                continue
            try:
                event = json.loads(message["data"])
            except (TypeError, ValueError):
                continue
            if isinstance(event, dict) and event.get("from") != self.id:
                self._apply(event)

    async def _load(self, client: redis.asyncio.Redis) -> None:
        """What the other proxies stored before this one (re)connected."""
        for kind in ("cool", "quota", "aff"):
            async for key in client.scan_iter(match=f"{PREFIX}{kind}:*", count=1000):
                value = await client.get(key)
                if value is None:
                    continue
                name = _text(key).removeprefix(f"{PREFIX}{kind}:")
                provider, _, rest = name.partition(":")
                with contextlib.suppress(TypeError, ValueError):
                    if kind == "cool":
                        self._apply({"k": kind, "p": provider, "b": rest, "until": float(value)})
                    elif kind == "quota":
                        self._apply({"k": kind, "p": provider, "b": rest, "w": json.loads(value)})
                    else:
                        self._apply({"k": kind, "p": provider, "c": rest, "b": _text(value)})

    def _apply(self, event: dict[str, Any]) -> None:
        """Another proxy's news, taken as if seen here (and not sent on again)."""
        kind, provider, bucket = event.get("k"), event.get("p"), event.get("b")
        if not isinstance(provider, str) or not isinstance(bucket, str):
            return
        self._applying = True
        try:
            if kind == "cool":
                left = float(event["until"]) - time.time()
                if left > 0:
                    self.rotation.cool(provider, bucket, left, count=False)
            elif kind == "quota":
                windows = [Window(**w) for w in event["w"]]
                self.quota.observe(provider, bucket, windows)
            elif kind == "aff" and isinstance(event.get("c"), str):
                self.affinity.put(provider, event["c"], bucket)
        except (KeyError, TypeError, ValueError):
            pass  # a message this version does not read
        finally:
            self._applying = False


def _store(pipe: Any, event: dict[str, Any], now: float, affinity_ttl: float) -> None:
    """The key a proxy that starts later reads the event from, expiring when it is stale."""
    kind, provider = event["k"], event["p"]
    if kind == "cool":
        ttl = int(event["until"] - now) + 1
        if ttl > 0:
            pipe.set(f"{PREFIX}cool:{provider}:{event['b']}", str(event["until"]), ex=ttl)
    elif kind == "quota":
        pipe.set(f"{PREFIX}quota:{provider}:{event['b']}", json.dumps(event["w"]), ex=_QUOTA_TTL)
    elif kind == "aff":
        pipe.set(f"{PREFIX}aff:{provider}:{event['c']}", event["b"], ex=int(affinity_ttl))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
