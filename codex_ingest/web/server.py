"""Runs the application on uvloop until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import errno
import logging
import signal

import asyncpg
import uvloop
from aiohttp import web
from aiohttp.web_log import AccessLogger

from codex_ingest import __version__
from codex_ingest.settings import Settings
from codex_ingest.telemetry.logs import JsonAccessLogger
from codex_ingest.web.app import create_app
from codex_ingest.web.connection import ServiceRunner

log = logging.getLogger("codex_ingest")


class StartupError(Exception):
    """The service could not start; the message says why in one line."""


def run_worker(settings: Settings, *, reuse_port: bool = False) -> None:
    """Serve in this process until SIGTERM or SIGINT."""
    uvloop.run(_serve(settings, reuse_port))


def make_runner(app: web.Application, settings: Settings) -> ServiceRunner:
    """The runner serve uses; tests build theirs here too, to serve exactly as production does."""
    return ServiceRunner(
        app,
        handle_signals=False,
        access_log=logging.getLogger("codex_ingest.access") if settings.access_log else None,
        access_log_class=JsonAccessLogger if settings.access_log else AccessLogger,
        # After SIGTERM: listening stops, idle keep-alive connections close,
        # requests in progress get this long to finish before they are
        # cancelled; then the app's cleanup writes what batching still holds
        # and closes the pool.
        shutdown_timeout=settings.shutdown_grace_seconds,
        # Stated although it is aiohttp's default: a client that disconnects
        # does not cancel its handler, so a write that started is finished
        # and its outcome settled (the writers shield it as well).
        handler_cancellation=False,
    )


async def _serve(settings: Settings, reuse_port: bool) -> None:
    runner = make_runner(create_app(settings), settings)
    try:
        await runner.setup()  # opens the pool
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        await runner.cleanup()
        raise StartupError(f"cannot connect to the database: {exc.__class__.__name__}: {exc}") from None
    try:
        site = web.TCPSite(runner, settings.host, settings.port, backlog=1024, reuse_port=reuse_port or None)
        try:
            await site.start()
        except OSError as exc:
            hint = " (is another codex-ingest serve running?)" if exc.errno == errno.EADDRINUSE else ""
            raise StartupError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}{hint}") from None
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        log.info(
            "serving",
            extra={"host": settings.host, "port": settings.port, "version": __version__, "settings": repr(settings)},
        )
        await stopping.wait()
        log.info("shutting down", extra={"grace_seconds": settings.shutdown_grace_seconds})
    finally:
        await runner.cleanup()
    log.info("stopped")
