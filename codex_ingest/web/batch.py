"""POST /pos/{source}/ingest/batch: many events in one signed request, for
in-house systems and POS terminals sending what they queued while offline.

The request is admitted, read and verified as a whole (intake.reader, the
service's own X-Signature scheme); its items are counted (BATCH_MAX_ITEMS)
and each held to MAX_BODY_BYTES like a single event (intake.batch); each is
then stored on its own key through the same dedup statement, in one round
trip for the whole batch. The answer is 200 with a result per item, in
order: accepted, duplicate, conflict or invalid. A database failure fails the whole request with 503; its retry
settles every item as accepted or duplicate.
"""

from __future__ import annotations

import time
from collections import Counter

from aiohttp import web

from codex_ingest.errors import DatabaseUnavailable, EventRejected, IngestError
from codex_ingest.events import IncomingEvent, Outcome
from codex_ingest.intake.batch import InvalidItem
from codex_ingest.intake.checks import claimed_tenant
from codex_ingest.web.appkeys import METRICS, RATE_LIMITER, READER, SETTINGS, WRITER
from codex_ingest.web.body import read_body
from codex_ingest.web.responses import json_response

INVALID = "invalid"
# An item's status, and the outcome it counts as in codex_ingest_events_total.
_OUTCOME = {"accepted": "accepted", "duplicate": "duplicate", "conflict": "conflict", INVALID: "rejected_input"}


async def ingest_batch(request: web.Request) -> web.Response:
    app = request.app
    settings = app[SETTINGS]
    metrics = app[METRICS]
    started = time.perf_counter()
    source = request.match_info["source"]
    verified = False  # whether the source proved itself: only then may a new name take a metrics label
    try:
        reader = app[READER]
        admitted = reader.admit(source, request.headers, request.query, app.get(RATE_LIMITER), batch=True)
        body = await read_body(request, settings.max_batch_bytes, settings.body_read_timeout)
        items = reader.read_batch(admitted, request.headers, body, max_items=settings.batch_max_items,
                                  max_item_bytes=settings.max_body_bytes)
        verified = True
        events = [item for item in items if isinstance(item, IncomingEvent)]
        stored = await app[WRITER].submit_many(events) if events else []
    except IngestError as exc:
        metrics.record(source, exc.outcome, time.perf_counter() - started, verified=verified,
                       tenant=claimed_tenant(request.headers, request.query))
        raise
    unavailable = next((r for r in stored if isinstance(r, DatabaseUnavailable)), None)
    if unavailable is not None:
        # Part of the batch may be stored; the retry answers those as duplicates.
        metrics.record(source, unavailable.outcome, time.perf_counter() - started, verified=True,
                       tenant=admitted.tenant)
        raise unavailable
    results = iter(stored)
    listed: list[dict[str, object]] = []
    statuses: list[str] = []
    for item in items:
        result = item if isinstance(item, InvalidItem) else next(results)
        entry: dict[str, object]
        if isinstance(result, InvalidItem):
            entry = {"status": INVALID, "event_id": None, "error": result.error, "detail": result.detail}
        elif isinstance(result, IngestError):  # the database refused this item's values
            entry = {"status": INVALID, "event_id": None, "error": EventRejected.code, "detail": result.detail}
        else:
            conflict = result.outcome is Outcome.CONFLICT
            entry = {"status": result.outcome.value, "event_id": result.event_id,
                     "error": "idempotency_key_reused" if conflict else None}
        listed.append(entry)
        statuses.append(str(entry["status"]))
    counts = Counter(statuses)
    metrics.record_events(source, [_OUTCOME[s] for s in statuses], "accepted" if counts["accepted"] else "duplicate",
                          time.perf_counter() - started)
    return json_response({"results": listed, "counts": {status: counts[status] for status in _OUTCOME}})
