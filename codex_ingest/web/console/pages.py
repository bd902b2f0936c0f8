"""The console's pages (docs/console.md). Reads use the operators' own
small pool (web/destinations.py ADMIN_POOL), never ingest's."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import asyncpg
import jinja2
import orjson
from aiohttp import web

from codex_ingest.delivery.config import ALL
from codex_ingest.errors import UnknownDestination
from codex_ingest.intake.checks import SOURCE_PATTERN, TENANT_PATTERN
from codex_ingest.storage.delivery import Cursor
from codex_ingest.telemetry.http_metrics import UNMATCHED_PATH
from codex_ingest.telemetry.metrics import OUTCOMES
from codex_ingest.web.appkeys import EVENT_LOG, QUERIES, READ_AUTH, SETTINGS
from codex_ingest.web.console.guard import guarded, served_over_https
from codex_ingest.web.console.sessions import COOKIE, LIFETIME_SECONDS, Operator, Sessions
from codex_ingest.web.destinations import ADMIN, admin_connection
from codex_ingest.web.every_request import UNMATCHED_NAME, UNMATCHED_ROUTE, unmatched

SESSIONS = web.AppKey("console_sessions", Sessions)
PAGE_SIZE = 50
# What of a body the event page shows; the download is always whole.
SHOWN_BODY_BYTES = 64 * 1024
SIGN_IN_FORM_LIMIT = 4096
_BEFORE = re.compile(r"([0-9]{1,20})\.([0-9]{1,19})")
_EVENT_ID = re.compile(r"[0-9]{1,19}")
_BIGINT_MAX = 2**63 - 1


def console_app(parent: web.Application, wrap: Callable[..., web.Handler]) -> web.Application:
    """The /console/ sub-application. Each handler is ``guarded`` (the security headers, no
    cross-site POST) and wrapped like every route (``wrap``: web/every_request.py)."""
    app = web.Application()
    app[SESSIONS] = Sessions(parent[QUERIES], parent[READ_AUTH])
    aiohttp_jinja2.setup(app, loader=jinja2.PackageLoader("codex_ingest.web.console", "templates"), autoescape=True)

    def page(handler: web.Handler, **options: Any) -> web.Handler:
        return wrap(guarded(handler), **options)

    app.router.add_get("/", page(home))
    app.router.add_get("/static/console.css", page(style_sheet))
    app.router.add_get("/signin", page(sign_in_page))
    app.router.add_post("/signin", page(sign_in))
    app.router.add_post("/signout", page(sign_out))
    app.router.add_get("/events", page(events_page))
    app.router.add_get("/events/{id}", page(event_page))
    app.router.add_get("/events/{id}/body", page(event_body))
    app.router.add_post("/events/{id}/retry", page(retry_event))
    app.router.add_get("/overview", page(overview_page))
    app.router.add_get("/destinations", page(destinations_page))
    app.router.add_get("/destinations/{name}", page(destination_page))
    app.router.add_post("/destinations/{name}/{action:retry|enable|disable|replay}", page(destination_action))
    app.router.add_route("*", UNMATCHED_ROUTE, page(unmatched, path_template=UNMATCHED_PATH), name=UNMATCHED_NAME)
    return app


async def _operator(request: web.Request) -> Operator:
    """Who is signed in; a redirect to the sign-in page otherwise."""
    async with admin_connection(request) as conn:
        who = await request.app[SESSIONS].operator(conn, request.cookies.get(COOKIE))
    if who is None:
        raise web.HTTPSeeOther("/console/signin")
    return who


_STYLE_SHEET = (Path(__file__).parent / "static" / "console.css").read_bytes()


async def style_sheet(request: web.Request) -> web.StreamResponse:
    return web.Response(body=_STYLE_SHEET, content_type="text/css")


async def home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/console/events")


async def sign_in_page(request: web.Request) -> web.StreamResponse:
    return aiohttp_jinja2.render_template("signin.html", request, {"failed": False})


async def sign_in(request: web.Request) -> web.StreamResponse:
    if request.content_length is not None and request.content_length > SIGN_IN_FORM_LIMIT:
        raise web.HTTPRequestEntityTooLarge(max_size=SIGN_IN_FORM_LIMIT, actual_size=request.content_length)
    form = await request.post()
    token = form.get("token")
    session = None
    if isinstance(token, str) and token.strip():
        async with admin_connection(request) as conn:
            session = await request.app[SESSIONS].sign_in(conn, token.strip())
    if session is None:
        return aiohttp_jinja2.render_template("signin.html", request, {"failed": True}, status=401)
    response = web.HTTPSeeOther("/console/events")
    response.set_cookie(COOKIE, session, path="/console", max_age=LIFETIME_SECONDS, httponly=True,
                        samesite="Strict", secure=served_over_https(request))
    raise response


async def sign_out(request: web.Request) -> web.StreamResponse:
    async with admin_connection(request) as conn:
        await request.app[SESSIONS].sign_out(conn, request.cookies.get(COOKIE))
    response = web.HTTPSeeOther("/console/signin")
    response.del_cookie(COOKIE, path="/console")
    raise response


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise web.HTTPBadRequest(text="from and to are times like 2026-11-29T12:00") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _choice(value: str | None, pattern: re.Pattern[str], what: str) -> str | None:
    if not value:
        return None
    if not pattern.match(value):
        raise web.HTTPBadRequest(text=f"{what} is not a valid name")
    return value


async def events_page(request: web.Request) -> web.StreamResponse:
    who = await _operator(request)
    query = request.query
    tenant = _choice(query.get("tenant"), TENANT_PATTERN, "tenant")
    source = _choice(query.get("source"), SOURCE_PATTERN, "source")
    since, until = _time(query.get("from")), _time(query.get("to"))
    q = (query.get("q") or "").strip()
    event_id = int(q) if _EVENT_ID.fullmatch(q) and int(q) <= _BIGINT_MAX else None
    key = q if q and event_id is None else None
    before_xact, before_id = None, None
    if query.get("before"):
        match = _BEFORE.fullmatch(query["before"])
        if match is None:
            raise web.HTTPBadRequest(text="before is a page link's, as given")
        before_xact, before_id = match.group(1), min(int(match.group(2)), _BIGINT_MAX)
    sql = request.config_dict[QUERIES].sql
    async with admin_connection(request) as conn:
        rows = await conn.fetch(
            sql("console_events"),
            None if who.tenants is None else sorted(who.tenants),   # $1 tenants the token may read
            tenant, source, since, until,                           # $2 tenant, $3 source, $4 from, $5 to
            before_xact, before_id, PAGE_SIZE + 1,                  # $6-$7 before, $8 limit
            event_id, key,                                          # $9 event id, $10 key
        )
        page = rows[:PAGE_SIZE]
        states: dict[int, list[tuple[str, str]]] = {}
        for row in await conn.fetch(sql("console_event_deliveries"), [r["id"] for r in page]):  # $1 ids
            states.setdefault(row["event_id"], []).append((row["destination"], row["state"]))
    filters = {k: v for k, v in (("tenant", tenant), ("source", source), ("from", query.get("from")),
                                  ("to", query.get("to")), ("q", q)) if v}
    older = None
    if len(rows) > PAGE_SIZE:
        last = page[-1]
        older = {**filters, "before": f"{last['xact']}.{last['id']}"}
    return aiohttp_jinja2.render_template("events.html", request, {
        "events": page, "states": states, "filters": filters, "older": older, "operator": who,
    })


async def _event(request: web.Request) -> tuple[Operator, asyncpg.Record]:
    who = await _operator(request)
    text = request.match_info["id"]
    if not _EVENT_ID.fullmatch(text) or int(text) > _BIGINT_MAX:
        raise web.HTTPNotFound()
    async with admin_connection(request) as conn:
        # $1 event id, $2 tenants the token may read
        row = await conn.fetchrow(request.config_dict[QUERIES].sql("console_event"), int(text),
                                  None if who.tenants is None else sorted(who.tenants))
    if row is None:  # none, or another tenant's: the same answer
        raise web.HTTPNotFound()
    return who, row


def _shown_body(body: bytes) -> dict[str, Any]:
    shown = body[:SHOWN_BODY_BYTES]
    try:
        text, utf8 = shown.decode("utf-8"), True
    except UnicodeDecodeError:
        text, utf8 = shown.decode("utf-8", "backslashreplace"), False
    pretty = None
    if len(body) <= SHOWN_BODY_BYTES:
        try:
            pretty = orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2).decode()
        except orjson.JSONDecodeError:
            pretty = None
    return {"text": text, "utf8": utf8, "truncated": len(body) > SHOWN_BODY_BYTES, "pretty": pretty}


async def event_page(request: web.Request) -> web.StreamResponse:
    who, row = await _event(request)
    sql = request.config_dict[QUERIES].sql
    async with admin_connection(request) as conn:
        attempts = await conn.fetch(sql("console_event_attempts"), row["id"])  # $1 event id
        states = {r["destination"]: r["state"] for r in await conn.fetch(sql("console_event_deliveries"), [row["id"]])}
    table = request.config_dict[SETTINGS].source_table
    declared = sorted(table.destinations) if table is not None else []
    body = bytes(row["body"])
    headers = orjson.loads(row["headers"]) if row["headers"] is not None else None
    return aiohttp_jinja2.render_template("event.html", request, {
        "cursor": _cursor_after(row),
        "event": row, "size": len(body), "sha256": bytes(row["body_sha256"]).hex(),
        "computed_sha256": hashlib.sha256(body).hexdigest(), "headers": headers if isinstance(headers, dict) else None,
        "body": _shown_body(body), "attempts": attempts, "operator": who,
        "deliveries": [(name, states.get(name)) for name in declared], "may_change": who.tenants is None,
    })


def _cursor_after(row: asyncpg.Record) -> dict[str, str] | None:
    """The read API's cursors that continue just after this event: what a read that ended on it
    would have given (sql/read.sql), one for its tenant's read and one for the combined feed.
    None while the event is above the delivery horizon: a cursor there could skip a late commit."""
    xact, horizon = int(row["xact"]), int(row["horizon"])
    if xact >= horizon:
        return None
    after = Cursor(xact, int(row["id"]), horizon)
    return {"tenant": after.encode(), "feed": after.encode(feed=True)}


async def event_body(request: web.Request) -> web.StreamResponse:
    _, row = await _event(request)
    return web.Response(body=bytes(row["body"]), content_type="application/octet-stream", headers={
        "Content-Disposition": f'attachment; filename="event-{int(row["id"])}.bin"'})


# -- destinations: every change needs a token scoped *, as the HTTP API does --------------------


def _every_tenant(who: Operator) -> None:
    if who.tenants is not None:
        raise web.HTTPForbidden(text="only a token that reads every tenant may change deliveries")


def _destination(request: web.Request, name: str) -> Any:
    try:
        return request.config_dict[ADMIN].spec(name)
    except UnknownDestination:
        raise web.HTTPNotFound() from None


async def _audit(conn: asyncpg.Connection, request: web.Request, who: Operator, action: str, destination: str,
                 detail: dict[str, Any]) -> None:
    # $1 actor, $2 action, $3 destination, $4 detail
    await conn.execute(request.config_dict[QUERIES].sql("console_audit_write"), who.name, action, destination,
                       orjson.dumps(detail).decode())


async def destinations_page(request: web.Request) -> web.StreamResponse:
    who = await _operator(request)
    _every_tenant(who)
    async with admin_connection(request) as conn:
        listed = await request.config_dict[ADMIN].overview(conn)
    return aiohttp_jinja2.render_template("destinations.html", request, {"destinations": listed, "operator": who})


async def destination_page(request: web.Request) -> web.StreamResponse:
    who = await _operator(request)
    _every_tenant(who)
    name = request.match_info["name"]
    _destination(request, name)
    async with admin_connection(request) as conn:
        shown = next(d for d in await request.config_dict[ADMIN].overview(conn) if d["name"] == name)
        audit = await conn.fetch(request.config_dict[QUERIES].sql("console_audit_of"), name, 50)  # $1 name, $2 limit
    return aiohttp_jinja2.render_template("destination.html", request, {
        "destination": shown, "audit": audit, "operator": who, "confirm": None})


async def destination_action(request: web.Request) -> web.StreamResponse:
    who = await _operator(request)
    _every_tenant(who)
    name, action = request.match_info["name"], request.match_info["action"]
    spec = _destination(request, name)
    admin = request.config_dict[ADMIN]
    form = await request.post()
    detail: dict[str, Any] = {}
    async with admin_connection(request) as conn:
        if action == "replay":
            since = _time(str(form.get("since") or ""))
            if since is None:
                raise web.HTTPBadRequest(text="a replay needs a time to start from")
            tenant = _choice(str(form.get("tenant") or ""), TENANT_PATTERN, "tenant")
            if form.get("confirm") != "yes":
                count = await conn.fetchval(
                    request.config_dict[QUERIES].sql("console_replay_count"), since, tenant,
                    None if spec.sources == (ALL,) else list(spec.sources),
                    None if spec.tenants == (ALL,) else list(spec.tenants),
                )  # $1 since, $2 tenant, $3 sources, $4 tenants
                shown = next(d for d in await admin.overview(conn) if d["name"] == name)
                audit = await conn.fetch(request.config_dict[QUERIES].sql("console_audit_of"), name, 50)
                return aiohttp_jinja2.render_template("destination.html", request, {
                    "destination": shown, "audit": audit, "operator": who,
                    "confirm": {"count": count, "since": form.get("since"), "tenant": tenant or ""}})
            async with conn.transaction():
                detail = {"since": since.isoformat(), "tenant": tenant,
                          "replayed": await admin.replay(conn, name, since, tenant)}
                await _audit(conn, request, who, action, name, detail)
        else:
            async with conn.transaction():
                if action == "retry":
                    detail = {"retried": await admin.retry(conn, name)}
                elif action == "enable":
                    await admin.enable(conn, name)
                else:
                    await admin.disable(conn, name)
                await _audit(conn, request, who, action, name, detail)
    raise web.HTTPSeeOther(f"/console/destinations/{name}")


async def retry_event(request: web.Request) -> web.StreamResponse:
    who, row = await _event(request)
    _every_tenant(who)
    form = await request.post()
    name = str(form.get("destination") or "")
    _destination(request, name)
    async with admin_connection(request) as conn, conn.transaction():
        # $1 destination, $2 event id
        await conn.fetchval(request.config_dict[QUERIES].sql("console_retry_event"), name, row["id"])
        await _audit(conn, request, who, "retry_event", name, {"event_id": row["id"]})
    raise web.HTTPSeeOther(f"/console/events/{row['id']}")


async def overview_page(request: web.Request) -> web.StreamResponse:
    """Per source, the last hour's and day's requests by outcome, the newest refusals, the read
    horizon's lag and the oldest event. Counts are every tenant's: a token reading every tenant only."""
    who = await _operator(request)
    _every_tenant(who)
    sql = request.config_dict[QUERIES].sql
    async with admin_connection(request) as conn:
        counts = await conn.fetch(sql("console_overview"))
        refused = await conn.fetch(sql("console_recent_rejections"), 50)  # $1 limit
        oldest = await conn.fetchval(sql("console_oldest_event"))
    lag = await request.config_dict[EVENT_LOG].horizon_lag()
    sources: dict[str, dict[str, tuple[int, int]]] = {}
    for row in counts:
        sources.setdefault(row["source"], {})[row["outcome"]] = (int(row["hour"]), int(row["day"]))
    return aiohttp_jinja2.render_template("overview.html", request, {
        "sources": sources, "outcomes": OUTCOMES, "refused": refused, "oldest": oldest, "lag": lag,
        "operator": who})
