"""The composition root: the one place where backends and services are wired."""

from __future__ import annotations

import asyncio
import gc
import logging
import resource
import signal
import sys

from aiohttp import web

from parley.bus.memory import MemoryBus
from parley.metrics import Metrics
from parley.presence.memory import MemoryPresence
from parley.protocol import frames, limits
from parley.server.config import ServerConfig
from parley.server.http import HttpApi, error_middleware
from parley.server.hub import Hub
from parley.server.push_routes import push_routes
from parley.server.static import install_web
from parley.server.ws import WsEndpoint
from parley.services.accounts import AccountService, Principal, make_hasher
from parley.services.messaging import MessagingService
from parley.services.presence import PresenceService
from parley.services.push import PushService
from parley.storage.sqlite import SqliteStore

log = logging.getLogger("parley")

#: Seconds an idle or half-sent HTTP connection may stay open (slow clients and
#: slowloris alike); browsers and SDKs reconnect transparently.
HANDSHAKE_TIMEOUT = 10.0
MAX_REQUEST_LINE = 32 * 1024
GIL_SWITCH_INTERVAL = 0.0005
#: Collector thresholds: net new container objects between young collections
#: (Python's default: 700), and young collections per middle one (default: 10).
#: A message's frames, futures and records live a few milliseconds; at 700 a
#: collection finds most of them alive under load and promotes them, and the
#: full collections that follow stopped the loop for 40-70 ms at 5k msg/s.
#: With 5,000 young, a middle collection every 10 walked up to ~50,000 objects
#: (15-95 ms with 19,000 sockets open); every 2 keeps it near 10 ms.
GC_THRESHOLDS = (5_000, 2)


def build_app(config: ServerConfig) -> web.Application:
    metrics = Metrics()
    store = SqliteStore(config.data_dir / "parley.db")
    store.on_commit = metrics.observe_commit
    store.on_sync = metrics.sync_seconds.observe
    store.on_handoff = metrics.event_log_lag.observe
    metrics.track_write_queue(lambda: store.queued_writes)
    metrics.track_unwritten_entries(lambda: len(store.unwritten))
    cache = store.cache
    metrics.track_cache(lambda: cache.hits, lambda: cache.misses, lambda: len(cache))
    bus = MemoryBus()
    hub = Hub(bus, metrics)
    metrics.track_connections(lambda: hub.total)
    accounts = AccountService(
        store,
        make_hasher(config.argon2_memory_kib, config.argon2_time_cost),
        login_failures_burst=config.login_failures_burst,
    )
    messaging = MessagingService(store, bus, metrics, send_rate=config.send_rate_limit)
    presence = PresenceService(
        store,
        MemoryPresence(),
        messaging.publish_live,
        online_delay=config.presence_online_delay,
        offline_grace=config.presence_offline_grace,
    )
    metrics.track_presence(lambda: presence.announcements, lambda: presence.events_sent)

    def close_sockets(principal: Principal) -> None:
        hub.close_device(
            principal.user_id, principal.device_id, frames.CLOSE_UNAUTHORIZED, "logged out"
        )

    accounts.on_logout = close_sockets
    push = PushService(
        store,
        presence.is_connected,
        config.data_dir,
        allow_insecure=config.allow_insecure_push,
        gateway=config.push_gateway,
        preview=config.push_preview,
    )
    messaging.on_message = push.on_message
    metrics.track_push(push.stats)
    ws = WsEndpoint(config, accounts, messaging, presence, hub, metrics)
    api = HttpApi(config, accounts, messaging, presence, hub, ws, metrics, push_routes(push))

    app = web.Application(
        client_max_size=limits.MAX_HTTP_BODY_BYTES, middlewares=[error_middleware(metrics)]
    )
    api.install(app)
    install_web(app)

    async def start(_: web.Application) -> None:
        await store.open()
        await push.start()

    async def shutdown(_: web.Application) -> None:
        hub.close_all(frames.CLOSE_GOING_AWAY, "server shutting down")

    async def stop(_: web.Application) -> None:
        presence.close()
        await push.close()
        await store.close()
        await bus.close()

    app.on_startup.append(start)
    app.on_shutdown.append(shutdown)
    app.on_cleanup.append(stop)
    return app


async def run(config: ServerConfig) -> None:
    """Serve until SIGINT or SIGTERM, then close sockets and finish pending writes."""
    app = build_app(config)
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=5,
        # Also the limit for a request (or WebSocket handshake) that never
        # completes: a connection without a whole request by then is closed.
        keepalive_timeout=HANDSHAKE_TIMEOUT,
        # A presence query names up to 500 users in its URL (about 14 KiB);
        # aiohttp's default request line limit is 8 KiB.
        max_line_size=MAX_REQUEST_LINE,
    )
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, backlog=4096, reuse_address=True)
    await site.start()
    _settle_gc()
    log.info(
        "parley listening on http://%s:%d (data in %s)", config.host, config.port, config.data_dir
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    log.info("shutting down")
    await runner.cleanup()


def _settle_gc() -> None:
    """Keep the cycle collector off the hot path. What startup built (modules,
    the app, the store) lives as long as the process, so it is moved where
    collections never walk it again, and young collections run less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _raise_file_limit() -> None:
    """Every connection is a file: allow as many as the hard limit permits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve(config: ServerConfig) -> None:
    _raise_file_limit()
    # The storage writer thread drops the GIL around every SQLite call and must
    # win it back from the event loop; at the default 5 ms switch interval a
    # commit can wait that long for each statement. 0.5 ms keeps it moving.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        asyncio.run(run(config))
    else:
        uvloop.run(run(config))
