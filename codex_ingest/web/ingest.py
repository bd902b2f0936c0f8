"""POST /pos/{source}/ingest, for every source: admit, read the body, verify,
store, answer. Which scheme verifies is the source's business
(intake.reader); every event is stored through the same writer, the one
dedup INSERT (storage.store).

One event is answered 201 (stored now) or 200 (a duplicate); a request that
carries several (Clover) is answered with a per-event list.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from aiohttp import web

from codex_ingest.errors import DatabaseUnavailable, IdempotencyKeyReused, IngestError, UnknownSource
from codex_ingest.events import IncomingEvent, Outcome, StoreResult
from codex_ingest.intake.checks import claimed_tenant
from codex_ingest.intake.schemes.base import Handshake
from codex_ingest.telemetry.metrics import OTHER_SOURCE
from codex_ingest.web.appkeys import METRICS, RATE_LIMITER, READER, SETTINGS, WRITER
from codex_ingest.web.body import read_body
from codex_ingest.web.responses import json_response

log = logging.getLogger("codex_ingest.providers")

# Marks an answer that replays an event stored before.
REPLAYED = {"Idempotent-Replayed": "true"}


async def ingest(request: web.Request) -> web.Response:
    app = request.app
    metrics = app[METRICS]
    started = time.perf_counter()
    source = request.match_info["source"]
    verified = False  # whether the source proved itself: only then may a new name take a metrics label
    try:
        reader = app[READER]
        admitted = reader.admit(source, request.headers, request.query, app.get(RATE_LIMITER))
        settings = app[SETTINGS]
        body = await read_body(request, settings.max_body_bytes, settings.body_read_timeout)
        read = reader.read(admitted, request.headers, body)
        verified = True
        if isinstance(read, Handshake):
            # The operator needs this code to finish the provider's set-up;
            # it is the provider's one-time code, not one of our secrets.
            log.info("provider verification handshake; answered, not stored",
                     extra={"source": source, "verification_code": read.code})
            return json_response({"status": "verification_received"}, status=200)
        if not admitted.scheme.fan_out:
            result = await app[WRITER].submit(read[0])
            if result.outcome is Outcome.CONFLICT:
                raise IdempotencyKeyReused()
    except IngestError as exc:
        # Names nobody declared (strict_sources) must not take label slots.
        label = OTHER_SOURCE if isinstance(exc, UnknownSource) else source
        metrics.record(label, exc.outcome, time.perf_counter() - started, verified=verified,
                       tenant=claimed_tenant(request.headers, request.query))
        raise
    if admitted.scheme.fan_out:
        return await _store_all(request, source, read, started)
    metrics.record(source, result.outcome.value, time.perf_counter() - started)
    return answer(result)


# The commonest answer, built from bytes: only the id changes (no dict, no serializer).
_ACCEPTED_HEAD = b'{"status":"accepted","event_id":'


def answer(result: StoreResult) -> web.Response:
    """201 for an event stored now; 200 with the original's id and time for a duplicate."""
    if result.outcome is Outcome.ACCEPTED:
        return web.Response(body=b"%s%d}" % (_ACCEPTED_HEAD, result.event_id), status=201,
                            content_type="application/json")
    return json_response(
        {
            "status": "duplicate",
            "event_id": result.event_id,
            "received_at": result.received_at.isoformat(),
        },
        status=200,
        headers=REPLAYED,
    )


async def _store_all(request: web.Request, source: str, events: Sequence[IncomingEvent], started: float) -> web.Response:
    """Each event through the writer on its own; one answer for the request.

    Any event failing (503, or a row the database rejects) fails the whole
    request with that error, 503 first so the provider retries; events of
    the request already stored are then answered as duplicates on the
    retry. Any conflict (a change's key stored before with another body) is
    422 for the request; its other events are stored. Each event's outcome
    is counted; the request's time once, under the outcome it is answered
    with.
    """
    results = await asyncio.gather(*(request.app[WRITER].submit(e) for e in events), return_exceptions=True)
    outcomes: list[str] = []
    failure: IngestError | None = None
    conflicts = 0
    listed = []
    for event, result in zip(events, results, strict=True):
        if isinstance(result, IngestError):
            outcomes.append(result.outcome)
            if failure is None or (isinstance(result, DatabaseUnavailable) and not isinstance(failure, DatabaseUnavailable)):
                failure = result
            continue
        if isinstance(result, BaseException):
            raise result  # a bug: the handlers' wrapper logs it and answers 500
        if result.outcome is Outcome.CONFLICT:
            conflicts += 1
        outcomes.append(result.outcome.value)
        listed.append({
            "tenant_id": event.tenant_id,
            "idempotency_key": event.idempotency_key,
            "status": result.outcome.value,
            "event_id": result.event_id,
        })
    metrics = request.app[METRICS]
    elapsed = time.perf_counter() - started
    if failure is not None:
        metrics.record_events(source, outcomes, failure.outcome, elapsed)
        raise failure
    if conflicts:
        metrics.record_events(source, outcomes, IdempotencyKeyReused.outcome, elapsed)
        raise IdempotencyKeyReused(
            f"{conflicts} of this notification's {len(events)} changes were stored before with a different body;"
            " they were not replaced, the others are stored"
        )
    accepted = any(o == Outcome.ACCEPTED.value for o in outcomes)
    status = Outcome.ACCEPTED.value if accepted else Outcome.DUPLICATE.value
    metrics.record_events(source, outcomes, status, elapsed)
    return json_response(
        {"status": status, "events": listed},
        status=201 if accepted else 200,
        headers=None if accepted else REPLAYED,
    )
