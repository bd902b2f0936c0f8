"""Every route the service answers, registered in one place."""

from __future__ import annotations

from aiohttp import web

from codex_ingest.web.appkeys import METRICS, READ_AUTH, SETTINGS
from codex_ingest.web.batch import ingest_batch
from codex_ingest.web.body import continue_within_limit
from codex_ingest.web.console.pages import console_app
from codex_ingest.web.destinations import (
    continue_small,
    destination_attempts,
    disable,
    enable,
    list_destinations,
    replay,
    retry,
    setup_destinations,
)
from codex_ingest.web.ingest import ingest
from codex_ingest.web.openapi import openapi_document
from codex_ingest.web.probes import MetricsEndpoint, healthz, readyz
from codex_ingest.web.read import read_events


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/pos/{source}/ingest", ingest, expect_handler=continue_within_limit)
    app.router.add_post("/pos/{source}/ingest/batch", ingest_batch, expect_handler=continue_within_limit)
    app.router.add_get("/healthz", healthz, allow_head=True)
    app.router.add_get("/readyz", readyz, allow_head=True)
    # This process's series, or every worker's; METRICS_TOKEN and METRICS_CACHE_SECONDS apply.
    app.router.add_get("/metrics", MetricsEndpoint(app[METRICS], app[SETTINGS]).scrape)
    app.router.add_get("/openapi.json", openapi_document)
    if READ_AUTH in app:  # reading is off (404) until CODEX_API_TOKENS names a token
        app.router.add_get("/events", read_events, allow_head=False)
        # Operating push delivery, with a token scoped * (web/destinations.py).
        setup_destinations(app)
        app.router.add_get("/destinations", list_destinations, allow_head=False)
        app.router.add_get("/destinations/{name}/attempts", destination_attempts, allow_head=False)
        app.router.add_post("/destinations/{name}/replay", replay, expect_handler=continue_small)
        app.router.add_post("/destinations/{name}/retry", retry, expect_handler=continue_small)
        app.router.add_post("/destinations/{name}/enable", enable, expect_handler=continue_small)
        app.router.add_post("/destinations/{name}/disable", disable, expect_handler=continue_small)
        # The operator's pages, signed in with a read token (console/).
        app.add_subapp("/console/", console_app(app))
