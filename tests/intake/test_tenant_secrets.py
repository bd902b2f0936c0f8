"""Secrets per tenant for the service's own schemes (issue 18, C): with
``[sources.NAME.tenants]``, a request for tenant T is verified with T's
secrets alone, so one tenant's secret cannot write into another tenant at all;
a tenant not listed gets exactly what a wrong signature gets (401), so the
answer does not tell which tenants exist."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from codex_ingest.intake.sources import parse_sources
from tests.cli import run_cli
from tests.helpers import sign, stored
from tests.live import Live, serve
from tests.provider_helpers import FakeClock

NOW = 1_790_000_000
SOURCES = """
[sources.orders]                      # hmac-sha256-bound
[sources.orders.tenants]
shop-1 = ["env:SHOP1_SECRET"]
shop-2 = ["shop2-new-secret", "shop2-old-secret"]

[sources.kiosk]
scheme = "hmac-sha256-body"
[sources.kiosk.tenants]
shop-1 = ["env:SHOP1_SECRET"]
shop-2 = ["shop2-new-secret"]
"""
SHOP1 = "shop1-secret-0123456789"
ENV = {"SHOP1_SECRET": SHOP1}


def bound(body: bytes, secret: str, tenant: str, route: str = "/pos/orders/ingest", key: str = "") -> str:
    signed = f"{NOW}\n{tenant}\n{route}\n{key}\n".encode() + body
    return f"t={NOW},v2=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def request(signature: str, tenant: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-Tenant-Id": tenant, "X-Signature": signature}


@pytest.fixture
async def client(provider_client):
    return await provider_client(SOURCES, ENV, clock=FakeClock(NOW))


def test_tenant_secrets_are_resolved_and_never_shown() -> None:
    config = parse_sources(SOURCES, ENV)
    orders = config.sources["orders"]
    assert orders.tenants == {"shop-1": (SHOP1,), "shop-2": ("shop2-new-secret", "shop2-old-secret")}
    assert orders.secrets == ()
    assert SHOP1 not in repr(config) and "shop2-new-secret" not in repr(config)


async def test_each_tenant_signs_with_its_own_secrets(client, db) -> None:
    body = b'{"n":1}'
    for tenant, secret in (("shop-1", SHOP1), ("shop-2", "shop2-new-secret"), ("shop-2", "shop2-old-secret")):
        resp = await client.post("/pos/orders/ingest", data=body, headers=request(bound(body, secret, tenant), tenant))
        assert resp.status in (200, 201), await resp.text()  # any of the tenant's secrets (rotation)
    for tenant, secret in (("shop-1", SHOP1), ("shop-2", "shop2-new-secret")):
        kiosk = await client.post("/pos/kiosk/ingest", data=body, headers=request(sign(body, secret), tenant))
        assert kiosk.status == 201, await kiosk.text()
    assert sorted((r["tenant_id"], r["source"]) for r in await stored(db)) == [
        ("shop-1", "kiosk"), ("shop-1", "orders"), ("shop-2", "kiosk"), ("shop-2", "orders")]


async def test_one_tenants_secret_cannot_write_into_another_tenant(client, db) -> None:
    # shop-1's secret holder signs, correctly in every other way, requests for shop-2.
    body = b'{"n":1}'
    attempts = [
        ("/pos/orders/ingest", request(bound(body, SHOP1, "shop-2"), "shop-2"), body),
        ("/pos/kiosk/ingest", request(sign(body, SHOP1), "shop-2"), body),  # even the body-only form
    ]
    batch = orjson.dumps([{"event_id": "a"}])
    attempts.append(("/pos/kiosk/ingest/batch", request(sign(batch, SHOP1), "shop-2"), batch))
    attempts.append(("/pos/orders/ingest/batch",
                     request(bound(batch, SHOP1, "shop-2", route="/pos/orders/ingest/batch"), "shop-2"), batch))
    for url, sent, data in attempts:
        resp = await client.post(url, data=data, headers=sent)
        assert resp.status == 401, (url, await resp.text())
    assert await stored(db) == []


async def test_a_tenant_not_listed_gets_what_a_wrong_signature_gets(client, db) -> None:
    body = b'{"n":1}'
    wrong = await client.post("/pos/orders/ingest", data=body, headers=request(bound(body, "guess", "shop-1"), "shop-1"))
    unlisted = await client.post("/pos/orders/ingest", data=body, headers=request(bound(body, SHOP1, "shop-9"), "shop-9"))
    assert (wrong.status, await wrong.json()) == (unlisted.status, await unlisted.json())
    assert unlisted.status == 401 and (await unlisted.json())["error"] == "invalid_signature"
    kiosk = await client.post("/pos/kiosk/ingest", data=body, headers=request(sign(body, SHOP1), "shop-9"))
    assert kiosk.status == 401
    assert await stored(db) == []


# --- smoke, with a tenants table ---------------------------------------------------------

@pytest.fixture(scope="module")
def live(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Live, Path]]:
    sources = tmp_path_factory.mktemp("tenants") / "sources.toml"
    sources.write_text(SOURCES)
    with serve(database_url, CODEX_SOURCES=str(sources), **ENV) as service:
        yield service, sources


def test_smoke_signs_with_the_tenants_own_secret_and_refuses_an_unlisted_tenant(live) -> None:
    service, sources = live
    for source in ("orders", "kiosk"):
        ok = run_cli("smoke", "--url", service.url, "--sources", str(sources), "--source", source, "--tenant", "shop-1",
                     env=ENV)
        assert ok.returncode == 0, ok.stdout + ok.stderr
    refused = run_cli("smoke", "--url", service.url, "--sources", str(sources), "--source", "orders", env=ENV)
    assert refused.returncode == 2 and refused.stdout == ""
    assert "--tenant smoke-check is not listed in [sources.orders.tenants]" in refused.stderr
    assert SHOP1 not in refused.stderr + ok.stdout + ok.stderr
