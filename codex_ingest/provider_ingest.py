"""POST /pos/{source}/ingest when a sources file is loaded: a declared source
is read by its provider's scheme; an undeclared one goes to the generic
handler (ingest.py), or is 404 with strict_sources.

A declared source's request: tenant override (X-Tenant-Id / ?tenant=) and
media type judged from the headers, the body read, the scheme verifies it
and names its deliveries, and each delivery is stored through the same
writer (the one dedup INSERT) as any other event. One delivery is answered
exactly as the generic handler answers; a request carrying several
(Clover) is answered with a per-event list.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence

from aiohttp import web

from codex_ingest.errors import DatabaseUnavailable, IdempotencyKeyReused, IngestError, InvalidTenant, UnknownSource
from codex_ingest.ingest import REPLAYED, answer, ingest
from codex_ingest.intake import (
    IncomingEvent,
    check_content_encoding,
    check_content_type,
    read_body,
    requested_tenant,
)
from codex_ingest.keys import METRICS, RATE_LIMITER, SETTINGS, SOURCES, WRITER
from codex_ingest.metrics import OTHER_SOURCE
from codex_ingest.providers.base import Delivery, Handshake, Scheme
from codex_ingest.responses import json_response
from codex_ingest.store import Outcome, StoreResult

log = logging.getLogger("codex_ingest.providers")

async def route_ingest(request: web.Request) -> web.Response:
    declared = request.app[SOURCES]
    source = request.match_info["source"]
    scheme = declared.schemes.get(source)
    if scheme is not None:
        return await ingest_declared(request, source, scheme)
    if declared.strict:
        # Counted under "_other": names nobody declared must not take label slots.
        request.app[METRICS].record(OTHER_SOURCE, UnknownSource.outcome, 0.0)
        raise UnknownSource(f"source {source!r} is not declared in the sources file")
    return await ingest(request)


async def _read(request: web.Request, source: str, scheme: Scheme) -> list[IncomingEvent] | Handshake:
    override = requested_tenant(request)
    limiter = request.app.get(RATE_LIMITER)
    if limiter is not None and override is not None:  # tenant known: refuse before reading the body
        limiter.check(override, source)
    content_type = check_content_type(request)
    check_content_encoding(request)
    settings = request.app[SETTINGS]
    body = await read_body(request, settings.max_body_bytes, settings.body_read_timeout)
    read = scheme.read(request.headers, body)
    if isinstance(read, Handshake):
        return read
    events = [_event(delivery, override, source, content_type) for delivery in read]
    if limiter is not None and override is None:
        # The provider names the tenant in the body or its own header: known
        # only now, after verification, still before the database.
        for tenant in dict.fromkeys(e.tenant_id for e in events):
            limiter.check(tenant, source)
    return events


def _event(delivery: Delivery, override: str | None, source: str, content_type: str | None) -> IncomingEvent:
    tenant = override if override is not None else delivery.tenant
    if tenant is None:
        raise InvalidTenant("this provider names no tenant for this event: send X-Tenant-Id or ?tenant=")
    return IncomingEvent(
        tenant_id=tenant,
        source=source,
        idempotency_key=delivery.key,
        body=delivery.body,
        body_sha256=hashlib.sha256(delivery.body).digest(),
        content_type=content_type,
    )


async def ingest_declared(request: web.Request, source: str, scheme: Scheme) -> web.Response:
    app = request.app
    metrics = app[METRICS]
    started = time.perf_counter()
    try:
        read = await _read(request, source, scheme)
        if isinstance(read, Handshake):
            # The operator needs this code to finish the provider's set-up;
            # it is the provider's one-time code, not one of our secrets.
            log.info("provider verification handshake; answered, not stored",
                     extra={"source": source, "verification_code": read.code})
            return json_response({"status": "verification_received"}, status=200)
        if not scheme.fan_out:
            result = await app[WRITER].submit(read[0])
            if result.outcome is Outcome.CONFLICT:
                raise IdempotencyKeyReused()
    except IngestError as exc:
        metrics.record(source, exc.outcome, time.perf_counter() - started)
        raise
    if scheme.fan_out:
        return await _store_many(request, source, read, started)
    metrics.record(source, result.outcome.value, time.perf_counter() - started)
    return answer(result)


async def _store_many(request: web.Request, source: str, events: Sequence[IncomingEvent], started: float) -> web.Response:
    """Each event through the writer on its own; one answer for the request.

    Any event failing (503, or a row the database rejects) fails the whole
    request with that error, 503 first so the provider retries; events of
    the request already stored are then answered as duplicates on the
    retry. Any conflict (a change's key stored before with another body) is
    422 for the request; its other events are stored.
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
            raise result  # a bug: the error middleware logs it and answers 500
        assert isinstance(result, StoreResult)
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
    answer = Outcome.ACCEPTED.value if accepted else Outcome.DUPLICATE.value
    metrics.record_events(source, outcomes, answer, elapsed)
    return json_response(
        {"status": answer, "events": listed},
        status=201 if accepted else 200,
        headers=None if accepted else REPLAYED,
    )
