"""Commands on the stored data: ``migrate``, ``purge`` and ``export``. Each
works on DATABASE_URL's server, else on the embedded one in --data-dir."""

from __future__ import annotations

import asyncio
import logging
import sys
from datetime import UTC, datetime

import asyncpg
import orjson
from tqdm import tqdm

from codex_ingest.cli.common import EXIT_CONFIG, EXIT_FAILURE, resolve_database
from codex_ingest.intake.checks import SOURCE_PATTERN, TENANT_PATTERN
from codex_ingest.settings import Settings, parse_duration
from codex_ingest.storage import retention
from codex_ingest.storage.delivery import export_events
from codex_ingest.storage.queries import load_queries
from codex_ingest.web.read import event_document

log = logging.getLogger("codex_ingest")


def migrate(settings: Settings, action: str, *, rollback_all: bool = False) -> int:
    from codex_ingest.storage import migrations

    url = _url(settings)
    try:
        if action == "apply":
            done = migrations.apply_all(url)
            print(f"applied {len(done)} migration(s)" + "".join(f"\n  {m}" for m in done))
        elif action == "rollback":
            done = migrations.rollback(url, count=None if rollback_all else 1)
            print(f"rolled back {len(done)} migration(s)" + "".join(f"\n  {m}" for m in done))
        else:
            for state in migrations.status(url):
                print(f"[{'x' if state.applied else ' '}] {state.id}")
    except Exception as exc:
        log.error("migration failed", extra={"error": f"{exc.__class__.__name__}: {exc}"})
        return EXIT_FAILURE
    return 0


def purge(settings: Settings, older_than: str) -> int:
    try:
        seconds = parse_duration(older_than)
    except ValueError as exc:
        print(f"codex-ingest purge: error: --older-than {exc}", file=sys.stderr)
        return EXIT_CONFIG

    async def run(url: str) -> int:
        conn = await asyncpg.connect(url)
        try:
            return await retention.purge(conn, load_queries(), seconds)
        finally:
            await conn.close()

    try:
        deleted = asyncio.run(run(_url(settings)))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.error("purge failed", extra={"error": f"{exc.__class__.__name__}: {exc}"})
        return EXIT_FAILURE
    print(f"deleted {deleted} event(s) received more than {older_than} ago")
    return 0


def _time(flag: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{flag} must be an ISO 8601 time, such as 2026-11-25T08:00:00Z") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def export(settings: Settings, *, tenant: str | None, source: str | None, since: str | None, until: str | None) -> int:
    """``tenant`` None: every tenant's events (--all-tenants)."""
    try:
        if tenant is not None and TENANT_PATTERN.fullmatch(tenant) is None:
            raise ValueError("--tenant must match ^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
        if source is not None and SOURCE_PATTERN.fullmatch(source) is None:
            raise ValueError("--source must match ^[a-z0-9][a-z0-9_-]{0,63}$")
        start, end = _time("--since", since), _time("--until", until)
    except ValueError as exc:
        print(f"codex-ingest export: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    async def run(url: str) -> int:
        out = sys.stdout.buffer
        written = 0
        conn = await asyncpg.connect(url)
        # A bar only for a person watching; never in a pipe or a log.
        progress = tqdm(unit=" events", file=sys.stderr, disable=not sys.stderr.isatty())
        try:
            async for event in export_events(conn, load_queries(), tenant, source, start, end):
                out.write(orjson.dumps(event_document(event)) + b"\n")
                written += 1
                progress.update()
        finally:
            progress.close()
            await conn.close()
        out.flush()
        return written

    try:
        asyncio.run(run(_url(settings)))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.error("export failed", extra={"error": f"{exc.__class__.__name__}: {exc}"})
        return EXIT_FAILURE
    return 0


def _url(settings: Settings) -> str:
    url = resolve_database(settings).database_url
    assert url is not None
    return url
