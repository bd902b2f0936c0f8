"""Reading stored events back in delivery order, by cursor.

The order is (xact, id): the transaction that stored a row, then its id. A
page holds only rows whose transaction is older than every transaction
still running (sql/read.sql), so a row that commits late — a batch that
waited on another's lock while later ids committed — is never behind a
cursor that has already passed: a consumer that always continues from
``next_cursor`` gets every committed event of its tenant exactly once,
whatever the commit order. The combined feed (every tenant a token may
read, in one such order) keeps the same promise across tenants, with
cursors of its own. The price: a long-running writing transaction
anywhere on the server holds delivery back (never skips); its age is the
horizon lag metric.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from codex_ingest.errors import CursorExpired, InvalidParameter
from codex_ingest.settings import parse_ascii_int
from codex_ingest.storage.dberrors import ErrorCounter, translated
from codex_ingest.storage.queries import Queries

_CURSOR_TEXT = re.compile(r"(f:)?([0-9]{1,20}):([0-9]{1,19})(?::([0-9]{1,20}))?")
# A combined feed's cursor says so ("f:" before the numbers): continuing the
# feed from one tenant's cursor would skip the other tenants' events before
# it, and a tenant's read from a feed cursor is as wrong the other way.
_FEED_MARK = "f:"
# The cursor's numbers are checked against their SQL types before the database
# sees them: xact is xid8 (unsigned 64-bit), id is bigint (signed 64-bit).
_XID8_MAX = 2**64 - 1
_BIGINT_MAX = 2**63 - 1
_CURSOR_MAX_CHARS = 96  # "f:" and three numbers of up to 20 digits, in base64


def unwrap_cursor(text: str, max_chars: int) -> str:
    """The text a cursor carries (unpadded URL-safe base64 of ASCII), or "" when ``text`` is
    longer than ``max_chars`` or not such base64: the caller's pattern then refuses it."""
    if len(text) > max_chars or not text.isascii():
        return ""
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return ""


@dataclass(frozen=True, slots=True, order=True)
class Cursor:
    """A position in the delivery order (one tenant's, or the combined
    feed's); the API shows it as an opaque string."""

    xact: int
    id: int
    # The delivery horizon (snapshot xmin) of the read that gave the cursor out: a purge
    # whose transaction is below it had ended before that read (sql/read.sql purge_state).
    # 0, for a cursor made before stamps existed: every purge counts against it.
    stamp: int = field(default=0, compare=False)

    def encode(self, *, feed: bool = False) -> str:
        text = f"{_FEED_MARK if feed else ''}{self.xact}:{self.id}:{self.stamp}"
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str, *, feed: bool = False) -> Cursor:
        """The cursor ``text`` names, from a read of the same kind (``feed``: the
        combined feed); InvalidParameter (400 ``invalid_cursor``) for anything
        else, including numbers out of their SQL types' range."""
        match = _CURSOR_TEXT.fullmatch(unwrap_cursor(text, _CURSOR_MAX_CHARS))
        if match is not None:
            if (match.group(1) is not None) != feed:
                raise InvalidParameter(
                    "invalid_cursor",
                    "after is a next_cursor of the combined feed (no tenant): it cannot continue one tenant's read"
                    if not feed else
                    "after is a next_cursor of one tenant's read: the combined feed (no tenant) has cursors of its own",
                )
            xact, id_ = parse_ascii_int(match.group(2), max_digits=20), parse_ascii_int(match.group(3), max_digits=19)
            stamp = 0 if match.group(4) is None else parse_ascii_int(match.group(4), max_digits=20)
            if xact <= _XID8_MAX and id_ <= _BIGINT_MAX and stamp <= _XID8_MAX:
                return cls(xact, id_, stamp)
        raise InvalidParameter("invalid_cursor", "after must be a next_cursor this service returned")


START = Cursor(0, 0)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    cursor: Cursor
    event_id: int
    tenant_id: str
    source: str
    idempotency_key: str
    received_at: datetime
    content_type: str | None
    headers: str | None  # the kept request headers, a JSON object's text; None: stored before headers were kept
    body: bytes


def _event(row: asyncpg.Record) -> StoredEvent:
    return StoredEvent(
        cursor=Cursor(int(row["xact_text"]), row["id"]),
        event_id=row["id"],
        tenant_id=row["tenant_id"],
        source=row["source"],
        idempotency_key=row["idempotency_key"],
        received_at=row["received_at"],
        content_type=row["content_type"],
        headers=row["headers"],
        body=bytes(row["body"]),
    )


@dataclass(frozen=True, slots=True)
class Page:
    events: list[StoredEvent]
    next_cursor: Cursor  # after the last event, or where the read began; stamped by this read


class EventLog:
    """Pages of a tenant's events, or of the combined feed, after a cursor, through the pool."""

    def __init__(
        self, pool: asyncpg.Pool, queries: Queries, *, acquire_timeout: float, retry_after: int,
        count_error: ErrorCounter | None = None,
    ) -> None:
        self._pool = pool
        self._read = queries.sql("read_events")
        self._read_feed = queries.sql("read_feed")
        self._read_feed_of = queries.sql("read_feed_of")
        self._purge_state = queries.sql("purge_state")
        self._horizon_lag = queries.sql("horizon_lag")
        self._oldest_age = queries.sql("oldest_event_age")
        self._acquire_timeout = acquire_timeout
        self._retry_after = retry_after
        self._count_error = count_error

    async def page(
        self, tenant: str, source: str | None, after: Cursor | None, limit: int, max_bytes: int | None = None,
    ) -> Page:
        """Up to ``limit`` deliverable events of ``tenant`` after ``after`` (None: from the first
        retained one), and no more than ``max_bytes`` of bodies (None: no cap), except that the
        first event always comes, however large: the page ends before the event that would pass it.

        The cap is applied by the database (sql/read.sql): bodies past it are
        neither read from storage nor sent. Raises CursorExpired (410) when
        retention deleted events of this tenant after ``after`` that the read
        which made it could still have seen: continuing would skip them.
        """
        return await self._page([tenant], self._read, (tenant,), source, after, limit, max_bytes)

    async def feed_page(
        self, tenants: frozenset[str] | None, source: str | None, after: Cursor | None, limit: int,
        max_bytes: int | None = None,
    ) -> Page:
        """The combined feed: like ``page``, over every tenant (``tenants`` None) or
        over ``tenants``, in one delivery order. CursorExpired (410) as ``page``, for
        an event of any of them."""
        if tenants is None:
            return await self._page(None, self._read_feed, (), source, after, limit, max_bytes)
        tenant_list = sorted(tenants)
        return await self._page(tenant_list, self._read_feed_of, (tenant_list,), source, after, limit, max_bytes)

    async def _page(
        self, tenants: list[str] | None, statement: str, scope: tuple[object, ...], source: str | None,
        after: Cursor | None, limit: int, max_bytes: int | None,
    ) -> Page:
        position = after or START
        with translated(self._retry_after, self._count_error):
            async with self._pool.acquire(timeout=self._acquire_timeout) as conn:
                # One snapshot for the check and the page: a purge cannot commit between them.
                # Read only, it takes no xid, and delays nobody's delivery.
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    state = await conn.fetchrow(
                        self._purge_state,
                        tenants,              # $1 tenant_id[], or None: every tenant
                        str(position.xact),   # $2 after xact
                        position.id,          # $3 after id
                        str(position.stamp),  # $4 the cursor's stamp
                    )
                    if after is not None and state["expired"]:
                        raise CursorExpired()
                    rows = await conn.fetch(
                        statement,
                        *scope,               # read_events: $1 tenant_id; read_feed_of: $1 tenant_id[]
                        source,               # source, or None for every source
                        str(position.xact),   # after xact
                        position.id,          # after id
                        limit,                # limit
                        max_bytes,            # most bytes of bodies, or None for no cap
                    )
        events = _within_cap(rows)
        last = events[-1].cursor if events else position
        return Page(events, Cursor(last.xact, last.id, int(state["stamp"])))

    async def horizon_lag(self) -> float:
        with translated(self._retry_after, self._count_error):
            async with self._pool.acquire(timeout=self._acquire_timeout) as conn:
                return float(await conn.fetchval(self._horizon_lag))

    async def oldest_event_age(self) -> float | None:
        with translated(self._retry_after, self._count_error):
            async with self._pool.acquire(timeout=self._acquire_timeout) as conn:
                age = await conn.fetchval(self._oldest_age)
        return None if age is None else float(age)


def _within_cap(rows: list[asyncpg.Record]) -> list[StoredEvent]:
    # Past the byte cap the database sends the rows without their bodies: the page ends there.
    return [_event(row) for row in itertools.takewhile(lambda row: row["body"] is not None, rows)]


async def export_events(
    conn: asyncpg.Connection, queries: Queries, tenant: str | None, source: str | None,
    since: datetime | None, until: datetime | None, *, prefetch: int = 1000, chunk_bytes: int = 8 * 1024 * 1024,
) -> AsyncIterator[StoredEvent]:
    """Every matching event of ``tenant`` (None: of every tenant, in the combined
    feed's order), streamed through a server-side cursor (memory stays flat).

    Rows come in chunks of at most ``prefetch``, sized from the bodies seen so
    far to about ``chunk_bytes``, growing at most twofold a chunk (300 events of
    1 MB fetched at once peaked at 336 MB of RSS; in chunks, 66 MB). The cursor
    lives in a read-only transaction, which takes no xid: a long export delays
    nobody's delivery.
    """
    async with conn.transaction(readonly=True):
        if tenant is None:
            cursor = await conn.cursor(
                queries.sql("export_feed"),
                source,  # $1 source, or None
                since,   # $2 since, or None
                until,   # $3 until, or None
            )
        else:
            cursor = await conn.cursor(
                queries.sql("export_events"),
                tenant,  # $1 tenant_id
                source,  # $2 source, or None
                since,   # $3 since, or None
                until,   # $4 until, or None
            )
        rows_wanted = min(prefetch, 16)
        while rows := await cursor.fetch(rows_wanted):
            body_bytes = 0
            for row in rows:
                body_bytes += len(row["body"])
                yield _event(row)
            fit = chunk_bytes * len(rows) // max(1, body_bytes)
            rows_wanted = max(1, min(prefetch, 2 * rows_wanted, fit))
            del rows
