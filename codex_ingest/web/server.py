"""Runs the application on uvloop until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import signal
from collections.abc import Callable
from typing import Any

import asyncpg
import uvloop
from aiohttp import web
from aiohttp.web_log import AccessLogger

from codex_ingest import __version__
from codex_ingest.settings import Settings
from codex_ingest.telemetry.logs import JsonAccessLogger, loggable_fields
from codex_ingest.web.app import create_app
from codex_ingest.web.connection import ServiceRunner

log = logging.getLogger("codex_ingest")


class StartupError(Exception):
    """The service could not start; the message says why in one line."""


def run_worker(settings: Settings, *, reuse_port: bool = False, ready: Callable[[], None] | None = None) -> None:
    """Serve in this process until SIGTERM or SIGINT.

    Once listening, a lone server logs the service's "serving" line; a worker
    of several (``ready`` given) calls ``ready()`` instead and leaves that line
    to its supervisor, which logs it once every worker is listening.
    """
    give_freed_blocks_back()
    uvloop.run(_serve(settings, reuse_port, ready))


# Blocks from this size up are mapped on their own, and unmapped when freed (glibc's default).
MMAP_THRESHOLD_BYTES = 128 * 1024
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number in glibc's malloc.h


def give_freed_blocks_back() -> None:
    """Keep glibc's mmap threshold fixed, so a large block is given back to the system when freed.

    glibc raises the threshold each time it unmaps a freed block, up to 32 MiB. After that, blocks of
    that size come from the heap and stay in the process once freed. A worker that served a page of
    1 MiB events, or that refused 1 MiB unsigned bodies, would then keep the next large page's memory
    after its reader was gone (tests/web/test_attack_memory.py). Setting the threshold turns the
    raising off. The bodies of single events (1-2 KB) never come near it. Not glibc: nothing to do.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def log_serving(settings: Settings, **extra: Any) -> None:
    """The service's one "serving" line: where it listens, its version, its
    settings as a JSON object (never a secret, a token or a database URL: the
    fields Settings declares repr=False are left out), and the declared
    sources with their schemes."""
    table = settings.source_table
    log.info("serving", extra={
        "host": settings.host,
        "port": settings.port,
        "version": __version__,
        **extra,
        "sources": {name: spec.scheme for name, spec in table.sources.items()} if table is not None else {},
        "strict_sources": table is not None and table.strict,
        "settings": loggable_fields(settings),
    })


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


async def _serve(settings: Settings, reuse_port: bool, ready: Callable[[], None] | None) -> None:
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
        if ready is None:
            log_serving(settings, pids=[os.getpid()])
        else:
            ready()
            log.debug("worker started", extra={"pid": os.getpid()})
        await stopping.wait()
        log.info("shutting down", extra={"grace_seconds": settings.shutdown_grace_seconds})
    finally:
        await runner.cleanup()
    log.info("stopped")
