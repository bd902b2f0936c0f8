"""/healthz, /readyz and /metrics."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from codex_ingest import __version__
from codex_ingest.storage.dberrors import ERROR_CLASSES
from codex_ingest.telemetry.http_metrics import HttpMetrics
from codex_ingest.telemetry.metrics import MAX_SOURCE_LABELS, OTHER_SOURCE, OUTCOMES, ServiceMetrics
from tests.helpers import headers, sign

URL = "/pos/square/ingest"
BODY = b'{"k":"v"}'


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_healthz_and_readyz(client: TestClient) -> None:
    health = await client.get("/healthz")
    assert health.status == 200 and (await health.json())["status"] == "ok"
    ready = await client.get("/readyz")
    assert ready.status == 200 and (await ready.json())["status"] == "ready"


async def test_events_total_counts_every_outcome(client: TestClient, db) -> None:
    other = b'{"k":"other"}'
    key = {"Idempotency-Key": "m-1"}
    await client.post(URL, data=BODY, headers=headers(BODY, **key))                      # accepted
    await client.post(URL, data=BODY, headers=headers(BODY, **key))                      # duplicate
    await client.post(URL, data=other, headers=headers(other, **key))                    # conflict
    await client.post(URL, data=BODY, headers=headers(BODY, **{"X-Signature": sign(b"")}))  # signature
    await client.post(URL, data=BODY, headers=headers(BODY, tenant=None))                # input
    await client.post(URL, data=b"nope", headers=headers(b"nope"))                       # input
    found = samples(await (await client.get("/metrics")).text())

    def count(outcome: str) -> float:
        return found.get(("codex_ingest_events_total", (("outcome", outcome), ("source", "square"))), 0.0)

    assert count("accepted") == 1
    assert count("duplicate") == 1
    assert count("conflict") == 1
    assert count("rejected_signature") == 1
    assert count("rejected_input") == 2
    assert found[("codex_ingest_ingest_duration_seconds_count", (("outcome", "accepted"),))] == 1
    assert found[("codex_ingest_build_info", (("version", __version__),))] == 1
    assert found[("codex_ingest_db_pool_size", ())] >= 1
    assert ("codex_ingest_db_pool_in_use", ()) in found
    assert not any("tenant" in dict(labels) for _, labels in found)


async def test_http_metrics_hide_the_client_address_by_default(client: TestClient, db) -> None:
    await client.get("/healthz")
    text = await (await client.get("/metrics")).text()
    remotes = {dict(lbl).get("remote") for (n, lbl) in samples(text) if n.startswith("aiohttp_requests")}
    assert remotes == {"-"}


async def test_http_metrics_can_label_the_client_address(make_client, db) -> None:
    client = await make_client(metrics_remote_label=True)
    await client.get("/healthz")
    text = await (await client.get("/metrics")).text()
    remotes = {dict(lbl).get("remote") for (n, lbl) in samples(text) if n.startswith("aiohttp_requests")}
    assert remotes == {"127.0.0.1"}


async def test_http_metrics_count_statuses_as_answered(client: TestClient, db) -> None:
    await client.post(URL, data=BODY, headers=headers(BODY, tenant=None))
    text = await (await client.get("/metrics")).text()
    statuses = {
        dict(lbl)["status_code"]
        for (n, lbl) in samples(text)
        if n == "aiohttp_responses_total" and dict(lbl)["path_template"] == "/pos/{source}/ingest"
    }
    assert statuses == {"400"}


async def test_known_series_are_exported_at_zero_before_any_event(provider_client, db) -> None:
    toml = '[sources.shop]\nscheme = "shopify"\nsecrets = ["s"]\n[sources.pos]\nscheme = "hmac-sha256"\nsecrets = ["p"]\n'
    client = await provider_client(toml)
    found = samples(await (await client.get("/metrics")).text())
    # Every class dberrors.py names: its SQLSTATE classes, and the failures that carry none.
    assert set(ERROR_CLASSES) == {"08", "22", "25", "26", "40", "42", "53", "55", "57", "58", "XX",
                                  "connection", "timeout", "client_data"}
    errors = {dict(labels)["class"]: value for (name, labels), value in found.items() if name == "codex_ingest_db_errors_total"}
    assert errors == dict.fromkeys(ERROR_CLASSES, 0.0)
    events = {(dict(labels)["source"], dict(labels)["outcome"]): value
              for (name, labels), value in found.items() if name == "codex_ingest_events_total"}
    assert events == {(source, outcome): 0.0 for source in ("shop", "pos") for outcome in OUTCOMES}
    durations = {dict(labels)["outcome"]: value
                 for (name, labels), value in found.items() if name == "codex_ingest_ingest_duration_seconds_count"}
    assert durations == dict.fromkeys(OUTCOMES, 0.0)


async def test_a_source_seen_first_gets_every_outcome_at_once(client: TestClient, db) -> None:
    await client.post(URL, data=BODY, headers=headers(BODY))
    found = samples(await (await client.get("/metrics")).text())
    events = {dict(labels)["outcome"]: value for (name, labels), value in found.items()
              if name == "codex_ingest_events_total" and dict(labels)["source"] == "square"}
    assert events == {**dict.fromkeys(OUTCOMES, 0.0), "accepted": 1.0}


def test_declared_sources_take_their_label_slots_first() -> None:
    declared = [f"declared{i}" for i in range(10)]
    metrics = ServiceMetrics(CollectorRegistry(), sources=declared)
    for i in range(MAX_SOURCE_LABELS):
        metrics.record(f"src{i}", "accepted", 0.001)
    metrics.record(OTHER_SOURCE, "rejected_input", 0.001)  # an undeclared name under strict_sources: no slot of its own
    metrics.record("declared9", "accepted", 0.001)
    found = samples(metrics.exposition().decode())
    counts = {(dict(lbl)["source"], dict(lbl)["outcome"]): v for (n, lbl), v in found.items() if n == "codex_ingest_events_total"}
    labels = {source for source, _ in counts}
    assert labels == {*declared, *(f"src{i}" for i in range(MAX_SOURCE_LABELS - len(declared))), OTHER_SOURCE}
    assert counts[(OTHER_SOURCE, "accepted")] == len(declared) and counts[(OTHER_SOURCE, "rejected_input")] == 1
    assert counts[("declared9", "accepted")] == 1 and counts[("declared0", "accepted")] == 0
    # Every label has every outcome, and only those.
    assert set(counts) == {(source, outcome) for source in labels for outcome in OUTCOMES}


def test_source_labels_are_bounded() -> None:
    # Even sources whose requests verified: past MAX_SOURCE_LABELS, "_other".
    metrics = ServiceMetrics(CollectorRegistry())
    for i in range(MAX_SOURCE_LABELS + 50):
        metrics.record(f"src{i}", "accepted", 0.001)
    metrics.record("src0", "rejected_signature", 0.001)
    found = samples(metrics.exposition().decode())
    sources = {dict(lbl)["source"] for (n, lbl) in found if n == "codex_ingest_events_total"}
    assert len(sources) == MAX_SOURCE_LABELS + 1
    assert found[("codex_ingest_events_total", (("outcome", "accepted"), ("source", OTHER_SOURCE)))] == 50
    # A source with a label keeps it for every outcome.
    assert found[("codex_ingest_events_total", (("outcome", "rejected_signature"), ("source", "src0")))] == 1


async def test_http_metrics_count_every_request_through_the_cache(client: TestClient, db) -> None:
    # The label children are cached after the first request: later requests
    # must still be counted, timed, and leave nothing "in progress".
    for _ in range(3):
        assert (await client.get("/healthz")).status == 200
    assert (await client.get("/no/such/route")).status == 404
    found = samples(await (await client.get("/metrics")).text())
    health = (("method", "GET"), ("path_template", "/healthz"), ("remote", "-"), ("scheme", "http"))
    assert found[("aiohttp_requests_total", health)] == 3
    assert found[("aiohttp_responses_total", tuple(sorted((*health, ("status_code", "200")))))] == 3
    assert found[("aiohttp_request_duration_seconds_count", tuple(sorted((*health, ("status_code", "200")))))] == 3
    assert found[("aiohttp_requests_in_progress", health)] == 0
    unmatched = (("method", "GET"), ("path_template", "__not_matched__"), ("remote", "-"), ("scheme", "http"))
    assert found[("aiohttp_responses_total", tuple(sorted((*unmatched, ("status_code", "404")))))] == 1


async def test_http_metrics_count_an_exception_that_escapes() -> None:
    # Only reachable if a handler's exception gets past errors_as_json; the
    # middleware must still count it and re-raise it unchanged.
    registry = CollectorRegistry()
    metrics = HttpMetrics(registry, label_remote=False)

    async def teapot(request: web.Request) -> web.Response:
        raise web.HTTPServiceUnavailable()

    app = web.Application(middlewares=[metrics.middleware])
    app.router.add_get("/x", teapot)
    async with TestClient(TestServer(app)) as c:
        assert (await c.get("/x")).status == 503
    found = samples(generate_latest(registry).decode())
    labels = (("method", "GET"), ("path_template", "/x"), ("remote", "-"), ("scheme", "http"))
    assert found[("aiohttp_exceptions_total", tuple(sorted((*labels, ("exception_type", "HTTPServiceUnavailable")))))] == 1
    assert found[("aiohttp_responses_total", tuple(sorted((*labels, ("status_code", "503")))))] == 1
    assert found[("aiohttp_requests_in_progress", labels)] == 0
