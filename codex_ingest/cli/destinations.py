"""``codex-ingest destinations``: push delivery's destinations, operated
from the command line as GET/POST /destinations do over HTTP (the same
delivery/admin.py underneath): ``list``, ``attempts``, ``replay``, ``retry``,
``enable`` and ``disable``. Works on DATABASE_URL's server, else on the
embedded one in --data-dir; the destinations are those the sources file
(--sources / CODEX_SOURCES) declares, as serve reads them.

``list`` prints a table (``--json``: one JSON object per line), every other
action JSON lines: what the HTTP route answers.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import orjson

from codex_ingest.cli.common import EXIT_CONFIG, EXIT_FAILURE, resolve_database
from codex_ingest.delivery.admin import (
    DestinationAdmin,
    StatusFilter,
    decode_cursor,
    parse_limit,
    parse_tenant,
    parse_time,
)
from codex_ingest.errors import IngestError
from codex_ingest.settings import MIGRATE_OPTIONS, SERVE_OPTIONS, Option, Settings
from codex_ingest.storage.queries import load_queries

log = logging.getLogger("codex_ingest")

ACTIONS = ("list", "attempts", "replay", "retry", "enable", "disable")
# The command's settings: the database's, and the sources file that declares the destinations.
DESTINATIONS_OPTIONS: tuple[Option, ...] = (
    *MIGRATE_OPTIONS, *(option for option in SERVE_OPTIONS if option.attr == "sources"),
)
COLUMNS = ("name", "state", "lag_events", "lag_seconds", "in_flight", "failing", "parked", "expired",
           "last_success_at", "last_failure_at", "url_origin", "reason")


def destinations(settings: Settings, action: str, *, name: str | None = None, status: str | None = None,
                 tenant: str | None = None, limit: str | None = None, after: str | None = None,
                 since: str | None = None, as_json: bool = False) -> int:
    """Run one action; 0, 1 when the database failed, 2 for a bad argument (one line on stderr)."""
    declared = settings.source_table.destinations if settings.source_table is not None else {}
    admin = DestinationAdmin(load_queries(), declared)
    try:
        if name is not None and name not in declared:
            where = f"--sources {settings.sources}" if settings.sources is not None else "no sources file (--sources / CODEX_SOURCES)"
            raise ValueError(f"no destination {name!r} is declared ([destinations.NAME] in {where})")
        work = _plan(admin, action, name, status=status, tenant=tenant, limit=limit, after=after, since=since,
                     as_json=as_json)
    except IngestError as exc:
        return _refused(action, exc.detail)
    except ValueError as exc:
        return _refused(action, str(exc))

    async def run(url: str) -> None:
        conn = await asyncpg.connect(url)
        try:
            await work(conn)
        finally:
            await conn.close()

    try:
        asyncio.run(run(_url(settings)))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.error(f"destinations {action} failed", extra={"error": f"{exc.__class__.__name__}: {exc}"})
        return EXIT_FAILURE
    return 0


def _refused(action: str, reason: str) -> int:
    print(f"codex-ingest destinations {action}: error: {reason}", file=sys.stderr)
    return EXIT_CONFIG


def _plan(admin: DestinationAdmin, action: str, name: str | None, *, status: str | None, tenant: str | None,
          limit: str | None, after: str | None, since: str | None, as_json: bool,
          ) -> Callable[[asyncpg.Connection], Awaitable[None]]:
    """The action, its arguments checked before any database is started or reached."""
    if action == "list":
        async def list_(conn: asyncpg.Connection) -> None:
            found = await admin.overview(conn)
            if as_json:
                _lines(found)
            else:
                _table(found)
        return list_
    assert name is not None
    if action == "attempts":
        wanted = StatusFilter.parse(status)
        tenant_ = parse_tenant(tenant, "--tenant")
        limit_ = parse_limit(limit)
        before = decode_cursor(after)

        async def attempts(conn: asyncpg.Connection) -> None:
            page = await admin.attempts(conn, name, status=wanted, tenant=tenant_, limit=limit_, before=before)
            _lines(page["attempts"])
            if page["next_cursor"] is not None:
                print(f"more: --after {page['next_cursor']}", file=sys.stderr)
        return attempts
    if action == "replay":
        moment = parse_time(since, "since", offset_required=False)
        tenant_ = parse_tenant(tenant, "--tenant")

        async def replay(conn: asyncpg.Connection) -> None:
            _lines([{"replayed": await admin.replay(conn, name, moment, tenant_)}])
        return replay
    if action == "retry":
        async def retry(conn: asyncpg.Connection) -> None:
            _lines([{"retried": await admin.retry(conn, name)}])
        return retry
    change = admin.enable if action == "enable" else admin.disable

    async def switch(conn: asyncpg.Connection) -> None:
        _lines([await change(conn, name)])
    return switch


def _lines(documents: list[dict[str, Any]]) -> None:
    out = sys.stdout.buffer
    for document in documents:
        out.write(orjson.dumps(document) + b"\n")
    out.flush()


def _cell(value: object) -> str:
    if value is None:
        return "-"
    text = str(value)
    # A reason is the service's own text, but keep the table one line per destination whatever it holds.
    return "".join(c if c.isprintable() else "?" for c in text)


def _table(found: list[dict[str, Any]]) -> None:
    """Aligned columns under a header line, one destination a line (the last column, reason, unpadded)."""
    rows = [[c.upper() for c in COLUMNS], *([_cell(d[c]) for c in COLUMNS] for d in found)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS) - 1)]
    for row in rows:
        print("  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]]).rstrip())


def _url(settings: Settings) -> str:
    url = resolve_database(settings).database_url
    assert url is not None
    return url
