"""Property tests (hypothesis): whatever the bytes and header strings, the
verifier raises only InvalidSignature, every provider scheme only the
service's own 4xx errors, and the service answers a 2xx or a 4xx — never a
5xx — and stores nothing for a 4xx."""

from __future__ import annotations

import hashlib
import hmac

import orjson
import psycopg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from codex_ingest.errors import IngestError, InvalidSignature
from codex_ingest.intake.schemes.registry import build_sources
from codex_ingest.intake.signatures import HmacSha256Verifier
from codex_ingest.intake.sources import parse_sources
from tests.helpers import SECRET, sign
from tests.live import Live
from tests.provider_sources import NOW, SOURCES_TOML
from tests.rawhttp import build, exchange_sync

VERIFIER = HmacSha256Verifier(SECRET)

# Header values: anything a socket can carry in one header line (latin-1,
# no CR or LF, which would end the line and make it another test).
header_text = st.text(st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=300)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
json_documents = (
    st.lists(json_values, max_size=4) | st.dictionaries(st.text(max_size=8), json_values, max_size=4)
).map(orjson.dumps)


@given(body=st.binary(max_size=4096), header=st.none() | st.text(max_size=200) | header_text)
@settings(max_examples=400, deadline=None)
def test_verifier_raises_only_its_own_error(body: bytes, header: str | None) -> None:
    expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    try:
        VERIFIER.verify(body, header)
    except InvalidSignature:
        return
    # Accepted: then the header really was this body's signature.
    assert header is not None
    assert header.strip().lower().removeprefix("sha256=") == expected


@given(body=st.binary(max_size=1024), hexdigest=st.text("0123456789abcdefABCDEF", min_size=64, max_size=64))
@settings(max_examples=200, deadline=None)
def test_verifier_accepts_only_the_right_digest(body: bytes, hexdigest: str) -> None:
    good = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    if hexdigest.lower() == good:
        VERIFIER.verify(body, hexdigest)
    else:
        with pytest.raises(InvalidSignature):
            VERIFIER.verify(body, "sha256=" + hexdigest)


@pytest.fixture(scope="module")
def events(database_url: str):
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


def count_events(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT count(*) FROM events").fetchone()
    assert row is not None
    return int(row[0])


def mostly(valid: st.SearchStrategy, other: st.SearchStrategy) -> st.SearchStrategy:
    """Valid three times in four, so that most examples get past the early checks."""
    return st.one_of(valid, valid, valid, other)


@given(
    body=mostly(json_documents, st.binary(max_size=2048) | json_values.map(orjson.dumps)),
    signed=mostly(st.just(True), st.just(False)),
    signature=header_text,
    tenant=mostly(st.sampled_from(["tenant-1", "t.2:eu"]), st.none() | header_text),
    key=mostly(st.none() | st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=40),
               header_text),
    content_type=mostly(st.sampled_from(["application/json", "application/vnd.x+json"]), st.none() | header_text),
    encoding=mostly(st.none(), st.sampled_from(["gzip", "identity", "br"]) | header_text),
    source=mostly(st.sampled_from(["square", "toast"]),
                  st.text(st.characters(codec="ascii", categories=["L", "N", "P"]), min_size=1, max_size=70)),
)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def any_request_is_answered_2xx_or_4xx_never_5xx(
    live: Live, events: psycopg.Connection, body: bytes, signed: bool, signature: str, tenant: str | None,
    key: str | None, content_type: str | None, encoding: str | None, source: str,
) -> None:
    extra = []
    if key is not None:
        extra.append(("Idempotency-Key", key))
    if encoding is not None:
        extra.append(("Content-Encoding", encoding))
    path = "/pos/" + "".join(c if c not in "/?# " else "_" for c in source) + "/ingest"
    request = build(
        path=path,
        body=body,
        tenant=tenant,
        signature=sign(body) if signed else signature,
        content_type=content_type,
        headers=extra,
    )
    before = count_events(events)
    resp = exchange_sync(live.host, live.port, request)
    assert resp is not None, "the service closed the connection without an answer"
    event(f"status {resp.status}")
    assert 200 <= resp.status < 500, (resp.status, resp.body[:300])
    assert resp.headers["content-type"].startswith("application/json")
    if resp.status >= 400:
        doc = orjson.loads(resp.body)
        assert set(doc) == {"error", "detail"}
        assert count_events(events) == before
    else:
        assert resp.status in (200, 201)


def test_any_request_is_answered_2xx_or_4xx_and_logs_no_error(live: Live, events: psycopg.Connection) -> None:
    """The property above, then the service's own log over the same requests:
    an unhandled exception or a 5xx leaves an "error" line (with its
    traceback) even where the answer looked fine. One test, so the log check
    always has the property's requests to look at, run alone or not."""
    logged_before = len(live.log().splitlines())
    any_request_is_answered_2xx_or_4xx_never_5xx(live=live, events=events)
    logged = live.log().splitlines()[logged_before:]
    errors = [line for line in logged if '"level":"error"' in line or "Traceback" in line]
    assert errors == []


# Every provider scheme (issue 4) raises only the service's own errors
# (IngestError: 401 invalid_signature, 400 for a body it cannot read), for
# any body and any values of the headers it reads.
SCHEME_HEADERS = [
    "x-square-hmacsha256-signature", "X-Shopify-Hmac-Sha256", "X-Shopify-Webhook-Id", "X-Shopify-Event-Id",
    "X-Shopify-Shop-Domain", "Stripe-Signature", "webhook-id", "webhook-timestamp", "webhook-signature",
    "Toast-Signature", "Toast-Restaurant-External-ID", "X-Clover-Auth", "X-Signature", "Idempotency-Key",
]
SCHEMES = build_sources(parse_sources(SOURCES_TOML + """
[sources.pos]
scheme = "hmac-sha256"
secrets = ["k"]
""", {}), lambda: float(NOW)).schemes


@given(
    source=st.sampled_from(sorted(SCHEMES)),
    body=mostly(json_documents, st.binary(max_size=1024)),
    values=st.dictionaries(st.sampled_from(SCHEME_HEADERS), header_text, max_size=6),
)
@settings(max_examples=500, deadline=None)
def test_provider_schemes_raise_only_the_services_own_errors(source: str, body: bytes, values: dict[str, str]) -> None:
    try:
        SCHEMES[source].read(CIMultiDict(values), body)
    except IngestError as exc:
        assert 400 <= exc.status < 500, exc
