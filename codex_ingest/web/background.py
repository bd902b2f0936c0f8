"""What a worker does besides answering requests, for as long as the app
runs: copying live gauges for the multi-worker scrape, refreshing the read
side's gauges, and purging events past RETENTION."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from codex_ingest.errors import IngestError
from codex_ingest.storage import retention
from codex_ingest.storage.dberrors import translated
from codex_ingest.telemetry.metrics import multiprocess_mode
from codex_ingest.web import appkeys as keys

log = logging.getLogger("codex_ingest.background")

LIVE_GAUGE_SECONDS = 1.0
READ_GAUGE_SECONDS = 5.0
# How often a worker adds its ingest counts and refusals to the console's overview tables.
OVERVIEW_FLUSH_SECONDS = 10.0


async def _every(seconds: float, job: Callable[[], Awaitable[None]]) -> None:
    while True:
        try:
            await job()
        except IngestError:
            pass  # the database is unavailable: counted where it happened; try again next time
        except Exception:
            log.exception("background job failed", extra={"job": getattr(job, "__name__", "?")})
        await asyncio.sleep(seconds)


async def background_jobs(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    metrics = app[keys.METRICS]
    event_log = app[keys.EVENT_LOG]

    async def refresh_live_gauges() -> None:
        # Another worker may answer the scrape: this one's counts reach its files within a second.
        metrics.pending.flush()
        metrics.refresh_live()

    async def refresh_read_gauges() -> None:
        if keys.READ_AUTH in app:
            metrics.set_horizon_lag(await event_log.horizon_lag())
        if settings.retention is not None:
            metrics.set_oldest_event_age(await event_log.oldest_event_age() or 0.0)

    async def purge_expired() -> None:
        assert settings.retention is not None
        with translated(settings.retry_after_seconds, metrics.count_db_error):
            await retention.purge(app[keys.STORE].pool, app[keys.QUERIES], settings.retention, on_chunk=metrics.purged)

    async def flush_overview() -> None:
        tally, refused = metrics.take_tally(), metrics.take_refused()
        if not tally and not refused:
            return
        sql = app[keys.QUERIES].sql
        with translated(settings.retry_after_seconds, metrics.count_db_error):
            async with app[keys.STORE].pool.acquire(timeout=settings.db_connect_timeout) as conn, conn.transaction():
                # One transaction: the page never shows a flush's counts without its refusals.
                if tally:
                    # $1 source labels, $2 outcomes, $3 counts
                    await conn.execute(sql("console_minutes_add"), [k[0] for k in tally], [k[1] for k in tally],
                                       list(tally.values()))
                if refused:
                    # $1 unix times, $2 source labels, $3 outcomes, $4 tenants named
                    await conn.execute(sql("console_rejections_add"), *map(list, zip(*refused, strict=True)))

    loop = asyncio.get_running_loop()
    jobs = []
    if keys.READ_AUTH in app:  # the console is on
        jobs.append(loop.create_task(_every(OVERVIEW_FLUSH_SECONDS, flush_overview)))
    if multiprocess_mode():
        jobs.append(loop.create_task(_every(LIVE_GAUGE_SECONDS, refresh_live_gauges)))
    if keys.READ_AUTH in app or settings.retention is not None:
        jobs.append(loop.create_task(_every(READ_GAUGE_SECONDS, refresh_read_gauges)))
    if settings.retention is not None:
        jobs.append(loop.create_task(_every(retention.purge_interval(settings.retention), purge_expired)))
    try:
        yield
    finally:
        for job in jobs:
            job.cancel()
        for job in jobs:
            with contextlib.suppress(asyncio.CancelledError):
                await job
        metrics.pending.flush()  # what this worker counted last reaches its series before it stops
