"""Standard Webhooks signing of a delivery, checked by the ``standardwebhooks``
library (code we did not write), and the rule for which stored headers are
forwarded (codex_ingest/delivery/signing.py's docstring)."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict
from standardwebhooks import Webhook, WebhookVerificationError

from codex_ingest.delivery import signing, ssrf
from codex_ingest.intake.schemes.standard_webhooks import decode_secret

NEW = "whsec_" + base64.b64encode(b"the new key, 24 bytes!!!").decode()
OLD = "whsec_" + base64.b64encode(b"the old key").decode().rstrip("=")  # unpadded, as some senders give it
OTHER = "whsec_" + base64.b64encode(b"nobody's key at all").decode()
SECRETS = [NEW, OLD]
BODY = b'{"type":"order.created","order_id":"ord_1001","total":"12.50","note":"caf\xc3\xa9"}'
SHOPIFY = {
    "x-shopify-topic": "orders/create",
    "x-shopify-hmac-sha256": "XWmrwMey6OsLMeiZKwP4FppHH3cmAiiJJAweH5Jo4bM=",
    "x-shopify-shop-domain": "shop-1.myshopify.com",
    "x-shopify-webhook-id": "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
    "square-environment": "Production",
}


def headers(*, now: int | None = None, event_id: int = 42, stored: Any = None, content_type: Any = "application/json",
            body: bytes = BODY, secrets: list[str] = SECRETS, **ours: Any) -> dict[str, str]:
    args: dict[str, Any] = {"tenant_id": "shop-1", "source": "shopify", "idempotency_key": "b54557e4"} | ours
    return signing.Signer(secrets).headers(
        event_id=event_id, content_type=content_type, stored_headers=stored, body=body,
        now=int(time.time()) if now is None else now, **args,
    )


# -- signatures ------------------------------------------------------------------


@pytest.mark.parametrize("secret", SECRETS, ids=["new", "old"])
def test_every_secret_of_a_rotation_verifies(secret: str) -> None:
    sent = headers(stored=SHOPIFY)
    assert Webhook(secret).verify(BODY, sent) == {"type": "order.created", "order_id": "ord_1001", "total": "12.50", "note": "café"}


def test_one_v1_signature_per_secret_in_the_order_given() -> None:
    now = int(time.time())
    entries = headers(now=now)["webhook-signature"].split(" ")
    assert [e.split(",", 1)[0] for e in entries] == ["v1", "v1"]
    # Each one is the library's own signature under one secret, new first.
    when = datetime.fromtimestamp(now, tz=UTC)
    assert entries == [Webhook(s).sign("evt_42", when, BODY.decode()) for s in SECRETS]


def test_the_function_and_the_signer_agree() -> None:
    now = int(time.time())
    by_function = signing.delivery_headers(
        event_id=42, tenant_id="shop-1", source="shopify", idempotency_key="b54557e4", content_type="application/json",
        stored_headers=SHOPIFY, body=BODY, keys=[decode_secret(s) for s in SECRETS], now=now,
    )
    assert by_function == headers(now=now, stored=SHOPIFY)


@pytest.mark.parametrize("position", [0, 10, len(BODY) // 2, len(BODY) - 2, len(BODY) - 1])
@pytest.mark.parametrize("secret", SECRETS, ids=["new", "old"])
def test_a_changed_byte_of_the_body_fails(secret: str, position: int) -> None:
    sent = headers()
    changed = bytearray(BODY)
    changed[position] ^= 0x01  # ASCII stays ASCII: the library reads the body as UTF-8
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(bytes(changed), sent)
    Webhook(secret).verify(BODY, sent)  # the same headers with the real body do verify


def test_a_wrong_secret_fails() -> None:
    with pytest.raises(WebhookVerificationError):
        Webhook(OTHER).verify(BODY, headers())


@pytest.mark.parametrize("name", ["webhook-id", "webhook-timestamp"])
def test_the_id_and_the_timestamp_are_signed(name: str) -> None:
    sent = headers()
    sent[name] = "evt_43" if name == "webhook-id" else str(int(sent[name]) - 1)
    for secret in SECRETS:
        with pytest.raises(WebhookVerificationError):
            Webhook(secret).verify(BODY, sent)


def test_the_id_is_the_events_on_every_attempt_and_the_timestamp_the_attempts() -> None:
    first = headers(now=1_800_000_000)
    retry = headers(now=1_800_000_317, stored={"x-shopify-topic": "orders/updated"}, tenant_id="other")
    assert first["webhook-id"] == retry["webhook-id"] == "evt_42" == signing.webhook_id(42)
    assert (first["webhook-timestamp"], retry["webhook-timestamp"]) == ("1800000000", "1800000317")
    assert first["webhook-signature"] != retry["webhook-signature"]  # signed over each attempt's timestamp
    assert headers(event_id=43)["webhook-id"] == "evt_43"


def test_a_secret_that_is_not_whsec_is_refused_without_showing_it() -> None:
    with pytest.raises(ValueError) as caught:
        signing.Signer(["not-a-whsec-secret-value"])
    assert "not-a-whsec-secret-value" not in str(caught.value)


# -- the service's own headers -----------------------------------------------------


def test_our_headers() -> None:
    sent = headers(stored=SHOPIFY)
    assert {k: sent[k] for k in ("Content-Type", "X-Tenant-Id", "X-Source", "Idempotency-Key")} == {
        "Content-Type": "application/json", "X-Tenant-Id": "shop-1", "X-Source": "shopify", "Idempotency-Key": "b54557e4",
    }


@pytest.mark.parametrize(("stored", "sent"), [
    ("application/json", "application/json"),
    ("application/x+json; charset=utf-8", "application/x+json; charset=utf-8"),
    (None, "application/octet-stream"),
    ("", "application/octet-stream"),
    ("application/json\r\nX-Evil: 1", "application/octet-stream"),
    (17, "application/octet-stream"),
])
def test_content_type_is_the_stored_one_else_octet_stream(stored: Any, sent: str) -> None:
    assert headers(content_type=stored)["Content-Type"] == sent


# -- what is forwarded ---------------------------------------------------------------


def test_the_providers_headers_are_forwarded_under_their_own_names() -> None:
    sent = headers(stored=SHOPIFY)
    assert {k: v for k, v in sent.items() if k in SHOPIFY} == SHOPIFY


EXCLUDED = [
    "webhook-id", "webhook-timestamp", "webhook-signature", "webhook-anything",
    "content-type", "x-tenant-id", "x-source", "idempotency-key", "user-agent",
    "host", "content-length", "content-encoding", "transfer-encoding", "expect",
    "connection", "keep-alive", "te", "trailer", "upgrade", "proxy-connection", "proxy-authorization",
    "via", "forwarded", "x-forwarded-for", "x-forwarded-host",
    "authorization", "cookie", "set-cookie",
]


@pytest.mark.parametrize("name", [*EXCLUDED, "Webhook-Signature", "CONTENT-TYPE", "X-Tenant-ID", "Host"])
def test_a_stored_header_that_would_clash_with_or_spoof_ours_is_not_forwarded(name: str) -> None:
    sent = CIMultiDict(headers(stored={name: "spoofed", "x-shopify-topic": "orders/create"}))
    assert "spoofed" not in sent.values()
    assert len(sent.getall(name, [])) <= 1  # never two of one name, whatever the case
    assert sent["x-shopify-topic"] == "orders/create"  # the rest still is


def test_a_standard_webhooks_sources_own_signature_is_replaced_by_ours() -> None:
    theirs = {"webhook-id": "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", "webhook-timestamp": "1700000000",
              "webhook-signature": "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4="}
    sent = headers(stored=theirs)
    assert sent["webhook-id"] == "evt_42" and sent["webhook-signature"] != theirs["webhook-signature"]
    for secret in SECRETS:
        Webhook(secret).verify(BODY, sent)


HOSTILE_VALUES = ["a\r\nX-Injected: 1", "a\nb", "a\rb", "nul\x00", "del\x7f", "esc\x1b[31m", "c1\x85", "c1\x9b",
                  "lone\ud800surrogate", 7, None, ["a"], b"bytes"]


@pytest.mark.parametrize("value", HOSTILE_VALUES, ids=repr)
def test_a_hostile_stored_value_is_dropped_without_raising(value: Any) -> None:
    sent = headers(stored={"x-shopify-topic": value, "x-shopify-shop-domain": "shop-1.myshopify.com"})
    assert "x-shopify-topic" not in sent
    assert sent["x-shopify-shop-domain"] == "shop-1.myshopify.com"
    Webhook(NEW).verify(BODY, sent)


@pytest.mark.parametrize("name", ["bad name", "x:y", "", "x\r\ny", "caf\u00e9", "x\x00", 7, None], ids=repr)
def test_a_hostile_stored_name_is_dropped_without_raising(name: Any) -> None:
    sent = headers(stored={name: "v", "x-shopify-topic": "orders/create"})
    assert set(sent) - {"Content-Type", "X-Tenant-Id", "X-Source", "Idempotency-Key"} == {
        "x-shopify-topic", "webhook-id", "webhook-timestamp", "webhook-signature"}


@pytest.mark.parametrize("stored", [None, {}, ["x-a", "b"], "x-a: b", 12], ids=repr)
def test_stored_headers_that_are_not_an_object_forward_nothing(stored: Any) -> None:
    sent = headers(stored=stored)
    assert set(sent) == {"Content-Type", "X-Tenant-Id", "X-Source", "Idempotency-Key",
                         "webhook-id", "webhook-timestamp", "webhook-signature"}


def test_a_tab_inside_is_kept_and_blanks_around_are_stripped() -> None:
    sent = headers(stored={"x-a": "  one\ttwo \t", "X-Shopify-Topic": "orders/create", "x-shopify-topic": "second"})
    assert sent["x-a"] == "one\ttwo"
    assert sent["x-shopify-topic"] == "orders/create" and "X-Shopify-Topic" not in sent  # lower-cased, first kept


def test_a_hostile_value_of_ours_is_left_out_rather_than_sent_broken() -> None:
    sent = headers(idempotency_key="k\r\nX-Injected: 1", source=" shopify\t")
    assert "Idempotency-Key" not in sent and all("\n" not in v for v in sent.values())
    assert sent["X-Source"] == "shopify"  # the same cleaning as a stored value's


# -- on the wire -----------------------------------------------------------------------


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[tuple[Mapping[str, str], bytes]]]]:
    """A real aiohttp server on 127.0.0.1 recording each request's headers and body."""
    got: list[tuple[Mapping[str, str], bytes]] = []

    async def record(request: web.Request) -> web.Response:
        got.append((CIMultiDict(request.headers), await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", record)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/hook", got
    finally:
        await runner.cleanup()


async def test_sent_through_aiohttp_every_header_arrives_and_verifies(receiver: tuple[str, list[Any]]) -> None:
    url, got = receiver
    stored = {**SHOPIFY, "x-evil": "a\r\nX-Injected: 1", "webhook-signature": "v1,spoof", "content-length": "1",
              "host": "internal.example", "x-tab": "a\tb"}
    sent = headers(stored=stored)
    async with ssrf.make_session(allow_private_network=True, timeout=5) as session:
        async with session.post(url, data=BODY, headers=sent, allow_redirects=False) as response:
            assert response.status == 204
    [(arrived, body)] = got
    assert body == BODY
    for secret in SECRETS:
        Webhook(secret).verify(body, dict(arrived))
    for name, value in SHOPIFY.items():
        assert arrived.getall(name) == [value]
    assert arrived.getall("Content-Type") == ["application/json"]
    assert arrived.getall("Content-Length") == [str(len(BODY))]
    assert arrived.getall("Host") == [url.split("/")[2]]
    assert arrived.getall("x-tab") == ["a\tb"]
    assert "x-evil" not in arrived and "x-injected" not in arrived
    assert arrived["User-Agent"].startswith("codex-ingest/")
