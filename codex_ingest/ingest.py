"""POST /pos/{source}/ingest: verify, deduplicate, store, acknowledge."""

from __future__ import annotations

import time

from aiohttp import web

from codex_ingest.errors import IdempotencyKeyReused, IngestError
from codex_ingest.intake import read_event
from codex_ingest.keys import METRICS, RATE_LIMITER, SETTINGS, VERIFIER, WRITER
from codex_ingest.responses import json_response
from codex_ingest.store import Outcome, StoreResult

# Marks an answer that replays an event stored before.
REPLAYED = {"Idempotent-Replayed": "true"}


async def ingest(request: web.Request) -> web.Response:
    app = request.app
    metrics = app[METRICS]
    started = time.perf_counter()
    source = request.match_info["source"]
    try:
        settings = app[SETTINGS]
        event = await read_event(
            request, app[VERIFIER], settings.max_body_bytes, settings.body_read_timeout, app.get(RATE_LIMITER)
        )
        result = await app[WRITER].submit(event)
        if result.outcome is Outcome.CONFLICT:
            raise IdempotencyKeyReused()
    except IngestError as exc:
        metrics.record(source, exc.outcome, time.perf_counter() - started)
        raise
    metrics.record(source, result.outcome.value, time.perf_counter() - started)
    return answer(result)


def answer(result: StoreResult) -> web.Response:
    """201 for an event stored now; 200 with the original's id and time for a duplicate."""
    if result.outcome is Outcome.ACCEPTED:
        return json_response({"status": "accepted", "event_id": result.event_id}, status=201)
    return json_response(
        {
            "status": "duplicate",
            "event_id": result.event_id,
            "received_at": result.received_at.isoformat(),
        },
        status=200,
        headers=REPLAYED,
    )
