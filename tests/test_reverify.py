"""The promise stored headers make: a consumer can re-verify a provider's
signature later, from what GET /events gives back and nothing else.

For every scheme: a correctly signed request is posted to the running app
(real aiohttp server, real PostgreSQL); the event is read back through GET
/events only, and its signature re-verified from ``body_base64``,
``headers`` and ``tenant_id`` / ``source`` / ``idempotency_key``, with the
secret the consumer shares with the provider (and Square's notification
URL, which is configuration). Where the provider publishes a Python library
it does the re-verification: Stripe (``stripe``), Standard Webhooks
(``standardwebhooks``), Square (``squareup``). Shopify, Toast and the
service's own hmac-sha256-bound / hmac-sha256-body have none: hmac/hashlib
from their documented definitions (docs/providers.md). Each re-verification
must also FAIL once one byte of the body, or of the stored signature, is
changed: it can tell a real signature from a wrong one.

Clover signs nothing: its auth code is a shared secret sent as it is, so
there is nothing to re-verify, and the promise for Clover is the opposite
one: nothing stored carries the code.

Requests are signed here from the providers' documentation (never by the
service's code), with the real clock, so the libraries' own freshness
checks run too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from square.utils.webhooks_helper import verify_signature as square_verify_signature
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from stripe import SignatureVerificationError, WebhookSignature

from codex_ingest.intake.sources import SCHEMES
from codex_ingest.settings import ReadToken
from tests.helpers import SECRET as WEBHOOK_SECRET
from tests.provider_helpers import payload

READ_TOKEN = "reverify-read-token-0123456789"
TOLERANCE = 300

SQUARE_KEY = "sq-sig-key-reverify-3f9a"
SQUARE_URL = "https://ingest.example.com/pos/square/ingest"
SHOPIFY_SECRET = "shopify-client-secret-reverify"
STRIPE_SECRET = "whsec_reverify_9f8e7d6c5b4a"
SW_SECRET = "whsec_" + base64.b64encode(b"reverify-standard-webhooks-key!!").decode()
TOAST_SECRET = "toast-secret-key-reverify"
CLOVER_CODE = "clover-auth-code-7f3e2d1c-reverify"
BOUND_SECRET = "bound-secret-reverify-0123"
BODY_SECRET = "body-secret-reverify-4567"

SOURCES = f"""
[sources.square]
scheme = "square"
secrets = ["{SQUARE_KEY}"]
notification_url = "{SQUARE_URL}"
[sources.shopify]
scheme = "shopify"
secrets = ["{SHOPIFY_SECRET}"]
[sources.stripe]
scheme = "stripe"
secrets = ["{STRIPE_SECRET}"]
tolerance_seconds = {TOLERANCE}
[sources.billing]
scheme = "standard-webhooks"
secrets = ["{SW_SECRET}"]
tolerance_seconds = {TOLERANCE}
[sources.toast]
scheme = "toast"
secrets = ["{TOAST_SECRET}"]
tolerance_seconds = {TOLERANCE}
[sources.clover]
scheme = "clover"
secrets = ["{CLOVER_CODE}"]
[sources.orders]
scheme = "hmac-sha256-bound"
secrets = ["{BOUND_SECRET}"]
tolerance_seconds = {TOLERANCE}
[sources.legacy]
scheme = "hmac-sha256-body"
secrets = ["{BODY_SECRET}"]
"""


@dataclass(frozen=True)
class Stored:
    """An event as GET /events gives it back: all a consumer has."""

    body: bytes
    headers: dict[str, str]
    tenant_id: str
    source: str
    idempotency_key: str

    @classmethod
    def of(cls, document: dict[str, Any]) -> Stored:
        assert isinstance(document["headers"], dict), document
        return cls(base64.b64decode(document["body_base64"]), document["headers"], document["tenant_id"],
                   document["source"], document["idempotency_key"])


@dataclass(frozen=True)
class Request:
    path: str
    body: bytes
    headers: dict[str, str]


def _b64_hmac(key: bytes, message: bytes) -> str:
    return base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode()


def _hex_hmac(key: bytes, message: bytes) -> str:
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _unique(body: bytes, field: str, value: str) -> bytes:
    """The payload with one of its string fields set (each run its own id or time), as compact JSON."""
    document = orjson.loads(body)
    document[field] = value
    return orjson.dumps(document)


class Scheme:
    """One scheme: how its provider signs a request, and how a consumer re-verifies the stored event."""

    name: str
    source: str
    signature_header: str | None  # the stored header holding the signature (lower case); None: none
    signature_alphabet = "hex"     # what the signature is written in: which other character to put in

    def request(self, now: int) -> Request:
        raise NotImplementedError

    def tenant(self) -> str:
        raise NotImplementedError

    def verifies(self, event: Stored) -> bool:
        raise NotImplementedError

    def signature_span(self, value: str) -> tuple[int, int]:
        """Where the signature itself sits in the header's value (start, end)."""
        return 0, len(value)


class Square(Scheme):
    name, source, signature_header = "square", "square", "x-square-hmacsha256-signature"
    signature_alphabet = "base64"
    body = _unique(payload("square-order-created"), "event_id", f"reverify-{time.time_ns()}")

    def request(self, now: int) -> Request:
        signature = _b64_hmac(SQUARE_KEY.encode(), SQUARE_URL.encode() + self.body)
        return Request("/pos/square/ingest", self.body, {"Content-Type": "application/json",
                                                         "x-square-hmacsha256-signature": signature,
                                                         "Square-Version": "2026-10-16"})

    def tenant(self) -> str:
        return orjson.loads(self.body)["merchant_id"]

    def verifies(self, event: Stored) -> bool:
        # squareup's own helper: request_body is text, the URL is the one registered with Square.
        return square_verify_signature(request_body=event.body.decode("utf-8"),
                                       signature_header=event.headers["x-square-hmacsha256-signature"],
                                       signature_key=SQUARE_KEY, notification_url=SQUARE_URL)


class Shopify(Scheme):
    # No official Python library: base64(HMAC-SHA256(client secret, body)), as Shopify documents it.
    name, source, signature_header = "shopify", "shopify", "x-shopify-hmac-sha256"
    signature_alphabet = "base64"
    body = payload("shopify-orders-paid")

    def request(self, now: int) -> Request:
        return Request("/pos/shopify/ingest", self.body, {
            "Content-Type": "application/json",
            "X-Shopify-Hmac-Sha256": _b64_hmac(SHOPIFY_SECRET.encode(), self.body),
            "X-Shopify-Topic": "orders/paid",
            "X-Shopify-Shop-Domain": self.tenant(),
            "X-Shopify-Webhook-Id": f"reverify-{time.time_ns()}",
        })

    def tenant(self) -> str:
        return "reverify.myshopify.com"

    def verifies(self, event: Stored) -> bool:
        expected = _b64_hmac(SHOPIFY_SECRET.encode(), event.body)
        return hmac.compare_digest(expected, event.headers["x-shopify-hmac-sha256"])


class Stripe(Scheme):
    name, source, signature_header = "stripe", "stripe", "stripe-signature"
    body = _unique(payload("stripe-payment-intent-succeeded"), "id", f"evt_reverify_{time.time_ns()}")

    def request(self, now: int) -> Request:
        v1 = _hex_hmac(STRIPE_SECRET.encode(), f"{now}.".encode() + self.body)
        return Request("/pos/stripe/ingest", self.body, {"Content-Type": "application/json; charset=utf-8",
                                                         "Stripe-Signature": f"t={now},v1={v1}"})

    def tenant(self) -> str:
        return orjson.loads(self.body)["account"]

    def verifies(self, event: Stored) -> bool:
        try:
            # stripe's own check, freshness included (the tolerance given, not left to a default).
            WebhookSignature.verify_header(event.body.decode("utf-8"), event.headers["stripe-signature"],
                                           STRIPE_SECRET, tolerance=TOLERANCE)
        except SignatureVerificationError:
            return False
        return True

    def signature_span(self, value: str) -> tuple[int, int]:
        start = value.index("v1=") + 3
        return start, start + 64


class StandardWebhooks(Scheme):
    name, source, signature_header = "standard-webhooks", "billing", "webhook-signature"
    signature_alphabet = "base64"
    body = payload("standard-webhooks-invoice-paid")

    def request(self, now: int) -> Request:
        msg_id = f"msg_reverify_{time.time_ns()}"
        key = base64.b64decode(SW_SECRET.removeprefix("whsec_"))
        signature = _b64_hmac(key, f"{msg_id}.{now}.".encode() + self.body)
        return Request(f"/pos/billing/ingest?tenant={self.tenant()}", self.body, {
            "Content-Type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(now),
            "webhook-signature": f"v1,{signature}"})

    def tenant(self) -> str:
        return "billing-tenant"

    def verifies(self, event: Stored) -> bool:
        try:
            # standardwebhooks' own check (its 5-minute freshness window included), from the stored headers as they are.
            Webhook(SW_SECRET).verify(event.body, event.headers)
        except WebhookVerificationError:
            return False
        return True

    def signature_span(self, value: str) -> tuple[int, int]:
        return len("v1,"), len(value)


class Toast(Scheme):
    # No official Python library: base64(HMAC-SHA256(secret, body + the body's "timestamp")),
    # docs/providers.md#toast (the timestamp's place is the service's documented assumption).
    name, source, signature_header = "toast", "toast", "toast-signature"
    signature_alphabet = "base64"

    def request(self, now: int) -> Request:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000+0000", time.gmtime(now))
        body = _unique(_unique(payload("toast-order-created"), "timestamp", stamp), "guid", f"rv-{time.time_ns()}")
        return Request("/pos/toast/ingest", body, {
            "Content-Type": "application/json",
            "Toast-Signature": _b64_hmac(TOAST_SECRET.encode(), body + stamp.encode()),
            "Toast-Restaurant-External-ID": self.tenant(),
        })

    def tenant(self) -> str:
        return "toast-restaurant-1"

    def verifies(self, event: Stored) -> bool:
        try:
            stamp = orjson.loads(event.body)["timestamp"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return False
        expected = _b64_hmac(TOAST_SECRET.encode(), event.body + stamp.encode())
        return hmac.compare_digest(expected, event.headers["toast-signature"])


class Bound(Scheme):
    # The service's own scheme (codex_ingest/intake/schemes/bound.py): X-Signature: t=<unix>,v2=<hex>,
    # each v2 = HMAC-SHA256 over "<t>\n<tenant>\n<route>\n<Idempotency-Key as sent, or empty>\n" + body.
    name, source, signature_header = "hmac-sha256-bound", "orders", "x-signature"

    def __init__(self, with_key: bool = True) -> None:
        self.with_key = with_key
        self.body = orjson.dumps({"type": "order.created", "order_id": f"ord_{time.time_ns()}", "total": "12.50"})

    def request(self, now: int) -> Request:
        key = f"evt_{time.time_ns()}" if self.with_key else ""
        signed = f"{now}\n{self.tenant()}\n/pos/{self.source}/ingest\n{key}\n".encode() + self.body
        headers = {"Content-Type": "application/json", "X-Tenant-Id": self.tenant(),
                   "X-Signature": f"t={now},v2={_hex_hmac(BOUND_SECRET.encode(), signed)}"}
        if self.with_key:
            headers["Idempotency-Key"] = key
        return Request(f"/pos/{self.source}/ingest", self.body, headers)

    def tenant(self) -> str:
        return "shop-1"

    def verifies(self, event: Stored) -> bool:
        fields = dict(item.strip().partition("=")[::2] for item in event.headers["x-signature"].split(","))
        t = fields["t"]  # signed; its freshness is the service's check at intake, not a later consumer's
        # The key as sent: the stored header (the event's idempotency_key is the body's SHA-256 when none was).
        key = event.headers.get("idempotency-key", "")
        if key:
            assert key == event.idempotency_key
        signed = f"{t}\n{event.tenant_id}\n/pos/{event.source}/ingest\n{key}\n".encode() + event.body
        return hmac.compare_digest(_hex_hmac(BOUND_SECRET.encode(), signed), fields["v2"])

    def signature_span(self, value: str) -> tuple[int, int]:
        start = value.index("v2=") + 3
        return start, start + 64


class BodyOnly(Scheme):
    # The service's body-only form: X-Signature: sha256=<hex HMAC-SHA256(secret, body)>.
    name, source, signature_header = "hmac-sha256-body", "legacy", "x-signature"

    def __init__(self, source: str = "legacy", secret: str = BODY_SECRET) -> None:
        self.source, self.secret = source, secret
        self.body = orjson.dumps({"type": "refund.created", "refund_id": f"rf_{time.time_ns()}"})

    def request(self, now: int) -> Request:
        return Request(f"/pos/{self.source}/ingest", self.body, {
            "Content-Type": "application/json", "X-Tenant-Id": self.tenant(), "Idempotency-Key": f"rf-{now}",
            "X-Signature": "sha256=" + _hex_hmac(self.secret.encode(), self.body)})

    def tenant(self) -> str:
        return "shop-2"

    def verifies(self, event: Stored) -> bool:
        expected = "sha256=" + _hex_hmac(self.secret.encode(), event.body)
        return hmac.compare_digest(expected, event.headers["x-signature"])

    def signature_span(self, value: str) -> tuple[int, int]:
        return len("sha256="), len(value)


class Clover(Scheme):
    # Clover signs nothing: X-Clover-Auth IS the app's auth code, a secret we share with
    # Clover, sent as it is. There is nothing to re-verify; the promise is that nothing
    # stored (headers, body, key) carries that code.
    name, source, signature_header = "clover", "clover", None
    body = payload("clover-multi-merchant")

    def request(self, now: int) -> Request:
        return Request("/pos/clover/ingest", self.body, {"Content-Type": "application/json",
                                                         "X-Clover-Auth": CLOVER_CODE})

    def tenant(self) -> str:
        return "MZ3N8QW1XK7PA"

    def verifies(self, event: Stored) -> bool:
        return CLOVER_CODE not in orjson.dumps([event.headers, event.body.decode(), event.idempotency_key]).decode()


SIGNED: list[Callable[[], Scheme]] = [Square, Shopify, Stripe, StandardWebhooks, Toast, Bound, BodyOnly]
ALL: list[Callable[[], Scheme]] = [*SIGNED, Clover]
UNDECLARED = "undeclared"  # a source the file does not declare: hmac-sha256-body keyed with WEBHOOK_SECRET


def _id(factory: Callable[[], Scheme]) -> str:
    return factory().name


def every_case() -> list[Any]:
    cases = [pytest.param(f, id=_id(f)) for f in SIGNED]
    cases.append(pytest.param(lambda: Bound(with_key=False), id="hmac-sha256-bound-without-key"))
    cases.append(pytest.param(lambda: BodyOnly(UNDECLARED, WEBHOOK_SECRET), id="hmac-sha256-body-undeclared"))
    return cases


def test_every_scheme_of_the_sources_file_is_covered() -> None:
    covered = {factory().name for factory in ALL}
    # "hmac-sha256" is hmac-sha256-body's old name, the same scheme.
    assert covered == set(SCHEMES) - {"hmac-sha256"}


@pytest.fixture
async def app(provider_client):
    return await provider_client(SOURCES, api_tokens=(ReadToken(READ_TOKEN, None),))


async def post_and_read_back(client, scheme: Scheme) -> list[Stored]:
    """Post ``scheme``'s signed request; its events as GET /events gives them back."""
    request = scheme.request(int(time.time()))
    resp = await client.post(request.path, data=request.body, headers=request.headers)
    assert resp.status == 201, await resp.text()
    read = await client.get(f"/events?tenant={scheme.tenant()}&source={scheme.source}",
                            headers={"Authorization": f"Bearer {READ_TOKEN}"})
    assert read.status == 200, await read.text()
    found = [Stored.of(e) for e in (await read.json())["events"]]
    assert found, f"nothing read back for {scheme.name}"
    return found


def flip_body_byte(event: Stored) -> Stored:
    """The event with one byte of its body changed (a letter, so the text stays UTF-8 JSON)."""
    index = next(i for i in range(len(event.body) // 2, len(event.body)) if chr(event.body[i]).isalpha())
    body = bytearray(event.body)
    body[index] ^= 0x01
    assert bytes(body) != event.body and len(body) == len(event.body)
    return Stored(bytes(body), event.headers, event.tenant_id, event.source, event.idempotency_key)


def flip_signature_byte(event: Stored, scheme: Scheme) -> Stored:
    """The event with one character of its stored signature changed, to another of the same
    alphabet and in the middle (a base64 signature's last character may carry only padding bits)."""
    assert scheme.signature_header is not None
    value = event.headers[scheme.signature_header]
    start, end = scheme.signature_span(value)
    index = (start + end) // 2
    old = value[index]
    new = ("0" if old != "0" else "1") if scheme.signature_alphabet == "hex" else ("A" if old != "A" else "B")
    changed = value[:index] + new + value[index + 1:]
    assert changed != value and len(changed) == len(value)
    return Stored(event.body, {**event.headers, scheme.signature_header: changed}, event.tenant_id, event.source,
                  event.idempotency_key)


@pytest.mark.parametrize("make", every_case())
async def test_a_stored_event_re_verifies_from_what_get_events_gives_back(app, db, make) -> None:
    scheme = make()
    [event] = await post_and_read_back(app, scheme)
    assert event.source == scheme.source and event.tenant_id == scheme.tenant()
    assert scheme.signature_header in event.headers, event.headers
    assert scheme.verifies(event), f"{scheme.name}: the stored event does not re-verify"
    # The check can fail: one byte of the body, or of the stored signature, and it does.
    assert not scheme.verifies(flip_body_byte(event)), f"{scheme.name}: a changed body still verifies"
    assert not scheme.verifies(flip_signature_byte(event, scheme)), f"{scheme.name}: a changed signature still verifies"


@pytest.mark.parametrize("make", [pytest.param(Clover, id="clover")])
async def test_clover_nothing_stored_carries_its_auth_code(app, db, make) -> None:
    scheme = make()
    events = await post_and_read_back(app, scheme)
    assert len(events) == 2  # this merchant's two changes, each an event
    for event in events:
        assert "x-clover-auth" not in event.headers
        assert set(event.headers) <= {"content-type", "user-agent"}
        assert scheme.verifies(event)  # the code is nowhere in it
    # The check can fail: were the code stored, it would find it.
    leaked = Stored(events[0].body, {**events[0].headers, "x-clover-auth": CLOVER_CODE}, events[0].tenant_id,
                    events[0].source, events[0].idempotency_key)
    assert not scheme.verifies(leaked)
