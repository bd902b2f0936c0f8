"""GET /events: a tenant's stored events in delivery order, by cursor, with
an optional wait at the head (long-poll). Without ``tenant``, the combined
feed: every tenant the token may read (all, for a token scoped ``*``), in
one delivery order, with cursors of its own.

A consumer that always continues from ``next_cursor`` gets every committed
event of its tenant (or of its feed) exactly once (storage/delivery.py says why). A page holds
at most ``limit`` events and READ_PAGE_MAX_BYTES of bodies (one larger event
comes alone). With ``wait=N`` a read that finds nothing waits up to N seconds
for new events (woken by storage/notify.py, never by polling) and then
answers, empty or not; past READ_MAX_WAITING waiting readers in this worker,
it answers at once, empty, with ``Retry-After``: its wait, to come back after.
"""

from __future__ import annotations

import asyncio
import base64
import math

import orjson
from aiohttp import web

from codex_ingest.errors import InvalidParameter, InvalidSource, InvalidTenant
from codex_ingest.intake.checks import SOURCE_PATTERN, TENANT_PATTERN
from codex_ingest.settings import parse_ascii_decimal, parse_ascii_int
from codex_ingest.storage.delivery import Cursor, Page, StoredEvent
from codex_ingest.web.appkeys import EVENT_LOG, HEAD_WATCH, METRICS, READ_AUTH, SETTINGS
from codex_ingest.web.responses import json_response

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_WAIT_SECONDS = 30.0
# Read answers are one consumer's data: no cache may keep them.
NO_STORE = {"Cache-Control": "no-store"}


def _limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_LIMIT
    try:
        limit = parse_ascii_int(text)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidParameter("invalid_limit", f"limit must be a whole number from 1 to {MAX_LIMIT} (digits 0-9)")
    return limit


def _wait(text: str | None) -> float:
    if text is None:
        return 0.0
    try:
        seconds = parse_ascii_decimal(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= MAX_WAIT_SECONDS:
        raise InvalidParameter(
            "invalid_wait", f"wait must be a number of seconds from 0 to {MAX_WAIT_SECONDS:g} (digits 0-9 and '.')"
        )
    return seconds


def event_document(event: StoredEvent) -> dict[str, object]:
    """One event as the API shows it; ``body_base64`` holds the exact bytes stored (canonical).
    ``headers`` is the stored JSON object, passed through as it is (null: stored before headers were kept)."""
    return {
        "event_id": event.event_id,
        "tenant_id": event.tenant_id,
        "source": event.source,
        "idempotency_key": event.idempotency_key,
        "received_at": event.received_at.isoformat(),
        "content_type": event.content_type,
        "headers": None if event.headers is None else orjson.Fragment(event.headers),
        "body_base64": base64.b64encode(event.body).decode("ascii"),
    }


async def read_events(request: web.Request) -> web.Response:
    app = request.app
    query = request.query
    tenant = query.get("tenant")
    scope = app[READ_AUTH].scope(request.headers.get("Authorization"))  # 401 first: say nothing to strangers
    feed = tenant is None
    if not feed and TENANT_PATTERN.fullmatch(tenant) is None:
        raise InvalidTenant("tenant must match ^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
                            " (leave it out to read every tenant the token may read, in one feed)")
    if not feed:
        app[READ_AUTH].authorize(request.headers.get("Authorization"), tenant)
    source = query.get("source")
    if source is not None and SOURCE_PATTERN.fullmatch(source) is None:
        raise InvalidSource()
    after = Cursor.decode(query["after"], feed=feed) if "after" in query else None
    limit = _limit(query.get("limit"))
    wait = _wait(query.get("wait"))

    settings = app[SETTINGS]
    log = app[EVENT_LOG]
    watch = app[HEAD_WATCH]
    max_bytes = settings.read_page_max_bytes

    async def read_page() -> Page:
        if tenant is None:
            return await log.feed_page(scope, source, after, limit, max_bytes)
        return await log.page(tenant, source, after, limit, max_bytes)

    headers = NO_STORE
    # Marked before each read: a commit announced while the read runs is not missed by the wait after it.
    since = watch.mark()
    page = await read_page()
    if not page.events and wait > 0:
        with watch.place(settings.read_max_waiting) as waiting:
            if not waiting:
                # Every waiting reader re-reads at every write: past the cap, the
                # reader is answered as if its wait had run out unwoken, and is
                # told to come back when it would have.
                headers = {**NO_STORE, "Retry-After": str(math.ceil(wait))}
            else:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + wait
                while not page.events and (remaining := deadline - loop.time()) > 0:
                    # Woken by a NOTIFY, or the time is up: read again either way.
                    await watch.wait(remaining, since)
                    # A few at a time (storage/notify.py): the writes must not queue behind the crowd.
                    async with watch.rereads:
                        since = watch.mark()
                        page = await read_page()
    app[METRICS].served(len(page.events))
    return json_response(
        {"events": [event_document(e) for e in page.events], "next_cursor": page.next_cursor.encode(feed=feed)},
        headers=headers,
    )
