"""The Injector: the mitmproxy hooks that find placeholder keys and answer with the token.

The path of one request: `request` finds a placeholder (`placeholder`), takes it out of the
flow, asks `admission` whether and how it is served, and has the relay's `dispatch` pick a
bucket, get its token (`login.tokens`) and send through `delivery`'s gate with `outbound`.
An answer that is small and sized, or an error, becomes the flow's response right there. A
stream cannot (mitmproxy streams only what a server sends), so the flow is pointed at the
relay with a one-shot ticket, the relay passes the stream on as it comes, and the flow gets
its original request back in `responseheaders`. A WebSocket upgrade is carried by mitmproxy
itself with the token set here. `_maintain` picks up config edits and new logins, and hands
memory back after a burst (`memory`).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import gc
import logging
import re
import ssl
import time
from collections.abc import Coroutine
from http import HTTPStatus
from pathlib import Path
from typing import Any

from mitmproxy import connection, ctx, http
from mitmproxy.proxy import server_hooks

from login.config import is_loopback_host
from login.env import refresh_bundle
from login.errors import KeyswapError
from login.net import make_client, ssl_context
from login.providers import PROVIDERS
from login.store.paths import data_dir
from login.store.redis_store import RedisStore
from login.tokens import TokenService
from login.usage import state_path

from . import placeholder, quota
from .admission import Admission, Refusal, dialect_for, is_loopback_client
from .affinity import Affinity
from .dispatch import Dispatch, Job
from .errors import error_body, error_headers
from .logins import Logins
from .memory import Settler
from .outbound import Outbound
from .quota import Quota
from .relay import TICKET_HEADER, Relay, Stream, Whole
from .rotation import Rotation
from .settings import Settings
from .shared import Shared
from .upstream import Upstream, upstream_proxy

log = logging.getLogger(__name__)
# httpx (logins, refreshes) logs every request URL at INFO and httpcore ten DEBUG records per
# request; mitmproxy sets the root logger to DEBUG and hands every record to every addon, which
# costs more than a request itself. Keep keyswap's own per-request logging out of hot paths.
for _name in ("httpx", "httpcore", "h11", "hpack"):
    logging.getLogger(_name).setLevel(logging.WARNING)

_POLL_SECONDS = 1.0
# How long a request that arrives as the proxy starts waits for the logins to be listed.
_LISTING_WAIT = 10.0
# Served counters alone are saved this often; rests and quotas at once.
STATE_EVERY = 30.0
_REASONS = {s.value: s.phrase for s in HTTPStatus}
# How often a request for a provider with no known login may list the store itself.
_RELIST = 0.25
# How often a request waiting for its answer looks whether its client is still there.
_WATCH_SECONDS = 1.0


class Injector:
    """Finds placeholder keys and hands the request to the relay, which adds the token."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rotation = Rotation()
        self.tokens = TokenService(settings.config)
        self.buckets: dict[str, list[str]] = {}
        self.logins = Logins(self.tokens, self.add_bucket)
        self.quota, self.affinity = Quota(), Affinity()
        self.dispatch = Dispatch(
            self.tokens, self.rotation, self.logins, quota=self.quota, affinity=self.affinity
        )
        self.relay = Relay(self.dispatch)
        self.admission = Admission(
            lambda: settings.config,
            self.rotation,
            lambda p: self.buckets.get(p, []),
            self.affinity,
            self.quota,
        )
        self._state = state_path(data_dir())
        self._saved_mark, self._saved_at = (0, 0), 0.0
        self._polled: dict[tuple[str, str], float] = {}
        self._listed = asyncio.Event()  # the store's logins have been listed once
        self._polls: set[asyncio.Future[None]] = set()
        self._saved: dict[str, tuple[http.RequestData, str | None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._shared: asyncio.Task[None] | None = None  # in step with the other proxies
        self._bundle: asyncio.Task[None] | None = None
        self._settler = Settler()
        self._requests = 0  # decrypted requests seen, for the settler
        # The allow_hosts keyswap set itself (None: the user's own, or none set).
        self._served: list[str] | None = None
        # mitmproxy's upstream proxy, which keyswap's own connections take too.
        self.upstream: Upstream | None = None
        self._refused: set[str] = set()  # remote addresses already named in the log
        self._relisted = -1e9  # when a request last listed the store itself

    # -- lifecycle -----------------------------------------------------------------------

    def configure(self, updated: set[str]) -> None:
        if updated & {"mode", "upstream_auth"}:
            # Checked before anything changes: a refused `set` leaves the old proxy in use.
            upstream = upstream_proxy(ctx.options.mode, ctx.options.upstream_auth)
            if upstream != self.upstream and upstream is not None:
                log.info("keyswap: its own requests go through the upstream proxy %s", upstream)
            self.upstream = upstream
        watched = {"ssl_insecure", "ssl_verify_upstream_trusted_ca", "mode", "upstream_auth"}
        if updated & (watched | {"keyswap_config"}):
            self._reconfigure()

    def _reconfigure(self) -> None:
        config = self.settings.config
        if self._served is not None and ctx.options.allow_hosts == self._served:
            # keyswap chose what is decrypted: a provider the config now defines (or no
            # longer does) changes it. A list the user set stays theirs.
            served = served_hosts()
            if served != self._served:
                self._served = served
                ctx.options.update(allow_hosts=served)  # type: ignore[no-untyped-call]
        self.dispatch.cooldown = config.proxy.cooldown
        verify, up = _verify(), self.upstream
        old = self.dispatch.sender
        # Through an upstream proxy, names are the proxy's to resolve.
        resolve = None if up else config.resolve_target
        self.dispatch.sender = Outbound(
            verify,
            resolve=resolve,
            proxy=up.url if up else None,
            proxy_auth=up.auth if up else None,
        )
        proxy = up.for_httpx(verify) if up else None
        self.tokens.reconfigure(config, make_client(config, proxy=proxy, verify=verify))
        if isinstance(old, Outbound):
            old.close()

    def running(self) -> None:
        self._warn_if_open()
        if not ctx.options.allow_hosts and not ctx.options.ignore_hosts:
            # Decrypt only what keyswap serves; everything else is tunnelled untouched.
            self._served = served_hosts()
            ctx.options.update(allow_hosts=self._served)  # type: ignore[no-untyped-call]
        port = self.relay.start()
        log.debug("keyswap: relay on 127.0.0.1:%d", port)
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._maintain())
        # Shells that exported the CA bundle keep verifying after mitmproxy's CA changed.
        confdir = Path(ctx.options.confdir).expanduser()
        self._bundle = loop.create_task(asyncio.to_thread(_refresh_bundle, confdir))
        # Everything loaded so far lives as long as the proxy: keep it out of the
        # collector's full passes, which would otherwise stall every flow for tens of ms.
        gc.freeze()

    def _warn_if_open(self) -> None:
        """Say at start when the proxy listens beyond this machine (`mitmdump -s
        addon/inject.py` listens on every interface) and what keyswap does about it."""
        exposed = sorted(
            a for a in listen_addresses() if not is_loopback_host(a.rpartition(":")[0])
        )
        if not exposed:
            return
        where = ", ".join(exposed)
        proxy = self.settings.config.proxy
        if not proxy.allow_remote:
            log.warning(
                "keyswap: the proxy listens on %s, beyond this machine; connections from other "
                "machines are refused ([proxy] allow_remote = true serves them). "
                "`keyswap proxy` listens on 127.0.0.1 only.",
                where,
            )
        elif not self.settings.config.clients:
            log.warning(
                "keyswap: the proxy listens on %s with [proxy] allow_remote = true and no "
                "[clients.*] secrets: anyone who reaches it can spend your subscriptions",
                where,
            )
        else:
            log.warning(
                "keyswap: the proxy listens on %s with [proxy] allow_remote = true: other "
                "machines need a [clients.*] secret for tokens, but any of them may relay "
                "other traffic through it (mitmproxy's proxyauth option stops that)",
                where,
            )

    def client_connected(self, client: connection.Client) -> None:
        """A client on another machine may not use the proxy at all unless `allow_remote`:
        refusing only its tokens would still leave an open proxy for everything else."""
        peer = client.peername
        if not peer or is_loopback_host(str(peer[0])):
            return
        if self.settings.config.proxy.allow_remote:
            return
        client.error = "keyswap serves only clients on this machine ([proxy] allow_remote)"
        host = str(peer[0])
        if host not in self._refused:  # once per address, not per connection
            self._refused.add(host)
            log.warning(
                "keyswap: refused a connection from %s: only clients on this machine may use "
                "the proxy ([proxy] allow_remote = true lets others in)",
                host,
            )

    def done(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._shared is not None:
            self._shared.cancel()
        self.logins.stop()
        self.relay.stop()
        if isinstance(self.dispatch.sender, Outbound):
            self.dispatch.sender.close()
        try:  # the last cooldowns and quotas, for the next start and `login status`
            quota.save(self._state, self.quota, self.rotation)
        except (OSError, KeyswapError) as exc:
            log.warning("keyswap: cannot save the state to %s: %s", self._state, exc)

    def add_bucket(self, provider: str, bucket: str) -> None:
        """A login just finished: rotation may use the bucket at once."""
        known = self.buckets.setdefault(provider, [])
        if bucket not in known:
            known.append(bucket)

    def remove_buckets(self, provider: str, buckets: list[str]) -> None:
        known = self.buckets.get(provider)
        if known is not None:
            self.buckets[provider] = [b for b in known if b not in buckets]

    def _share(self) -> None:
        """On a Redis store, share rests, quotas and conversations with the other proxies
        (once the store is open: this runs after it answered)."""
        store = self.tokens.store
        if self._shared is None and isinstance(store, RedisStore):
            shared = Shared(store.url, self.rotation, self.quota, self.affinity)
            self._shared = asyncio.get_running_loop().create_task(shared.run())
            log.info("keyswap: sharing rests, quotas and conversations through %s", store.where)

    async def _maintain(self) -> None:
        """Pick up config edits and new logins while running; keep the state file."""
        problem = None
        await asyncio.to_thread(quota.restore, self._state, self.quota, self.rotation)
        while True:
            try:
                await self._save_state()
                if self.settings.changed():
                    self._reconfigure()
                # Tokens the store refused (a full disk) are retried here as well as on use.
                await self.tokens.save_held()
                names = await asyncio.to_thread(self.tokens.names)
                self._share()
                self.tokens.retain(set(names))
                for cred in await self.tokens.follow():
                    # Someone logged in to this bucket again: maybe another account, so
                    # what keyswap knew of the old one's limits no longer holds.
                    self.rotation.reset(cred.provider, cred.bucket)
                    self.quota.forget(cred.provider, cred.bucket)
                    log.info("keyswap: %s/%s: a new login, in use now", cred.provider, cred.bucket)
                found: dict[str, list[str]] = {}
                for name in names:
                    prov, _, bucket = name.partition(":")
                    found.setdefault(prov, []).append(bucket)
                self.buckets = found
                self._listed.set()
                problem = None
                await self._refresh_resting(found)
                self._poll_usage(found)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if str(exc) != problem:  # once per distinct problem, not every second
                    problem = str(exc)
                    log.warning("keyswap: cannot read the token store: %s", exc)
                self._listed.set()  # requests go on without the list (and say so)
            # After a burst, what its connections held goes back to the system.
            sender = self.dispatch.sender
            self._settler.tick(
                self._requests + (sender.swept if isinstance(sender, Outbound) else 0)
            )
            await asyncio.sleep(_POLL_SECONDS)

    async def _relist(self) -> None:
        """Add the store's logins to the known buckets now (at most every _RELIST seconds)."""
        now = time.monotonic()
        if now - self._relisted < _RELIST:
            return
        self._relisted = now
        try:
            names = await asyncio.to_thread(self.tokens.names)
        except (KeyswapError, OSError):
            return  # the once-a-second listing says what is wrong
        for name in names:
            provider, _, bucket = name.partition(":")
            self.add_bucket(provider, bucket)

    async def _save_state(self, force: bool = False) -> None:
        """Cooldowns, quotas and counters to the state file: at once when a rest or a quota
        changed, else every STATE_EVERY seconds while requests are served."""
        rotation = self.rotation
        mark = (rotation.version, sum(rotation.served.values()))
        now = time.monotonic()
        changed = self.quota.dirty or mark[0] != self._saved_mark[0]
        counted = mark != self._saved_mark and now - self._saved_at >= STATE_EVERY
        if not (changed or counted or force):
            return
        self.quota.dirty = False
        self._saved_mark, self._saved_at = mark, now
        try:
            await asyncio.to_thread(quota.save, self._state, self.quota, rotation)
        except (OSError, KeyswapError) as exc:
            log.warning("keyswap: cannot save the state to %s: %s", self._state, exc)

    def _poll_usage(self, buckets: dict[str, list[str]]) -> None:
        """Ask the usage endpoint of providers whose answers carry no usage (Copilot), each
        bucket every `usage_poll` seconds, in the background."""
        now = time.monotonic()
        for name, names in buckets.items():
            every = PROVIDERS[name].usage_poll if name in PROVIDERS else None
            if every is None:
                continue
            for bucket in names:
                key = (name, bucket)
                if now - self._polled.get(key, -1e9) >= every:
                    self._polled[key] = now
                    task = asyncio.ensure_future(self._poll_one(name, bucket))
                    self._polls.add(task)
                    task.add_done_callback(self._polls.discard)

    async def _poll_one(self, provider: str, bucket: str) -> None:
        try:
            windows = await self.tokens.usage(provider, bucket)
        except KeyswapError as exc:
            log.debug("keyswap: %s/%s usage: %s", provider, bucket, exc)
            return
        self.quota.observe(provider, bucket, windows)

    async def _refresh_resting(self, buckets: dict[str, list[str]]) -> None:
        """A bucket resting after a 429 gets no traffic, so nothing would refresh its token;
        keep it fresh so it is ready the moment the cooldown ends."""
        for provider, names in buckets.items():
            for bucket in names:
                if self.rotation.cooling_until(provider, bucket) is None:
                    continue
                try:
                    await self.tokens.access(provider, bucket)
                except KeyswapError as exc:
                    log.debug("keyswap: %s", exc)

    # -- hooks ---------------------------------------------------------------------------

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        """`[resolve]` applies to mitmproxy's own upstream connections too."""
        if data.server.address is None:
            return
        host, port = data.server.address[:2]
        target = self.settings.config.resolve_target(str(host), int(port))
        if target is not None:
            data.server.sni = data.server.sni or str(host)
            data.server.address = target

    async def request(self, flow: http.HTTPFlow) -> None:
        self._requests += 1
        if flow.response is not None:
            return
        found = placeholder.find(flow.request)
        if found is None:
            return
        placeholder.redact(flow.request, found)
        req = flow.request
        if self._task is not None and not self._listed.is_set():
            # Just started: which buckets are logged in is being read from the store.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._listed.wait(), _LISTING_WAIT)
        if found.bucket is None and not self.buckets.get(found.provider or ""):
            # No login known for it: one may have been made a moment ago (`keyswap login`
            # then a client at once), before the once-a-second listing saw it.
            await self._relist()
        try:
            job = self.admission.admit(req, is_loopback_client(flow), found)
            if isinstance(job, Refusal):
                _answer(flow, job.status, job.message)
            elif req.headers.get("upgrade", "").lower() == "websocket":
                await self._inject_websocket(flow, job)
            else:
                await self._serve(flow, job)
        except Exception:
            # Never let the placeholder or a half-built request go upstream.
            log.exception("keyswap: internal error")
            _answer(flow, 500, "internal error; see the proxy's log")

    async def _serve(self, flow: http.HTTPFlow, job: Job) -> None:
        """Ask the provider now. A whole answer is the flow's response at once, with no
        hop through the relay; a stream is handed to the relay."""
        head_only = job.method == "HEAD"
        reply = await _until_gone(flow, self.relay.reply(job, head_only))
        if reply is None:
            # The client went away while waiting (its request upstream is closed).
            if flow.killable:
                flow.kill()  # type: ignore[no-untyped-call]
            else:
                _answer(flow, 502, "the client went away")
        elif isinstance(reply, Whole):
            flow.response = _response(reply, head_only)
        else:
            try:
                self._hand_to_relay(flow, job, reply)
            except BaseException:
                reply.close()
                raise

    def _hand_to_relay(self, flow: http.HTTPFlow, job: Job, stream: Stream) -> None:
        req = flow.request
        ticket = self.relay.submit(job, stream)
        # Point the flow at the relay; the original comes back once the response starts.
        # The job carries the request, so the relay needs nothing but the ticket.
        self._saved[flow.id] = (req.data, ticket)
        req.data = copy.copy(req.data)
        req.data.headers = http.Headers([(TICKET_HEADER.encode(), ticket.encode())])
        req.data.content = b""
        # Straight into the data: the setters would also rewrite Host and authority, which
        # the relay does not read.
        req.data.scheme, req.data.host, req.data.port = b"http", "127.0.0.1", self.relay.port
        if flow.server_conn.via is not None:
            # Never via an upstream proxy (mitmproxy's `upstream:` mode would otherwise send
            # the relay's address to that proxy).
            flow.server_conn = connection.Server(address=("127.0.0.1", self.relay.port))

    async def _inject_websocket(self, flow: http.HTTPFlow, job: Job) -> None:
        """A WebSocket upgrade cannot go through the relay: mitmproxy carries it upstream
        itself, with the token set here and the placeholder put back once the 101 arrives.
        No 429 rotation: a socket that is open stays on its bucket."""
        picked = await self.dispatch.pick(job)
        if not isinstance(picked, tuple):
            flow.response = http.Response.make(picked.status, picked.body, dict(picked.headers))
            return
        access, url = picked
        req = flow.request
        self._saved[flow.id] = (req.data, None)
        req.data = copy.copy(req.data)
        req.data.headers = req.data.headers.copy()
        client_headers = {k.lower(): v for k, v in job.headers}
        req.url = url
        for name in placeholder.KEY_HEADERS:
            req.headers.pop(name, None)
        for key, value in access.headers(job.path, client_headers, b"").items():
            req.headers[key] = value

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if self._restore(flow) and (resp := flow.response) is not None:
            # Streams (SSE, chunked) pass through as they come; a sized answer is buffered
            # like any other, which costs mitmproxy less.
            headers = resp.headers
            sse = "event-stream" in headers.get("content-type", "")
            resp.stream = sse or "content-length" not in headers

    def error(self, flow: http.HTTPFlow) -> None:
        self._restore(flow)

    def _restore(self, flow: http.HTTPFlow) -> bool:
        saved = self._saved.pop(flow.id, None)
        if saved is None:
            return False
        original, ticket = saved
        if ticket is not None:
            self.relay.drop(ticket)
        flow.request.data = original
        return True


async def _until_gone[T](flow: http.HTTPFlow, work: Coroutine[Any, Any, T]) -> T | None:
    """`work`, or None once the flow's client has gone (then `work` is cancelled, which
    closes its upstream request: the provider sees the client leave, as it would without a
    proxy). mitmproxy tells a hook nothing when its client leaves, so the client connection
    is looked at every _WATCH_SECONDS while `work` runs."""
    task = asyncio.current_task()
    assert task is not None
    watch = _Watch(flow, task)
    try:
        return await work
    except asyncio.CancelledError:
        if not watch.gone:
            raise
        task.uncancel()
        return None
    finally:
        watch.stop()


class _Watch:
    __slots__ = ("flow", "gone", "loop", "task", "timer")

    def __init__(self, flow: http.HTTPFlow, task: asyncio.Task[Any]) -> None:
        self.flow, self.task, self.gone = flow, task, False
        self.loop = asyncio.get_running_loop()
        self.timer = self.loop.call_later(_WATCH_SECONDS, self.look)

    def look(self) -> None:
        if self.flow.client_conn.connected:
            self.timer = self.loop.call_later(_WATCH_SECONDS, self.look)
        else:
            self.gone = True
            self.task.cancel()

    def stop(self) -> None:
        self.timer.cancel()


def _response(whole: Whole, head_only: bool) -> http.Response:
    """`whole` as mitmproxy's response, its body as sent (any content encoding kept)."""
    now = time.time()
    return http.Response(
        http_version=b"HTTP/1.1",
        status_code=whole.status,
        reason=(whole.reason or _REASONS.get(whole.status, "")).encode("latin-1"),
        headers=http.Headers(
            [(k.encode("latin-1"), v.encode("latin-1")) for k, v in whole.headers]
        ),
        content=b"" if head_only else whole.body,
        trailers=None,
        timestamp_start=now,
        timestamp_end=now,
    )


def _refresh_bundle(confdir: Path) -> None:
    try:
        refresh_bundle(confdir)
    except (OSError, KeyswapError) as exc:
        log.warning("keyswap: cannot update the CA bundle: %s", exc)


def served_hosts() -> list[str]:
    """mitmproxy `allow_hosts` patterns for every host a provider route or the status page
    answers on."""
    hosts = {h for p in PROVIDERS.values() for r in p.routes for h in r.hosts}
    hosts |= {h for p in PROVIDERS.values() for h in p.native_hosts} | {"keyswap.local"}
    return [rf"^{re.escape(h)}:\d+$" for h in sorted(hosts)]


def listen_addresses() -> list[str]:
    """host:port of every listener mitmproxy was told to open ("" host: every interface,
    shown as 0.0.0.0)."""
    from mitmproxy.proxy.mode_specs import ProxyMode

    found = []
    for spec in ctx.options.mode:
        try:
            mode = ProxyMode.parse(spec)
            host = mode.listen_host(ctx.options.listen_host)
            port = mode.listen_port(ctx.options.listen_port)
        except ValueError:
            continue
        if port is not None:
            found.append(f"{host or '0.0.0.0'}:{port}")  # noqa: S104
    return found


def _answer(flow: http.HTTPFlow, status: int, message: str) -> None:
    req = flow.request
    log.info("keyswap: %s %s -> %d: %s", req.method, req.pretty_host, status, message)
    dialect = dialect_for(req.pretty_host, req.path.partition("?")[0])
    flow.response = http.Response.make(
        status, error_body(dialect, status, message), error_headers()
    )


def _verify() -> ssl.SSLContext:
    """certifi + system roots + SSL_CERT_FILE, plus mitmproxy's own upstream trust options."""
    opts = ctx.options
    extra = [opts.ssl_verify_upstream_trusted_ca] if opts.ssl_verify_upstream_trusted_ca else []
    context = ssl_context(extra)
    if opts.ssl_insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
