"""The application factory: what the app holds, the wrapper its handlers go through, and the
database pool and writer opened and closed with it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import asyncpg
from aiohttp import web
from prometheus_client import CollectorRegistry

from codex_ingest.delivery.engine import DeliveryEngine
from codex_ingest.intake.headers import DROP_REASONS
from codex_ingest.intake.ratelimit import RateLimiter
from codex_ingest.intake.reader import EventReader
from codex_ingest.intake.schemes.base import Clock
from codex_ingest.intake.schemes.registry import build_sources
from codex_ingest.settings import Settings
from codex_ingest.storage.batching import BatchWriter, DirectWriter, EventWriter
from codex_ingest.storage.dberrors import ERROR_CLASSES
from codex_ingest.storage.delivery import EventLog
from codex_ingest.storage.notify import HeadWatch
from codex_ingest.storage.pool import create_pool
from codex_ingest.storage.queries import Queries, load_queries
from codex_ingest.storage.store import EventStore
from codex_ingest.telemetry.deferred import FlushOnCollect, PendingCounts
from codex_ingest.telemetry.http_metrics import HttpMetrics
from codex_ingest.telemetry.metrics import ServiceMetrics
from codex_ingest.web import appkeys as keys
from codex_ingest.web.auth import ReadAuth
from codex_ingest.web.background import background_jobs
from codex_ingest.web.body import BODY_BUDGET, BodyBudget
from codex_ingest.web.every_request import EveryRequest, response_headers
from codex_ingest.web.routes import setup_routes

log = logging.getLogger("codex_ingest")


def create_app(settings: Settings, *, queries: Queries | None = None, clock: Clock = time.time) -> web.Application:
    """Build the service. ``settings.database_url`` must point at a migrated database.

    ``clock`` is what timestamped provider schemes compare against (tests inject one).
    """
    if settings.database_url is None:
        raise ValueError("create_app needs settings.database_url (serve resolves the embedded one)")
    registry = CollectorRegistry(auto_describe=True)
    # The per-request counts, kept as plain numbers until a flush (telemetry/deferred.py);
    # registered first, so a collection flushes them before the series are read.
    pending = PendingCounts()
    registry.register(FlushOnCollect(pending))
    http_metrics = HttpMetrics(registry, label_remote=settings.metrics_remote_label, pending=pending)
    # What this worker may hold of request bodies not yet verified (web/body.py).
    body_budget = BodyBudget(settings.body_buffer_bytes, retry_after=settings.retry_after_seconds)
    # No middleware: each route's handler is wrapped instead (web/every_request.py).
    app = web.Application(
        # Each route enforces its own limit while reading (web/body.py); this
        # is aiohttp's own backstop, the largest of them.
        client_max_size=max(settings.max_body_bytes, settings.max_batch_bytes),
        # Compressed bodies are refused (intake.checks.check_content_encoding);
        # aiohttp must not inflate them while they arrive either.
        handler_args={"auto_decompress": False},
    )
    app.on_response_prepare.append(response_headers)
    app[keys.SETTINGS] = settings
    app[keys.EVERY_REQUEST] = EveryRequest(http_metrics, body_budget.release)
    app[BODY_BUDGET] = body_budget
    app[keys.QUERIES] = queries if queries is not None else load_queries()
    app[keys.METRICS] = ServiceMetrics(
        registry,
        sources=settings.source_table.sources if settings.source_table is not None else (),
        db_error_classes=ERROR_CLASSES,
        header_drop_reasons=DROP_REASONS,
        destinations=settings.source_table.destinations if settings.source_table is not None else (),
        retention=settings.retention is not None,
        pending=pending,
    )
    # Every source's scheme is built once, here, not per request.
    sources = build_sources(settings.source_table, clock, webhook_secret=settings.webhook_secret)
    app[keys.READER] = EventReader(sources, secrets=held_secrets(settings), headers_max_bytes=settings.headers_max_bytes,
                                   count_dropped=app[keys.METRICS].header_dropped)
    if settings.rate_limit_per_sec > 0:
        app[keys.RATE_LIMITER] = RateLimiter(settings.rate_limit_per_sec, settings.rate_limit_burst)
    if settings.api_tokens:
        app[keys.READ_AUTH] = ReadAuth(settings.api_tokens)
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(background_jobs)
    setup_routes(app)
    return app


def held_secrets(settings: Settings) -> list[str]:
    """Every secret and token the service holds: a request header carrying one is never stored."""
    held = [settings.webhook_secret, *(t.token for t in settings.api_tokens)]
    if settings.metrics_token is not None:
        held.append(settings.metrics_token)
    if settings.source_table is not None:
        for spec in settings.source_table.sources.values():
            held.extend(spec.secrets)
            for secrets in (spec.tenants or {}).values():
                held.extend(secrets)
        for destination in settings.source_table.destinations.values():
            held.extend(destination.secrets)
    return [secret for secret in held if secret]


async def _database(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    assert settings.database_url is not None  # create_app checked it
    pool = await create_pool(settings)
    watch = None
    destinations = settings.source_table.destinations if settings.source_table is not None else {}
    if keys.READ_AUTH in app or destinations:
        # Readers wait at the head on this worker's listener; new commits wake them.
        # LISTEN needs a session: LISTEN_DATABASE_URL bypasses a transaction pooler.
        watch = HeadWatch(settings.listen_database_url or settings.database_url,
                          app[keys.QUERIES].sql("notify_readers"), connect_timeout=settings.db_connect_timeout,
                          horizon_sql=app[keys.QUERIES].sql("delivery_horizon"))
        await watch.start()
        app[keys.HEAD_WATCH] = watch
        app[keys.METRICS].watch_readers(lambda: watch.waiting)
    store = EventStore(
        pool,
        app[keys.QUERIES],
        acquire_timeout=settings.db_connect_timeout,
        retry_after=settings.retry_after_seconds,
        count_error=app[keys.METRICS].count_db_error,
        after_write=watch.poke if watch is not None and settings.read_notify else None,
    )
    app[keys.STORE] = store
    app[keys.EVENT_LOG] = EventLog(
        pool, app[keys.QUERIES], acquire_timeout=settings.db_connect_timeout,
        retry_after=settings.retry_after_seconds, count_error=app[keys.METRICS].count_db_error,
    )
    writer: EventWriter
    if settings.batching:
        writer = BatchWriter(
            store,
            max_rows=settings.batch_max_rows,
            max_delay=settings.batch_max_delay_ms / 1000,
            max_concurrent=settings.batch_max_in_flight,
            retry_after=settings.retry_after_seconds,
            timeout=settings.db_write_timeout,
        )
    else:
        writer = DirectWriter(store, timeout=settings.db_write_timeout, retry_after=settings.retry_after_seconds)
    app[keys.WRITER] = writer
    app[keys.METRICS].watch_pool(pool.get_size, lambda: pool.get_size() - pool.get_idle_size())
    engine = None
    try:
        if destinations:
            # Push delivery: woken by the same NOTIFY as waiting readers (docs/delivery.md).
            metrics = app[keys.METRICS]
            engine = DeliveryEngine(
                pool, app[keys.QUERIES], destinations, watch=watch, record=metrics.delivered,
                gauges=lambda row: metrics.set_delivery_state(
                    row["name"], pending=row["pending"], oldest_seconds=row["oldest_seconds"], parked=row["parked"],
                    disabled=row["state"] == "disabled"),
            )
            await engine.start()
        yield
    finally:
        if engine is not None:
            await engine.close()
        if watch is not None:
            await watch.close()
        # Pending and in-flight batches are written and answered before the
        # pool goes away.
        await writer.close()
        try:
            await asyncio.wait_for(pool.close(), timeout=settings.db_command_timeout)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            # A connection that will not close politely (the server is gone,
            # or a statement is stuck) must not hold up shutdown.
            pool.terminate()
