"""Hostile input, table-driven: each bad request, sent as raw bytes to the app
served the way ``serve`` serves it, gets its expected 4xx (JSON where an
answer is possible) and nothing is stored.

docs/security.md's "Hostile input" table is this table in prose.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import hmac
import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
import pytest

from codex_ingest.intake.sources import parse_sources
from codex_ingest.settings import Settings
from codex_ingest.web.app import create_app
from tests.helpers import SECRET, sign
from tests.provider_sources import NOW, SOURCES_TOML, SQUARE_URL, SW_KEY
from tests.rawhttp import RawResponse, ServiceTestServer, build, chunked, exchange

LIMIT = 640 * 1024  # MAX_BODY_BYTES here: room for 100k-deep nesting to reach the parser
DEADLINE = 1.5  # HEADER_READ_TIMEOUT and BODY_READ_TIMEOUT here
BODY = b'{"type":"payment.updated","id":"evt_1"}'
GOOD_SIG = sign(BODY)
HEX = GOOD_SIG[len("sha256=") :]
BOMB = gzip.compress(bytes(10_000_000), compresslevel=9)  # 10 MB of zeros in ~10 KB


@dataclass(frozen=True)
class Bad:
    name: str
    request: bytes | tuple[bytes, ...]
    status: int | None  # None: closed without an answer
    error: str | None = None  # the JSON "error" code expected
    pause: float = 0.0  # between the pieces of a tuple request


def signed(body: bytes, **kw) -> bytes:
    return build(body=body, **kw)


def with_sig(signature: str | bytes | None, **kw) -> bytes:
    return build(body=BODY, signature=signature, **kw)


def over_limit_body(extra: int = 1) -> bytes:
    body = b'{"p":"' + b"x" * (LIMIT - 8 + extra) + b'"}'
    assert len(body) == LIMIT + extra
    return body


CASES: list[Bad] = [
    # --- JSON -------------------------------------------------------------------
    Bad("json-malformed", signed(b"{not json"), 400, "invalid_json"),
    Bad("json-truncated-object", signed(b'{"a":1'), 400, "invalid_json"),
    Bad("json-truncated-string", signed(b'{"a":"xyz'), 400, "invalid_json"),
    Bad("json-empty-body", signed(b""), 400, "invalid_json"),
    Bad("json-scalar", signed(b"42"), 400, "invalid_json"),
    Bad("json-trailing-garbage", signed(b'{"a":1} x'), 400, "invalid_json"),
    Bad("json-nan", signed(b'{"a":NaN}'), 400, "invalid_json"),
    Bad("json-bom", signed(b"\xef\xbb\xbf{}"), 400, "invalid_json"),
    Bad("utf8-invalid-bytes", signed(b'{"a":"\xff\xfe"}'), 400, "invalid_json"),
    Bad("utf8-overlong", signed(b'{"a":"\xc0\xaf"}'), 400, "invalid_json"),
    Bad("utf8-encoded-surrogate", signed(b'{"a":"\xed\xa0\x80"}'), 400, "invalid_json"),
    # orjson refuses a lone surrogate escape: the event could not be re-encoded as UTF-8.
    Bad("json-lone-surrogate-escape", signed(b'{"a":"\\ud800"}'), 400, "invalid_json"),
    Bad("json-lone-low-surrogate-escape", signed(b'{"a":"\\udc00"}'), 400, "invalid_json"),
    Bad("json-100k-deep-arrays", signed(b"[" * 100_000 + b"]" * 100_000), 400, "invalid_json"),
    Bad("json-100k-deep-objects", signed(b'{"a":' * 100_000 + b"1" + b"}" * 100_000), 400, "invalid_json"),
    # --- size and framing -------------------------------------------------------
    Bad("body-one-byte-over-limit", signed(over_limit_body()), 413, "payload_too_large"),
    Bad(
        "chunked-over-limit",
        build(body=chunked(over_limit_body(100)), signature=sign(over_limit_body(100)), content_length=None,
              headers=[("Transfer-Encoding", "chunked")]),
        413, "payload_too_large",
    ),
    Bad("declared-length-over-limit", build(body=BODY, content_length=LIMIT + 1), 413, "payload_too_large"),
    # Shorter than the body: the rest is parsed as a second request, which is
    # garbage; aiohttp then answers 400 for the whole packet (no request runs).
    Bad("content-length-shorter-than-body", build(body=BODY, content_length=len(BODY) - 10), 400, "bad_request"),
    # Longer than the body: the rest never comes; BODY_READ_TIMEOUT answers.
    Bad("content-length-longer-than-body", build(body=BODY, content_length=len(BODY) + 10), 408, "request_timeout"),
    Bad("content-length-negative", build(body=BODY, content_length=-1), 400, "bad_request"),
    Bad("content-length-not-a-number", build(body=BODY, content_length="12abc"), 400, "bad_request"),
    Bad("content-length-twice-differing",
        build(body=BODY, headers=[("Content-Length", str(len(BODY) + 1))]), 400, "bad_request"),
    Bad("content-length-and-chunked",
        build(body=chunked(BODY), headers=[("Transfer-Encoding", "chunked")]), 400, "bad_request"),
    Bad("transfer-encoding-gzip-chunked",
        build(body=chunked(gzip.compress(BODY)), signature=sign(BODY), content_length=None,
              headers=[("Transfer-Encoding", "gzip, chunked")]),
        415, "unsupported_content_encoding"),
    Bad("chunk-size-not-hex",
        build(body=b"zz\r\n" + BODY + b"\r\n0\r\n\r\n", content_length=None, headers=[("Transfer-Encoding", "chunked")]),
        400, "bad_request"),
    Bad("chunk-longer-than-declared",
        build(body=b"5\r\n" + BODY + b"\r\n0\r\n\r\n", content_length=None, headers=[("Transfer-Encoding", "chunked")]),
        400, "bad_request"),
    # --- content coding: refused, never inflated ----------------------------------
    Bad("gzip-body", build(body=gzip.compress(BODY), signature=sign(BODY), headers=[("Content-Encoding", "gzip")]),
        415, "unsupported_content_encoding"),
    Bad("gzip-bomb", build(body=BOMB, headers=[("Content-Encoding", "gzip")]), 415, "unsupported_content_encoding"),
    Bad("deflate-body", build(body=zlib.compress(BODY), headers=[("Content-Encoding", "deflate")]),
        415, "unsupported_content_encoding"),
    Bad("br-body", build(body=BODY, headers=[("Content-Encoding", "br")]), 415, "unsupported_content_encoding"),
    # --- headers ----------------------------------------------------------------
    Bad("header-too-large", build(body=BODY, headers=[("X-Filler", "a" * 9000)]), 431, "request_header_fields_too_large"),
    Bad("too-many-headers", build(body=BODY, headers=[(f"X-H{i}", "v") for i in range(200)]),
        431, "request_header_fields_too_large"),
    Bad("request-line-too-long", build(path="/pos/square/ingest?x=" + "a" * 9000, body=BODY),
        431, "request_header_fields_too_large"),
    Bad("header-nul-byte", build(body=BODY, headers=[("X-Note", b"a\x00b")]), 400, "bad_request"),
    Bad("header-name-with-space", build(body=BODY, headers=[("X Bad", "v")]), 400, "bad_request"),
    Bad("header-bare-lf", build(body=BODY).replace(b"\r\nX-Tenant-Id", b"\nX-Tenant-Id"), 400, "bad_request"),
    Bad("garbage-request-line", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64), 400, "bad_request"),
    Bad("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, "bad_request"),
    # --- signature (the generic X-Signature scheme) -------------------------------
    Bad("sig-missing", with_sig(None), 401, "invalid_signature"),
    Bad("sig-empty", with_sig(""), 401, "invalid_signature"),
    Bad("sig-prefix-only", with_sig("sha256="), 401, "invalid_signature"),
    Bad("sig-non-hex", with_sig("sha256=" + "zz" + HEX[2:]), 401, "invalid_signature"),
    Bad("sig-63-hex", with_sig("sha256=" + HEX[:-1]), 401, "invalid_signature"),
    Bad("sig-65-hex", with_sig("sha256=" + HEX + "0"), 401, "invalid_signature"),
    Bad("sig-sha1-scheme", with_sig("sha1=" + HEX[:40]), 401, "invalid_signature"),
    Bad("sig-sha512-scheme", with_sig("sha512=" + HEX * 2), 401, "invalid_signature"),
    Bad("sig-uppercase-scheme", with_sig("SHA256=" + HEX), 401, "invalid_signature"),
    Bad("sig-two-values", with_sig(GOOD_SIG + "," + GOOD_SIG), 401, "invalid_signature"),
    Bad("sig-inner-space", with_sig("sha256=" + HEX[:32] + " " + HEX[32:]), 401, "invalid_signature"),
    Bad("sig-base64", with_sig("sha256=" + "q" * 43 + "="), 401, "invalid_signature"),
    Bad("sig-non-ascii", with_sig(b"sha256=\xe9" + HEX[1:].encode()), 401, "invalid_signature"),
    Bad("sig-8000-chars", with_sig("sha256=" + "a" * 8000), 401, "invalid_signature"),
    Bad("sig-other-body", with_sig(sign(b"{}")), 401, "invalid_signature"),
    Bad("sig-wrong-secret", with_sig(sign(BODY, secret=SECRET + "x")), 401, "invalid_signature"),
    Bad("sig-alias-malformed", with_sig(None, headers=[("X-Webhook-Signature", "sha256=nope")]), 401, "invalid_signature"),
    # --- source and tenant --------------------------------------------------------
    Bad("path-traversal-dotdot", build(path="/pos/../admin/ingest", body=BODY), 404, "not_found"),
    Bad("path-traversal-encoded", build(path="/pos/%2e%2e/ingest", body=BODY), 400, "invalid_source"),
    Bad("path-traversal-encoded-slash", build(path="/pos/..%2f..%2fetc/ingest", body=BODY), 400, "invalid_source"),
    Bad("source-encoded-slash", build(path="/pos/a%2Fb/ingest", body=BODY), 400, "invalid_source"),
    Bad("source-encoded-nul", build(path="/pos/a%00/ingest", body=BODY), 400, "invalid_source"),
    Bad("source-encoded-utf8", build(path="/pos/caf%C3%A9/ingest", body=BODY), 400, "invalid_source"),
    Bad("source-uppercase", build(path="/pos/SQUARE/ingest", body=BODY), 400, "invalid_source"),
    Bad("tenant-traversal", build(body=BODY, tenant="../../etc/passwd"), 400, "invalid_tenant"),
    Bad("tenant-percent-encoded-query", build(path="/pos/square/ingest?tenant=%2e%2e%2fx", body=BODY, tenant=None),
        400, "invalid_tenant"),
    Bad("tenant-5kb", build(body=BODY, tenant="t" * 5000), 400, "invalid_tenant"),
    Bad("tenant-10kb-header", build(body=BODY, tenant="t" * 10_240), 431, "request_header_fields_too_large"),
    Bad("tenant-10kb-query", build(path="/pos/square/ingest?tenant=" + "t" * 10_240, body=BODY, tenant=None),
        431, "request_header_fields_too_large"),
    Bad("tenant-non-ascii", build(body=BODY, tenant="caf\u00e9".encode()), 400, "invalid_tenant"),
    Bad("tenant-control-char", build(body=BODY, tenant=b"t\x01x"), 400, "bad_request"),
    Bad("tenant-empty", build(body=BODY, tenant=""), 400, "invalid_tenant"),
    Bad("tenant-missing", build(body=BODY, tenant=None), 400, "invalid_tenant"),
    # --- idempotency key ----------------------------------------------------------
    Bad("key-empty", build(body=BODY, headers=[("Idempotency-Key", "")]), 400, "invalid_idempotency_key"),
    Bad("key-256-chars", build(body=BODY, headers=[("Idempotency-Key", "k" * 256)]), 400, "invalid_idempotency_key"),
    Bad("key-non-ascii", build(body=BODY, headers=[("Idempotency-Key", "caf\u00e9".encode())]), 400,
        "invalid_idempotency_key"),
    Bad("key-tab", build(body=BODY, headers=[("Idempotency-Key", "a\tb")]), 400, "invalid_idempotency_key"),
    Bad("key-del", build(body=BODY, headers=[("Idempotency-Key", b"a\x7fb")]), 400, "bad_request"),
    Bad("key-control-char", build(body=BODY, headers=[("Idempotency-Key", b"a\x01b")]), 400, "bad_request"),
    # --- content type and method ---------------------------------------------------
    Bad("content-type-text", build(body=BODY, content_type="text/plain"), 415, "unsupported_media_type"),
    Bad("content-type-form", build(body=BODY, content_type="application/x-www-form-urlencoded"), 415,
        "unsupported_media_type"),
    Bad("content-type-multipart", build(body=BODY, content_type="multipart/form-data; boundary=x"), 415,
        "unsupported_media_type"),
    Bad("method-get", build(method="GET", body=BODY), 405, "method_not_allowed"),
    Bad("method-put", build(method="PUT", body=BODY), 405, "method_not_allowed"),
    Bad("method-delete", build(method="DELETE", body=BODY), 405, "method_not_allowed"),
    Bad("method-patch", build(method="PATCH", body=BODY), 405, "method_not_allowed"),
    # Not a method aiohttp's parser knows: refused before routing.
    Bad("method-invented", build(method="FROB", body=BODY), 400, "bad_request"),
    # --- slow heads ----------------------------------------------------------------
    Bad("head-never-finished", (b"POST /pos/square/ingest HTTP/1.1\r\nHost: x\r\n",), 408, "request_timeout"),
    Bad("idle-connection", (b"",), None),
]


@pytest.fixture
async def service(aiohttp_client, database_url: str, db):
    settings = Settings(
        webhook_secret=SECRET,
        database_url=database_url,
        db_pool_min=1,
        db_pool_max=4,
        max_body_bytes=LIMIT,
        header_read_timeout=DEADLINE,
        body_read_timeout=DEADLINE,
    )
    client = await aiohttp_client(ServiceTestServer(create_app(settings)))
    return client.server


async def test_table_has_at_least_30_distinct_inputs() -> None:
    every = CASES + PROVIDER_CASES
    assert len(CASES) >= 30
    assert len({c.name for c in every}) == len(every)


async def test_a_good_request_through_the_same_path_is_stored(service, db) -> None:
    # The control: what the table sends is stored when it is not hostile,
    # so "nothing stored" below could fail.
    resp = await exchange(service.host, service.port, build(body=BODY))
    assert resp is not None and resp.status == 201, resp
    assert await db.fetchval("SELECT count(*) FROM events") == 1


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_hostile_input(service, db, case: Bad) -> None:
    resp: RawResponse | None = await exchange(service.host, service.port, case.request, pause=case.pause)
    if case.status is None:
        assert resp is None, f"expected the connection closed without an answer, got {resp}"
    else:
        assert resp is not None, "connection closed without an answer"
        assert resp.status == case.status, (resp.status, resp.body[:300])
        assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
        doc = resp.json()
        assert set(doc) == {"error", "detail"} and doc["detail"]
        if case.error is not None:
            assert doc["error"] == case.error, doc
    assert await db.fetchval("SELECT count(*) FROM events") == 0


async def test_idle_and_unfinished_connections_are_closed_within_the_head_deadline(service) -> None:
    # The clock starts before connecting: the server's deadline can only start
    # later (when it accepts), so the lower bound needs no allowance for a slow
    # machine. The upper bound only says "closed, not held": room for one.
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(service.host, service.port)
    writer.write(b"POST /pos/square/ingest HTTP/1.1\r\nHost: x\r\n")
    assert await asyncio.wait_for(reader.read(), timeout=DEADLINE + 10)  # the 408, then EOF
    assert DEADLINE <= time.monotonic() - started < DEADLINE + 10
    writer.close()


async def test_unparsable_requests_log_no_traceback(service, caplog) -> None:
    with caplog.at_level("DEBUG"):
        for case in CASES:
            if case.name in {"header-too-large", "too-many-headers", "garbage-request-line", "header-nul-byte"}:
                await exchange(service.host, service.port, case.request)
    assert not [r for r in caplog.records if r.levelname in {"ERROR", "CRITICAL"} or r.exc_info], [
        (r.name, r.getMessage()) for r in caplog.records if r.levelno >= 40 or r.exc_info
    ]


def test_the_apps_aiohttp_does_not_inflate_request_bodies(database_url: str) -> None:
    app = create_app(Settings(webhook_secret=SECRET, database_url=database_url))
    assert app._handler_args == {"auto_decompress": False}



# --- provider signature schemes (issue 4), against a sources file declaring each ----
# Each provider's request is valid by default (the controls below get 201);
# each row breaks one thing about its signature headers or signed time.

# The sources served (tests/provider_sources.py), their secrets, and the service's clock (NOW).


def b64mac(key: bytes, *parts: bytes) -> str:
    return base64.b64encode(hmac.new(key, b"".join(parts), hashlib.sha256).digest()).decode()


def hexmac(key: bytes, *parts: bytes) -> str:
    return hmac.new(key, b"".join(parts), hashlib.sha256).hexdigest()


def iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")


SQUARE_BODY = b'{"merchant_id":"M1","event_id":"ev-sq-1","type":"payment.updated"}'
SHOPIFY_BODY = b'{"id":1,"total_price":"9.00"}'
STRIPE_BODY = b'{"id":"evt_1","account":"acct_1","type":"charge.succeeded"}'
SW_BODY = b'{"type":"invoice.paid","id":"inv_1"}'
CLOVER_BODY = b'{"appId":"APP","merchants":{"MID1":[{"objectId":"O:1","type":"UPDATE","ts":1764000000000}]}}'


def toast_body(when: int = NOW) -> bytes:
    return b'{"guid":"g-1","eventType":"orders_updated","timestamp":"' + iso(when).encode() + b'"}'


def square(sig: str | None = "auto", body: bytes = SQUARE_BODY) -> bytes:
    value = b64mac(b"sq-key", SQUARE_URL.encode(), body) if sig == "auto" else sig
    extra = [] if value is None else [("x-square-hmacsha256-signature", value)]
    return build(path="/pos/square/ingest", body=body, tenant=None, signature=None, headers=extra)


def shopify(sig: str | None = "auto") -> bytes:
    value = b64mac(b"shop-secret", SHOPIFY_BODY) if sig == "auto" else sig
    extra = [("X-Shopify-Webhook-Id", "wh-1"), ("X-Shopify-Shop-Domain", "shop.myshopify.com")]
    if value is not None:
        extra.append(("X-Shopify-Hmac-Sha256", value))
    return build(path="/pos/shopify/ingest", body=SHOPIFY_BODY, tenant=None, signature=None, headers=extra)


def stripe(header: str | None = None, *, t: int = NOW) -> bytes:
    if header is None:
        header = f"t={t},v1={hexmac(b'whsec_stripe', f'{t}.'.encode(), STRIPE_BODY)}"
    return build(path="/pos/stripe/ingest", body=STRIPE_BODY, tenant=None, signature=None,
                 headers=[("Stripe-Signature", header)] if header != "-" else [])


def standard(*, msg_id: str | None = "msg_1", ts: str | None = str(NOW), sig: str | None = "auto") -> bytes:
    if sig == "auto":
        sig = "v1," + b64mac(SW_KEY, f"{msg_id}.{ts}.".encode(), SW_BODY)
    extra = [(n, v) for n, v in (("webhook-id", msg_id), ("webhook-timestamp", ts), ("webhook-signature", sig))
             if v is not None]
    return build(path="/pos/billing/ingest?tenant=t-1", body=SW_BODY, tenant=None, signature=None, headers=extra)


def toast(sig: str | None = "auto", body: bytes | None = None) -> bytes:
    body = toast_body() if body is None else body
    if sig == "auto":
        stamp = orjson.loads(body).get("timestamp", "")
        sig = b64mac(b"toast-secret", body, stamp.encode())
    extra = [("Toast-Restaurant-External-ID", "rest-1")] + ([] if sig is None else [("Toast-Signature", sig)])
    return build(path="/pos/toast/ingest", body=body, tenant=None, signature=None, headers=extra)


def clover(auth: str | None = "clover-auth") -> bytes:
    extra = [] if auth is None else [("X-Clover-Auth", auth)]
    return build(path="/pos/clover/ingest", body=CLOVER_BODY, tenant=None, signature=None, headers=extra)


def toast_stamped(when: int) -> bytes:
    return toast(body=toast_body(when))


STRIPE_V1 = hexmac(b"whsec_stripe", f"{NOW}.".encode(), STRIPE_BODY)
SW_V1 = b64mac(SW_KEY, f"msg_1.{NOW}.".encode(), SW_BODY)
SQ_SIG = b64mac(b"sq-key", SQUARE_URL.encode(), SQUARE_BODY)

PROVIDER_CONTROLS = {
    "square": square(), "shopify": shopify(), "stripe": stripe(), "standard-webhooks": standard(),
    "toast": toast(), "clover": clover(),
}

PROVIDER_CASES: list[Bad] = [
    # Square: x-square-hmacsha256-signature = base64(HMAC(key, notification_url + body))
    Bad("square-missing", square(None), 401, "invalid_signature"),
    Bad("square-empty", square(""), 401, "invalid_signature"),
    Bad("square-not-base64", square("%%%"), 401, "invalid_signature"),
    Bad("square-short-digest", square("c2hvcnQ="), 401, "invalid_signature"),
    Bad("square-hex-not-base64", square(hexmac(b"sq-key", SQUARE_URL.encode(), SQUARE_BODY)), 401, "invalid_signature"),
    Bad("square-body-only-signed", square(b64mac(b"sq-key", SQUARE_BODY)), 401, "invalid_signature"),
    Bad("square-other-url-signed", square(b64mac(b"sq-key", b"https://evil.example/x", SQUARE_BODY)), 401,
        "invalid_signature"),
    Bad("square-two-values", square(SQ_SIG + "," + SQ_SIG), 401, "invalid_signature"),
    # Shopify: X-Shopify-Hmac-Sha256 = base64(HMAC(secret, body))
    Bad("shopify-missing", shopify(None), 401, "invalid_signature"),
    Bad("shopify-not-base64", shopify("not base64!"), 401, "invalid_signature"),
    Bad("shopify-hex-not-base64", shopify(hexmac(b"shop-secret", SHOPIFY_BODY)), 401, "invalid_signature"),
    Bad("shopify-wrong-secret", shopify(b64mac(b"other", SHOPIFY_BODY)), 401, "invalid_signature"),
    Bad("shopify-non-ascii", shopify("\u00e9t\u00e9"), 401, "invalid_signature"),
    # Stripe: Stripe-Signature: t=<unix>,v1=<hex HMAC(secret, "t." + body)>
    Bad("stripe-missing", stripe("-"), 401, "invalid_signature"),
    Bad("stripe-empty", stripe(""), 401, "invalid_signature"),
    Bad("stripe-no-t", stripe(f"v1={STRIPE_V1}"), 401, "invalid_signature"),
    Bad("stripe-no-v1", stripe(f"t={NOW}"), 401, "invalid_signature"),
    Bad("stripe-t-not-a-number", stripe(f"t=now,v1={STRIPE_V1}"), 401, "invalid_signature"),
    Bad("stripe-t-twice", stripe(f"t={NOW},t={NOW},v1={STRIPE_V1}"), 401, "invalid_signature"),
    Bad("stripe-t-huge", stripe(f"t={'9' * 30},v1={STRIPE_V1}"), 401, "invalid_signature"),
    Bad("stripe-v1-not-hex", stripe(f"t={NOW},v1=" + "z" * 64), 401, "invalid_signature"),
    Bad("stripe-v0-only", stripe(f"t={NOW},v0={STRIPE_V1}"), 401, "invalid_signature"),
    Bad("stripe-no-separators", stripe(f"t{NOW}v1{STRIPE_V1}"), 401, "invalid_signature"),
    Bad("stripe-stale-timestamp", stripe(t=NOW - 301), 401, "invalid_signature"),
    Bad("stripe-future-timestamp", stripe(t=NOW + 301), 401, "invalid_signature"),
    # Standard Webhooks: webhook-id, webhook-timestamp, webhook-signature: v1,<base64>
    Bad("sw-missing-id", standard(msg_id=None, sig="v1," + SW_V1), 401, "invalid_signature"),
    Bad("sw-missing-timestamp", standard(ts=None, sig="v1," + SW_V1), 401, "invalid_signature"),
    Bad("sw-missing-signature", standard(sig=None), 401, "invalid_signature"),
    Bad("sw-timestamp-not-a-number", standard(ts="soon", sig="v1," + SW_V1), 401, "invalid_signature"),
    Bad("sw-v1a-only", standard(sig="v1a," + SW_V1), 401, "invalid_signature"),
    Bad("sw-v1-empty", standard(sig="v1,"), 401, "invalid_signature"),
    Bad("sw-no-version", standard(sig=SW_V1), 401, "invalid_signature"),
    Bad("sw-not-base64", standard(sig="v1,@@@@"), 401, "invalid_signature"),
    Bad("sw-stale-timestamp", standard(ts=str(NOW - 301)), 401, "invalid_signature"),
    Bad("sw-future-timestamp", standard(ts=str(NOW + 301)), 401, "invalid_signature"),
    # Toast: Toast-Signature = base64(HMAC(secret, body + body's timestamp))
    Bad("toast-missing", toast(None), 401, "invalid_signature"),
    Bad("toast-not-base64", toast("not base64!"), 401, "invalid_signature"),
    Bad("toast-body-only-signed", toast(b64mac(b"toast-secret", toast_body())), 401, "invalid_signature"),
    Bad("toast-no-timestamp-in-body", toast(body=b'{"guid":"g-1"}'), 401, "invalid_signature"),
    Bad("toast-timestamp-not-iso", toast(body=b'{"guid":"g-1","timestamp":"yesterday"}'), 401, "invalid_signature"),
    Bad("toast-stale-timestamp", toast_stamped(NOW - 301), 401, "invalid_signature"),
    Bad("toast-future-timestamp", toast_stamped(NOW + 301), 401, "invalid_signature"),
    # Clover: X-Clover-Auth = the app's auth code
    Bad("clover-missing", clover(None), 401, "invalid_signature"),
    Bad("clover-empty", clover(""), 401, "invalid_signature"),
    Bad("clover-wrong", clover("clover-auth-x"), 401, "invalid_signature"),
    Bad("clover-prefix", clover("clover-aut"), 401, "invalid_signature"),
]


@pytest.fixture
async def provider_service(aiohttp_client, database_url: str, db):
    settings = Settings(
        webhook_secret=SECRET, database_url=database_url, db_pool_min=1, db_pool_max=4,
        max_body_bytes=LIMIT, header_read_timeout=DEADLINE, body_read_timeout=DEADLINE,
        source_table=parse_sources(SOURCES_TOML, {}),
    )
    client = await aiohttp_client(ServiceTestServer(create_app(settings, clock=lambda: float(NOW))))
    return client.server


@pytest.mark.parametrize("name", sorted(PROVIDER_CONTROLS))
async def test_provider_control_request_is_stored(provider_service, db, name: str) -> None:
    # Each provider's unbroken request is accepted: the rows below fail
    # for the one thing they break.
    resp = await exchange(provider_service.host, provider_service.port, PROVIDER_CONTROLS[name])
    assert resp is not None and resp.status == 201, (resp, resp and resp.body)
    assert await db.fetchval("SELECT count(*) FROM events") >= 1


@pytest.mark.parametrize("case", PROVIDER_CASES, ids=lambda c: c.name)
async def test_hostile_provider_signature(provider_service, db, case: Bad) -> None:
    resp = await exchange(provider_service.host, provider_service.port, case.request)
    assert resp is not None, "connection closed without an answer"
    assert resp.status == case.status, (resp.status, resp.body[:300])
    doc = resp.json()
    assert set(doc) == {"error", "detail"} and doc["error"] == case.error, doc
    assert await db.fetchval("SELECT count(*) FROM events") == 0


@pytest.mark.parametrize("source", ["square", "stripe", "clover"])
async def test_provider_sources_refuse_compressed_bodies_too(provider_service, db, source: str) -> None:
    request = {"square": square, "stripe": stripe, "clover": clover}[source]()
    request = request.replace(b"\r\n\r\n", b"\r\nContent-Encoding: gzip\r\n\r\n", 1)
    resp = await exchange(provider_service.host, provider_service.port, request)
    assert resp is not None and resp.status == 415
    assert await db.fetchval("SELECT count(*) FROM events") == 0
