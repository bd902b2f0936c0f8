"""The bound form of the service's own scheme (issue 18, C): ``scheme =
"hmac-sha256-bound"``, what a declared source gets without a scheme, signs the
time, tenant, route and Idempotency-Key with the body, so a captured request
cannot be sent under another tenant, source, route or key, nor after
tolerance_seconds. The body-only form stays, named as such."""

from __future__ import annotations

import hashlib
import hmac
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from codex_ingest.intake.sources import parse_sources
from tests.cli import run_cli
from tests.helpers import assert_error, sign, stored
from tests.live import Live, serve
from tests.provider_helpers import FakeClock

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_790_000_000
SECRET = "orders-secret-0123456789"
SOURCES = f"""
[sources.orders]                  # no scheme: hmac-sha256-bound
secrets = ["{SECRET}"]

[sources.refunds]                 # the same secret, another source
scheme = "hmac-sha256-bound"
secrets = ["{SECRET}"]
tolerance_seconds = 60

[sources.legacy]
scheme = "hmac-sha256-body"
secrets = ["{SECRET}"]

[sources.seed]                    # the name sources files used before the bound form
scheme = "hmac-sha256"
secrets = ["{SECRET}"]
"""


def bound(body: bytes, *, tenant: str, route: str, key: str = "", t: int = NOW, secret: str = SECRET) -> str:
    """X-Signature of the bound form, written out from docs/providers.md."""
    signed = f"{t}\n{tenant}\n{route}\n{key}\n".encode() + body
    return f"t={t},v2=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def request(body: bytes, signature: str, tenant: str | None = "shop-1", key: str | None = "evt_1") -> dict[str, str]:
    out = {"Content-Type": "application/json", "X-Signature": signature}
    if tenant is not None:
        out["X-Tenant-Id"] = tenant
    if key is not None:
        out["Idempotency-Key"] = key
    return out


@pytest.fixture
async def client(provider_client):
    return await provider_client(SOURCES, clock=FakeClock(NOW))


def test_a_source_declared_without_a_scheme_is_bound() -> None:
    config = parse_sources(SOURCES, {})
    assert config.schemes == {"orders": "hmac-sha256-bound", "refunds": "hmac-sha256-bound",
                              "legacy": "hmac-sha256-body", "seed": "hmac-sha256"}
    assert (config.sources["orders"].tolerance_seconds, config.sources["refunds"].tolerance_seconds) == (300, 60)


async def test_a_captured_request_is_stored_once_and_cannot_be_sent_anywhere_else(client, db) -> None:
    body = b'[{"type":"order.created","order_id":"ord_1001"}]'  # an array: the batch route would take it too
    captured = request(body, bound(body, tenant="shop-1", route="/pos/orders/ingest", key="evt_1"))
    first = await client.post("/pos/orders/ingest", data=body, headers=captured)
    assert first.status == 201, await first.text()

    replays = {
        "another tenant": ("/pos/orders/ingest", {**captured, "X-Tenant-Id": "shop-2"}),
        "another tenant, in the query": ("/pos/orders/ingest?tenant=shop-2", {k: v for k, v in captured.items() if k != "X-Tenant-Id"}),
        "another source with the same secret": ("/pos/refunds/ingest", captured),
        "another key": ("/pos/orders/ingest", {**captured, "Idempotency-Key": "evt_2"}),
        "no key": ("/pos/orders/ingest", {k: v for k, v in captured.items() if k != "Idempotency-Key"}),
        "the batch route": ("/pos/orders/ingest/batch", captured),
    }
    for what, (url, sent) in replays.items():
        resp = await client.post(url, data=body, headers=sent)
        assert resp.status == 401, (what, await resp.text())
        assert (await resp.json())["error"] == "invalid_signature", what
    # The same request again, within the window, is what it was: a duplicate.
    again = await client.post("/pos/orders/ingest", data=body, headers=captured)
    assert again.status == 200 and (await again.json())["event_id"] == (await first.json())["event_id"]
    assert [(r["tenant_id"], r["source"], r["idempotency_key"]) for r in await stored(db)] == [("shop-1", "orders", "evt_1")]


async def test_the_signed_time_is_checked_against_the_tolerance(client, db) -> None:
    body = b'{"n":1}'
    for offset, key in ((-300, "edge-past"), (300, "edge-future")):
        sig = bound(body, tenant="shop-1", route="/pos/orders/ingest", key=key, t=NOW + offset)
        assert (await client.post("/pos/orders/ingest", data=body, headers=request(body, sig, key=key))).status == 201
    for offset in (-301, 301):
        sig = bound(body, tenant="shop-1", route="/pos/orders/ingest", key="late", t=NOW + offset)
        await assert_error(await client.post("/pos/orders/ingest", data=body, headers=request(body, sig, key="late")),
                           401, "invalid_signature")
    sig = bound(body, tenant="shop-1", route="/pos/refunds/ingest", key="r", t=NOW - 61)  # refunds: 60 s
    await assert_error(await client.post("/pos/refunds/ingest", data=body, headers=request(body, sig, key="r")),
                       401, "invalid_signature")
    assert len(await stored(db)) == 2


@pytest.mark.parametrize("make", [
    lambda body: sign(body, SECRET),                                             # the body-only form
    lambda body: bound(body, tenant="shop-1", route="/pos/orders/ingest", key="evt_1").replace("v2=", "v1="),
    lambda body: bound(body, tenant="shop-1", route="/pos/orders/ingest", key="evt_1").split(",")[1],  # no t
    lambda body: bound(body, tenant="shop-1", route="/pos/orders/ingest", key="evt_1").replace(f"t={NOW}", "t=soon"),
    lambda body: f"t={NOW},t={NOW}," + bound(body, tenant="shop-1", route="/pos/orders/ingest", key="evt_1").split(",")[1],
    lambda body: f"t={NOW},v2=" + "z" * 64,
    lambda body: f"t={NOW},v2=",
    lambda body: "",
], ids=["body-only", "v1", "no-t", "t-not-a-number", "t-twice", "v2-not-hex", "v2-empty", "empty"])
async def test_anything_but_the_bound_form_is_401(client, db, make) -> None:
    body = b'{"n":1}'
    resp = await client.post("/pos/orders/ingest", data=body, headers=request(body, make(body)))
    doc = await assert_error(resp, 401, "invalid_signature")
    assert "t=" in doc["detail"] or "missing" in doc["detail"] or "does not match" in doc["detail"]
    assert await stored(db) == []


async def test_a_sender_rotating_may_send_two_signatures(client, db) -> None:
    body = b'{"n":1}'
    good = bound(body, tenant="shop-1", route="/pos/orders/ingest", key="evt_1")
    other = bound(body, tenant="shop-1", route="/pos/orders/ingest", key="evt_1", secret="next-secret")
    two = f"{other},{good.split(',')[1]}"
    assert (await client.post("/pos/orders/ingest", data=body, headers=request(body, two))).status == 201


async def test_a_batch_signs_its_own_route(client, db) -> None:
    body = orjson.dumps([{"event_id": "a"}, {"event_id": "b"}])
    signed = bound(body, tenant="shop-1", route="/pos/orders/ingest/batch")
    resp = await client.post("/pos/orders/ingest/batch", data=body, headers=request(body, signed, key=None))
    assert resp.status == 200 and (await resp.json())["counts"]["accepted"] == 2
    other_tenant = await client.post("/pos/orders/ingest/batch", data=body,
                                     headers=request(body, signed, tenant="shop-2", key=None))
    await assert_error(other_tenant, 401, "invalid_signature")
    assert len(await stored(db)) == 2


@pytest.mark.parametrize("source", ["legacy", "seed"])
async def test_the_body_only_form_signs_the_body_alone(client, db, source) -> None:
    # What it does not protect against (docs/security.md): the same request under
    # another tenant or key is stored again.
    body = b'{"n":1}'
    for tenant in ("shop-1", "shop-2"):
        resp = await client.post(f"/pos/{source}/ingest", data=body, headers=request(body, sign(body, SECRET), tenant=tenant))
        assert resp.status == 201
    bound_form = bound(body, tenant="shop-1", route=f"/pos/{source}/ingest", key="evt_1")
    await assert_error(await client.post(f"/pos/{source}/ingest", data=body, headers=request(body, bound_form)),
                       401, "invalid_signature")
    assert len(await stored(db)) == 2


# --- the documented example and the smoke check, against a real serve ------------------

LIVE_SOURCES = """
strict_sources = true

[sources.orders]
secrets = ["env:ORDERS_SECRET"]

[sources.smoke]
scheme = "hmac-sha256-bound"
secrets = ["env:SMOKE_SECRET"]

[sources.smoke-body]
scheme = "hmac-sha256-body"
secrets = ["env:SMOKE_SECRET"]
"""
# The secret docs/providers.md's example signs with.
DOC_SECRET = "orders-secret-0123456789"
SMOKE_SECRET = "smoke-secret-0123456789"


@pytest.fixture(scope="module")
def live(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Live, Path]]:
    sources = tmp_path_factory.mktemp("bound") / "sources.toml"
    sources.write_text(LIVE_SOURCES)
    with serve(database_url, CODEX_SOURCES=str(sources), ORDERS_SECRET=DOC_SECRET, SMOKE_SECRET=SMOKE_SECRET) as service:
        yield service, sources


def providers_example() -> str:
    text = (ROOT / "docs" / "providers.md").read_text()
    section = text.split("\n## hmac-sha256-bound\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 1, "one shell example in the section"
    return blocks[0]


def test_the_providers_page_example_is_answered_201(live) -> None:
    service, _ = live
    script = providers_example().replace("http://127.0.0.1:8080", service.url)
    assert f"secret={DOC_SECRET}" in script
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "HTTP/1.1 201" in result.stdout, result.stdout


@pytest.mark.parametrize("source", ["smoke", "smoke-body"])
def test_smoke_signs_a_declared_source_in_its_own_form(live, source: str) -> None:
    service, sources = live
    result = run_cli("smoke", "--url", service.url, "--sources", str(sources), "--source", source,
                     env={"SMOKE_SECRET": SMOKE_SECRET})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "401 invalid_signature" in result.stdout  # its wrong signature is well-formed, and refused
    assert SMOKE_SECRET not in result.stdout + result.stderr
