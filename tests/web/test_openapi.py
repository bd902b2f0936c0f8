"""The OpenAPI document (GET /openapi.json): valid, true to the router, and
fuzzed by schemathesis against a live serve with every ingest request signed
by a hook — zero server errors, responses conforming to the document."""

from __future__ import annotations

import json
import urllib.request
from collections import Counter
from importlib import resources
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import OpenAPIV31SpecValidator
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from codex_ingest.settings import ReadToken, Settings
from codex_ingest.web.app import create_app
from tests.helpers import READ_TOKEN, SECRET, sign
from tests.live import Live

DOCUMENT = json.loads(resources.files("codex_ingest.web").joinpath("openapi.json").read_text())
schema = schemathesis.openapi.from_dict(DOCUMENT)
INGEST = ("POST", "/pos/{source}/ingest")
BATCH = ("POST", "/pos/{source}/ingest/batch")
READ = ("GET", "/events")
STATUSES: Counter[int] = Counter()


@schemathesis.hook
def before_call(context: schemathesis.HookContext, case: schemathesis.Case, kwargs: dict[str, Any]) -> None:
    """Sign every ingest request the way a provider would: serialize the body
    here, send exactly those bytes, and put their HMAC in X-Signature (only
    when the case has an X-Signature: a case testing its absence keeps it absent)."""
    if (case.method.upper(), case.path) == READ:
        # The read token in place of the generated one (a case testing its
        # absence keeps it absent); waits kept short so the fuzzing stays quick.
        for name in list(case.headers or {}):
            if name.lower() == "authorization":
                case.headers[name] = f"Bearer {READ_TOKEN}"
        if case.query and isinstance(case.query.get("wait"), (int, float)) and case.query["wait"] > 0.2:
            case.query["wait"] = 0.2
        return
    if (case.method.upper(), case.path) not in (INGEST, BATCH):
        return
    body = case.body
    if isinstance(body, bytes):
        raw = body
    elif isinstance(body, str):  # an NDJSON batch
        raw = body.encode()
    elif type(body).__name__ == "NotSet":
        raw = b""
    else:
        raw = json.dumps(body).encode()
    kwargs["data"] = raw
    headers = case.headers if case.headers is not None else {}
    for name in list(headers):
        if name.lower() == "x-signature":
            headers[name] = sign(raw)


@schemathesis.serializer("application/x-ndjson")
def ndjson(context: Any, value: Any) -> dict[str, Any]:
    """Batches as NDJSON: the generated text as the body (before_call signs those bytes)."""
    return {"data": value.encode() if isinstance(value, str) else bytes(value)}


@schemathesis.hook
def after_call(context: schemathesis.HookContext, case: schemathesis.Case, response: schemathesis.Response) -> None:
    STATUSES[response.status_code] += 1


def test_document_is_valid_openapi_3_1() -> None:
    assert DOCUMENT["openapi"] == "3.1.0"
    OpenAPIV31SpecValidator(DOCUMENT).validate()  # raises on any departure from the 3.1 meta-schema
    with pytest.raises(OpenAPIValidationError):
        OpenAPIV31SpecValidator({**DOCUMENT, "paths": {"/x": {"get": {"responses": {"200": {}}}}}}).validate()


def test_document_loads_and_is_valid_openapi_3() -> None:
    loaded = schemathesis.openapi.from_dict(DOCUMENT)
    operations = [op.ok() for op in loaded.get_all_operations()]
    assert DOCUMENT["openapi"].startswith("3.")
    assert {(op.method.upper(), op.path) for op in operations} >= {INGEST, ("GET", "/healthz")}


def test_document_matches_the_routes(database_url: str) -> None:
    # With a read token, so that every route the service can serve is registered.
    app = create_app(Settings(webhook_secret=SECRET, database_url=database_url, api_tokens=(ReadToken(READ_TOKEN, None),)))
    routes = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None
    }
    documented = {(method.upper(), path) for path, item in DOCUMENT["paths"].items() for method in item}
    assert documented == routes


def test_served_document_is_the_file(live: Live) -> None:
    with urllib.request.urlopen(live.url + "/openapi.json", timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("application/json")
        assert json.loads(resp.read()) == DOCUMENT


# Every default check runs (not_a_server_error, status code, content type,
# headers and body conformance, negative data rejection, missing required
# headers, unsupported methods, ...) except positive_data_acceptance, which
# expects every schema-valid request to succeed. Two refusals of valid-looking
# requests are the contract: the tenant comes from X-Tenant-Id *or* ?tenant=
# (OpenAPI cannot say "one of the two is required"), so a request with neither
# is 400; and a key reused with another body is 422.
@schema.parametrize()
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
def test_api(case: schemathesis.Case, live: Live) -> None:
    excluded = [positive_data_acceptance]
    if (case.method.upper(), case.path) == BATCH:
        # A batch with items that are not events is still answered 200, those
        # items "invalid" and the others stored: the contract, which a schema
        # for the body cannot express (and an NDJSON body is any text).
        excluded.append(negative_data_rejection)
    response = case.call_and_validate(base_url=live.url, excluded_checks=excluded)
    assert response.status_code < 500


def test_fuzzing_saw_no_server_error_and_reached_the_database(live: Live) -> None:
    # After test_api (same module, in order): what it got, in total.
    print(f"schemathesis: {sum(STATUSES.values())} requests, statuses {dict(sorted(STATUSES.items()))}")
    assert sum(STATUSES.values()) > 0
    assert not [status for status in STATUSES if status >= 500], STATUSES
    assert STATUSES[201] > 0, STATUSES  # signed, valid events were stored, not just refused
    errors = [line for line in live.log().splitlines() if '"level":"error"' in line or "Traceback" in line]
    assert errors == []
