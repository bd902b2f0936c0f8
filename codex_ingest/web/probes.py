"""Liveness, readiness and the metrics scrape."""

from __future__ import annotations

from aiohttp import web

from codex_ingest.errors import DatabaseUnavailable
from codex_ingest.web.appkeys import STORE
from codex_ingest.web.responses import json_response

READINESS_TIMEOUT_SECONDS = 1.0


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
