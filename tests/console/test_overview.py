"""The console's overview: every worker's ingest outcomes per source, added up
in PostgreSQL, the last hour and day; the newest refusals, bounded and never
holding a body or a secret; a token reading every tenant only."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from codex_ingest.telemetry.metrics import REFUSED_KEPT
from codex_ingest.web import background
from codex_ingest.web.app import create_app
from tests.console.test_pages import SCOPED, TOKENS, post, sign_in
from tests.helpers import headers, until


@pytest.fixture
async def console(aiohttp_client, settings, monkeypatch):
    monkeypatch.setattr(background, "OVERVIEW_FLUSH_SECONDS", 0.05)
    return await aiohttp_client(create_app(replace(settings, api_tokens=TOKENS)))


def cell(html: str, outcome: str) -> str | None:
    found = re.search(rf'<td data-outcome="{outcome}">([^<]*)</td>', html)
    return found.group(1) if found else None


async def test_counts_by_outcome_and_the_newest_refusals(console, db) -> None:
    for n in range(3):
        await post(console, n)
    again = await console.post("/pos/orders/ingest", data=b'{"n":0}',
                               headers=headers(b'{"n":0}', tenant="shop-a", **{"Idempotency-Key": "k-0"}))
    assert again.status == 200  # a duplicate
    forged = await console.post("/pos/orders/ingest", data=b'{"note": "hunter2"}',
                                headers={"Content-Type": "application/json", "X-Tenant-Id": "shop-a",
                                         "X-Signature": "sha256=" + "0" * 64, "Idempotency-Key": "forged"})
    assert forged.status == 401
    # A malformed tenant is a refusal too; what it named is not kept (it could be anything).
    hostile = await console.post("/pos/orders/ingest?tenant=%3Cb%3Ex", data=b"{}",
                                 headers={"Content-Type": "application/json", "Idempotency-Key": "h"})
    assert hostile.status == 400
    await sign_in(console)

    async def shown() -> str | None:
        html = await (await console.get("/console/overview")).text()
        counted = [cell(html, outcome) for outcome in ("accepted", "rejected_signature", "rejected_input")]
        return html if counted == ["3 / 3", "1 / 1", "1 / 1"] else None

    html = await until(shown, "the counts flushed and shown")
    assert cell(html, "duplicate") == "1 / 1"
    refused = html.split('id="refused"')[1]
    assert "rejected_signature" in refused
    assert "hunter2" not in html and "0000000000" not in html  # neither the body nor the signature
    assert "<td>shop-a</td>" in refused and "&lt;b&gt;x" not in refused and "<b>x" not in refused

    rows = await db.fetch("SELECT source, outcome, tenant FROM recent_rejections ORDER BY id")
    # "orders" had its label already (verified requests came for it): the refusal is counted there,
    # with the tenant the forged request named.
    assert [tuple(r) for r in rows] == [("orders", "rejected_signature", "shop-a"), ("orders", "rejected_input", None)]


async def test_a_scoped_token_does_not_see_every_tenants_counts(console, db) -> None:
    await sign_in(console, SCOPED)
    assert (await console.get("/console/overview")).status == 403


def test_refusals_kept_between_flushes_are_bounded() -> None:
    from prometheus_client import CollectorRegistry

    from codex_ingest.telemetry.metrics import ServiceMetrics

    metrics = ServiceMetrics(CollectorRegistry(), sources=(), db_error_classes=(), header_drop_reasons=(),
                             destinations=(), retention=False)
    for n in range(REFUSED_KEPT * 5):
        metrics.record(f"name-{n}", "rejected_signature", 0.001)
    refused = metrics.take_refused()
    assert len(refused) == REFUSED_KEPT and {r[1] for r in refused} == {"_other"}
    assert metrics.take_tally() == {("_other", "rejected_signature"): REFUSED_KEPT * 5}
    assert metrics.take_refused() == [] and metrics.take_tally() == {}
