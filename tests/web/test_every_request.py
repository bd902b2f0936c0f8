"""What every request passes, as a wrapper of each route's handler rather
than a middleware (web/every_request.py): no middleware anywhere, so aiohttp
calls each handler directly; and what no route matches (a 404, a 405, in the
application or in the console) is still answered in the JSON shape, with a
request id, the console's headers where it is the console's, and counted
under the metrics' unmatched path."""

from __future__ import annotations

from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from codex_ingest.settings import ReadToken
from codex_ingest.telemetry.http_metrics import UNMATCHED_PATH
from codex_ingest.web.console.guard import SECURITY_HEADERS
from tests.helpers import READ_TOKEN, assert_error

TOKENS = (ReadToken(READ_TOKEN, None),)


def every_app(app: web.Application) -> list[web.Application]:
    apps = [app]
    for resource in app.router.resources():
        sub = getattr(resource, "_app", None)
        if isinstance(sub, web.Application):
            apps.extend(every_app(sub))
    return apps


async def test_no_application_has_a_middleware_so_handlers_are_called_directly(make_client, db) -> None:
    client = await make_client(api_tokens=TOKENS)  # the console on: the sub-application too
    apps = every_app(client.server.app)
    assert len(apps) == 2
    assert [list(app.middlewares) for app in apps] == [[], []]
    assert client.server.app._run_middlewares is False  # aiohttp's own per-app layer is skipped too
    assert (await client.get("/healthz")).status == 200


async def test_an_unknown_path_and_a_known_one_with_another_method(make_client, db) -> None:
    client = await make_client(api_tokens=TOKENS)
    missing = await client.get("/nowhere/at/all")
    await assert_error(missing, 404, "not_found")
    wrong = await client.delete("/events")
    await assert_error(wrong, 405, "method_not_allowed")
    assert wrong.headers["Allow"] == "GET"
    assert missing.headers["X-Request-Id"] and wrong.headers["X-Request-Id"]


async def test_the_consoles_unknown_pages_are_json_errors_with_its_headers(make_client, db) -> None:
    client = await make_client(api_tokens=TOKENS)
    missing = await client.get("/console/nowhere")
    await assert_error(missing, 404, "not_found")
    wrong = await client.get("/console/signout")  # a POST-only page
    await assert_error(wrong, 405, "method_not_allowed")
    assert wrong.headers["Allow"] == "POST"
    for resp in (missing, wrong):
        assert resp.headers["X-Request-Id"]
        for name, value in SECURITY_HEADERS.items():
            assert resp.headers.get(name) == value, name
    bare = await client.get("/console", allow_redirects=False)
    assert (bare.status, bare.headers["Location"]) == (308, "/console/")


async def test_what_no_route_matched_is_counted_under_the_unmatched_path(make_client, db) -> None:
    client = await make_client(api_tokens=TOKENS)
    for path in ("/a", "/b/c", "/console/d"):
        assert (await client.get(path)).status == 404
    text = await (await client.get("/metrics")).text()
    responses = [s for family in text_string_to_metric_families(text) for s in family.samples
                 if s.name == "aiohttp_responses_total"]
    assert sum(s.value for s in responses
               if s.labels["path_template"] == UNMATCHED_PATH and s.labels["status_code"] == "404") == 3
    assert not any(s.labels["path_template"] in ("/a", "/b/c", "/console/d") for s in responses)
