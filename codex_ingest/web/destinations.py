"""Operating push delivery over HTTP: GET /destinations, GET
/destinations/{name}/attempts, POST /destinations/{name}/replay, /retry,
/enable and /disable (delivery/admin.py does the work; the command line
does the same through cli/destinations.py).

Only a read token scoped ``*`` (CODEX_API_TOKENS) may use them: no token or
an unknown one is 401, a token scoped to some tenants 403, both before
anything is looked up; served only while reading is on (404 otherwise, as
/events). A name the sources file does not declare is 404
``unknown_destination``. Answers carry ``Cache-Control: no-store``.

The routes use a small pool of their own (at most ADMIN_POOL_MAX
connections per worker, opened when first used), so an operator's query
never waits behind ingest for a connection, nor ingest behind it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import asyncpg
import orjson
from aiohttp import web
from aiohttp.web_urldispatcher import _default_expect_handler as _aiohttp_expect_handler

from codex_ingest.delivery.admin import (
    DestinationAdmin,
    StatusFilter,
    decode_cursor,
    parse_limit,
    parse_replay,
    parse_tenant,
)
from codex_ingest.errors import Forbidden, InvalidJSON
from codex_ingest.storage.dberrors import translated
from codex_ingest.storage.pool import create_pool
from codex_ingest.web.appkeys import METRICS, QUERIES, READ_AUTH, SETTINGS
from codex_ingest.web.body import BODY_BUDGET, expectation_refusal, read_body
from codex_ingest.web.every_request import REQUEST_ID_HEADER, request_id
from codex_ingest.web.responses import json_response

ADMIN = web.AppKey("destination_admin", DestinationAdmin)
ADMIN_POOL = web.AppKey("destination_admin_pool", asyncpg.Pool)
ADMIN_POOL_MAX = 2
# The largest body these routes take (a replay's {"since": ..., "tenant": ...} is tiny).
ADMIN_BODY_LIMIT = 16 * 1024
NO_STORE = {"Cache-Control": "no-store"}


def setup_destinations(app: web.Application) -> None:
    """What the routes need: the declared destinations and a pool of their own."""
    settings = app[SETTINGS]
    declared = settings.source_table.destinations if settings.source_table is not None else {}
    app[ADMIN] = DestinationAdmin(app[QUERIES], declared)
    app.cleanup_ctx.append(_admin_pool)


async def _admin_pool(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    # min 0: no connection is opened until an operator asks something.
    pool = await create_pool(replace(settings, db_pool_min=0, db_pool_max=ADMIN_POOL_MAX))
    app[ADMIN_POOL] = pool
    try:
        yield
    finally:
        await pool.close()


def _operator(request: web.Request) -> DestinationAdmin:
    """401 without a known token, 403 for one scoped to some tenants: operating a
    destination touches every tenant's deliveries."""
    if request.app[READ_AUTH].scope(request.headers.get("Authorization")) is not None:
        raise Forbidden("only a token scoped * (every tenant) may read or operate destinations")
    return request.app[ADMIN]


@asynccontextmanager
async def admin_connection(request: web.Request) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the operators' own pool (ADMIN_POOL), database errors translated once.
    Also the console's (a sub-application: hence config_dict)."""
    settings = request.config_dict[SETTINGS]
    with translated(settings.retry_after_seconds, request.config_dict[METRICS].count_db_error):
        async with request.config_dict[ADMIN_POOL].acquire(timeout=settings.db_connect_timeout) as conn:
            yield conn


async def _body(request: web.Request) -> bytes:
    settings = request.app[SETTINGS]
    return await read_body(request, ADMIN_BODY_LIMIT, settings.body_read_timeout)


async def continue_small(request: web.Request) -> web.StreamResponse | None:
    """``Expect: 100-continue`` on these routes: invited only within ADMIN_BODY_LIMIT."""
    refused = expectation_refusal(request, ADMIN_BODY_LIMIT, request.app.get(BODY_BUDGET))
    if refused is not None:
        refused.headers[REQUEST_ID_HEADER] = request_id(request)  # answered before the handler and its wrapper
        return refused
    await _aiohttp_expect_handler(request)
    return None


async def list_destinations(request: web.Request) -> web.Response:
    admin = _operator(request)
    async with admin_connection(request) as conn:
        found = await admin.overview(conn)
    return json_response({"destinations": found}, headers=NO_STORE)


async def destination_attempts(request: web.Request) -> web.Response:
    admin = _operator(request)
    name = request.match_info["name"]
    admin.spec(name)  # 404 before the parameters are judged
    query = request.query
    status = StatusFilter.parse(query.get("status"))
    tenant = parse_tenant(query.get("tenant"))
    limit = parse_limit(query.get("limit"))
    before = decode_cursor(query.get("after"))
    async with admin_connection(request) as conn:
        page = await admin.attempts(conn, name, status=status, tenant=tenant, limit=limit, before=before)
    return json_response(page, headers=NO_STORE)


async def replay(request: web.Request) -> web.Response:
    admin = _operator(request)
    name = request.match_info["name"]
    admin.spec(name)
    body = await _body(request)
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidJSON('the body must be a JSON object: {"since": "<RFC 3339 time>", "tenant": "<optional>"}') \
            from None
    since, tenant = parse_replay(document)
    async with admin_connection(request) as conn:
        count = await admin.replay(conn, name, since, tenant)
    return json_response({"replayed": count}, status=202, headers=NO_STORE)


async def retry(request: web.Request) -> web.Response:
    admin = _operator(request)
    name = request.match_info["name"]
    admin.spec(name)
    await _body(request)  # none is needed; one is read within the limit and ignored
    async with admin_connection(request) as conn:
        count = await admin.retry(conn, name)
    return json_response({"retried": count}, status=202, headers=NO_STORE)


async def enable(request: web.Request) -> web.Response:
    return await _switch(request, "enable")


async def disable(request: web.Request) -> web.Response:
    return await _switch(request, "disable")


async def _switch(request: web.Request, action: str) -> web.Response:
    admin = _operator(request)
    name = request.match_info["name"]
    admin.spec(name)
    await _body(request)  # none is needed; one is read within the limit and ignored
    async with admin_connection(request) as conn:
        answer = await (admin.enable if action == "enable" else admin.disable)(conn, name)
    return json_response(answer, headers=NO_STORE)
