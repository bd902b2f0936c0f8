"""Liveness, readiness and the metrics scrape."""

from __future__ import annotations

import hashlib
import hmac

from aiohttp import hdrs, web
from prometheus_client import CONTENT_TYPE_LATEST

from codex_ingest.errors import DatabaseUnavailable, Unauthorized
from codex_ingest.settings import Settings
from codex_ingest.telemetry.metrics import ServiceMetrics
from codex_ingest.telemetry.scrape import Exposition
from codex_ingest.web.appkeys import STORE
from codex_ingest.web.responses import json_response

READINESS_TIMEOUT_SECONDS = 1.0

_BEARER = "bearer "


async def healthz(request: web.Request) -> web.Response:
    """200 while the process runs; never touches the database."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """200 when SELECT 1 answers within a second, else 503."""
    try:
        await request.app[STORE].ping(READINESS_TIMEOUT_SECONDS)
    except DatabaseUnavailable:
        return json_response(
            {"status": "unavailable", "detail": "the database did not answer within 1 s"},
            status=503,
            headers={"Retry-After": "1"},
        )
    return json_response({"status": "ready"})


class MetricsEndpoint:
    """GET /metrics (``scrape``): every worker's series in Prometheus' text
    format, as aiohttp-prometheus-exporter's handler served them, rendered at
    most once per METRICS_CACHE_SECONDS (``exposition``). With METRICS_TOKEN
    set, only for ``Authorization: Bearer <METRICS_TOKEN>``: anything else is
    401 before any rendering, so an unauthenticated flood costs almost nothing."""

    __slots__ = ("_expected", "_pending", "exposition")

    def __init__(self, metrics: ServiceMetrics, settings: Settings) -> None:
        self.exposition = Exposition(metrics.exposition, settings.metrics_cache_seconds)
        self._pending = metrics.pending
        token = settings.metrics_token
        # Compared as digests: constant time whatever the length of what is sent.
        self._expected = hashlib.sha256(token.encode()).digest() if token is not None else None

    async def scrape(self, request: web.Request) -> web.Response:
        if self._expected is not None:
            _authorize(request.headers.get(hdrs.AUTHORIZATION), self._expected)
        # This worker's own counts, applied here on the loop: the rendering runs in a thread.
        self._pending.flush()
        return web.Response(body=await self.exposition.body(), headers={hdrs.CONTENT_TYPE: CONTENT_TYPE_LATEST})


def _authorize(authorization: str | None, expected: bytes) -> None:
    """Unauthorized (401) unless ``authorization`` is ``Bearer <METRICS_TOKEN>``; the token is never echoed."""
    if authorization is None or authorization[: len(_BEARER)].lower() != _BEARER:
        raise Unauthorized("send Authorization: Bearer <METRICS_TOKEN> to read /metrics")
    given = hashlib.sha256(authorization[len(_BEARER):].strip().encode("utf-8", "surrogateescape")).digest()
    if not hmac.compare_digest(given, expected):
        raise Unauthorized("the token is not METRICS_TOKEN")
