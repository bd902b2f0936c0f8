"""The asyncpg pool the service writes through, and how its connections behave."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from codex_ingest.settings import Settings

# Applied to every pooled connection. synchronous_commit is pinned on so
# that a server or role configured otherwise cannot turn a 2xx into
# "committed unless the server crashes in the next moment".
SERVER_SETTINGS = {"application_name": "codex-ingest", "synchronous_commit": "on"}


class StatelessConnection(asyncpg.Connection):
    """A pooled connection that skips asyncpg's reset query on release.

    By default every release sends ``SELECT pg_advisory_unlock_all(); CLOSE
    ALL; UNLISTEN *; RESET ALL`` — one more round trip per batch, about 2.5%
    of the service's CPU at 64 connections (py-spy). The write path leaves no
    session state behind: no advisory locks, cursors, LISTEN or SET, and
    asyncpg still rolls back any open transaction on release. Code that
    needs session state (a LISTEN for consumers, say) must use a connection
    of its own, not this pool.
    """

    def get_reset_query(self) -> str:
        return ""


def single_host_urls(url: str) -> list[str]:
    """The URL once per host of a multi-host URL (``postgresql://u@h1:p1,h2:p2/db?q``); [] for one host."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if "," not in hosts:
        return []
    return [urlunsplit(parts._replace(netloc=userinfo + at + host)) for host in hosts.split(",")]


def connect_to_any(urls: list[str]) -> Callable[..., Awaitable[asyncpg.Connection]]:
    """A pool's connect function that tries every host at once and keeps the first that accepts.

    asyncpg tries a multi-host URL's hosts one after the other under one
    timeout: a primary that hangs instead of refusing (a frozen machine, a
    network that drops packets) uses all of it, and the promoted standby
    listed after it is never tried. Each URL keeps target_session_attrs,
    so "accepts" means "is writable" when the URL asks for read-write.
    """

    async def connect(*_: object, **kwargs: Any) -> asyncpg.Connection:
        attempts = [asyncio.ensure_future(asyncpg.connect(url, **kwargs)) for url in urls]
        chosen: asyncpg.Connection | None = None
        error: BaseException | None = None
        try:
            for attempt in asyncio.as_completed(attempts):
                try:
                    chosen = await attempt
                    return chosen
                except Exception as exc:  # this host refused, timed out or is not writable
                    error = exc
            assert error is not None
            raise error
        finally:
            for attempt in attempts:
                if not attempt.done():
                    attempt.cancel()
                elif not attempt.cancelled() and attempt.exception() is None and attempt.result() is not chosen:
                    attempt.result().terminate()  # a second host that also accepted

    return connect


async def create_pool(settings: Settings) -> asyncpg.Pool:
    assert settings.database_url is not None
    hosts = single_host_urls(settings.database_url)
    return await asyncpg.create_pool(
        settings.database_url,
        connect=connect_to_any(hosts) if hosts else None,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        timeout=settings.db_connect_timeout,
        command_timeout=settings.db_command_timeout,
        server_settings=SERVER_SETTINGS,
        connection_class=StatelessConnection,
        statement_cache_size=settings.db_statement_cache_size,
    )
