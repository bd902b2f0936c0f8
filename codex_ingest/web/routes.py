"""Every route the service answers, registered in one place."""

from __future__ import annotations

from aiohttp import web

from codex_ingest.telemetry.http_metrics import UNMATCHED_PATH
from codex_ingest.web.appkeys import EVERY_REQUEST, METRICS, READ_AUTH, SETTINGS
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
from codex_ingest.web.every_request import UNMATCHED_NAME, UNMATCHED_ROUTE, unmatched
from codex_ingest.web.ingest import ingest
from codex_ingest.web.openapi import openapi_document
from codex_ingest.web.probes import MetricsEndpoint, healthz, readyz
from codex_ingest.web.read import read_events


def setup_routes(app: web.Application) -> None:
    """Every handler goes through what every request passes (web/every_request.py)."""
    wrap = app[EVERY_REQUEST]
    router = app.router
    router.add_post("/pos/{source}/ingest", wrap(ingest), expect_handler=continue_within_limit)
    router.add_post("/pos/{source}/ingest/batch", wrap(ingest_batch), expect_handler=continue_within_limit)
    router.add_get("/healthz", wrap(healthz), allow_head=True)
    router.add_get("/readyz", wrap(readyz), allow_head=True)
    # This process's series, or every worker's; METRICS_TOKEN and METRICS_CACHE_SECONDS apply.
    router.add_get("/metrics", wrap(MetricsEndpoint(app[METRICS], app[SETTINGS]).scrape))
    router.add_get("/openapi.json", wrap(openapi_document))
    if READ_AUTH in app:  # reading is off (404) until CODEX_API_TOKENS names a token
        router.add_get("/events", wrap(read_events), allow_head=False)
        # Operating push delivery, with a token scoped * (web/destinations.py).
        setup_destinations(app)
        router.add_get("/destinations", wrap(list_destinations), allow_head=False)
        router.add_get("/destinations/{name}/attempts", wrap(destination_attempts), allow_head=False)
        router.add_post("/destinations/{name}/replay", wrap(replay), expect_handler=continue_small)
        router.add_post("/destinations/{name}/retry", wrap(retry), expect_handler=continue_small)
        router.add_post("/destinations/{name}/enable", wrap(enable), expect_handler=continue_small)
        router.add_post("/destinations/{name}/disable", wrap(disable), expect_handler=continue_small)
        # The operator's pages, signed in with a read token (console/). "/console" alone is
        # the console's address too: registered first, it is matched before the sub-application.
        router.add_get("/console", wrap(to_console), allow_head=False)
        app.add_subapp("/console/", console_app(app, wrap))
    # Last: whatever no route above matched is a 404 or a 405, answered like any error.
    router.add_route("*", UNMATCHED_ROUTE, wrap(unmatched, path_template=UNMATCHED_PATH), name=UNMATCHED_NAME)


async def to_console(request: web.Request) -> web.StreamResponse:
    raise web.HTTPPermanentRedirect("/console/")
