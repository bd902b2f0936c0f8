"""GET /openapi.json: the service's OpenAPI 3 document (codex_ingest/web/openapi.json).

The document is a file in the package, read and checked once at import;
tests load it with schemathesis and compare its paths with the router's.
"""

from __future__ import annotations

from importlib import resources

import orjson
from aiohttp import web

DOCUMENT: bytes = resources.files("codex_ingest.web").joinpath("openapi.json").read_bytes()
# Fail at start-up, not at the first request, if the file is not JSON.
orjson.loads(DOCUMENT)


async def openapi_document(request: web.Request) -> web.Response:
    return web.Response(body=DOCUMENT, content_type="application/json")
