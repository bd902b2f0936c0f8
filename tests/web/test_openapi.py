"""The OpenAPI document (GET /openapi.json): valid, true to the router, and
fuzzed by schemathesis against a live serve with every ingest request signed
by a hook — zero server errors, responses conforming to the document.

The live serve of this module declares two destinations, one delivering to a
real receiver and one whose deliveries park (nothing listens on its port), so
that the /destinations routes are fuzzed on real state: their ``name`` is
either generated or one of those two, and the bearer token a case carries is
the read token scoped * (a case testing its absence keeps it absent)."""

from __future__ import annotations

import json
import re
import time
import urllib.request
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from importlib import resources
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from openapi_spec_validator import OpenAPIV31SpecValidator
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from bench.local import free_port
from codex_ingest.settings import ReadToken, Settings
from codex_ingest.web.app import create_app
from codex_ingest.web.every_request import UNMATCHED_NAME
from tests.helpers import READ_TOKEN, SECRET, sign
from tests.live import Live, receiver, serve

DOCUMENT = json.loads(resources.files("codex_ingest.web").joinpath("openapi.json").read_text())
schema = schemathesis.openapi.from_dict(DOCUMENT)
INGEST = ("POST", "/pos/{source}/ingest")
BATCH = ("POST", "/pos/{source}/ingest/batch")
READ = ("GET", "/events")
LIST = ("GET", "/destinations")
ATTEMPTS = ("GET", "/destinations/{name}/attempts")
REPLAY = ("POST", "/destinations/{name}/replay")
RETRY = ("POST", "/destinations/{name}/retry")
ENABLE = ("POST", "/destinations/{name}/enable")
DISABLE = ("POST", "/destinations/{name}/disable")
DESTINATION_ROUTES = (LIST, ATTEMPTS, REPLAY, RETRY, ENABLE, DISABLE)
NAMED_ROUTES = DESTINATION_ROUTES[1:]
# The read token scoped * stands in for whatever bearer token a case of these carries.
AUTHORIZED = (READ, *DESTINATION_ROUTES)
# The live serve's destinations: DELIVERED to a real receiver answering 200, PARKED to a
# port nothing listens on, one retry 50 ms later and then parked.
DELIVERED = "warehouse"
PARKED = "nowhere"
WHSEC = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # base64 of 24 bytes
NAME = re.compile(DOCUMENT["paths"]["/destinations/{name}/attempts"]["get"]["parameters"][0]["schema"]["pattern"])
STATUSES: Counter[int] = Counter()
# (method, path) -> Counter of statuses, for the operations of DESTINATION_ROUTES.
BY_OPERATION: dict[tuple[str, str], Counter[int]] = {route: Counter() for route in DESTINATION_ROUTES}
# What the answers of the destination routes showed: a 2xx for a declared name, a 404 for
# another (unknown_destination), attempt rows, names listed.
SEEN: Counter[str] = Counter()


@schemathesis.hook
def before_call(context: schemathesis.HookContext, case: schemathesis.Case, kwargs: dict[str, Any]) -> None:
    """Sign every ingest request the way a provider would: serialize the body
    here, send exactly those bytes, and put their HMAC in X-Signature (only
    when the case has an X-Signature: a case testing its absence keeps it absent)."""
    if (case.method.upper(), case.path) in AUTHORIZED:
        # The read token (scoped *) in place of the generated one (a case testing
        # its absence keeps it absent); waits kept short so the fuzzing stays quick.
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
def flatmap_path_parameters(context: schemathesis.HookContext, path_parameters: dict[str, Any]) -> st.SearchStrategy:
    """A destination's ``name``: the one generated, or either declared destination in its
    place, when the generated one is a valid name (a case testing an invalid name keeps it)."""
    operation = context.operation
    name = path_parameters.get("name") if isinstance(path_parameters, dict) else None
    if (operation is None or (operation.method.upper(), operation.path) not in NAMED_ROUTES
            or not isinstance(name, str) or NAME.fullmatch(name) is None):
        return st.just(path_parameters)
    return st.sampled_from([{**path_parameters, "name": declared} for declared in (DELIVERED, PARKED)]
                           + [path_parameters])


@schemathesis.hook
def map_case(context: schemathesis.HookContext, case: schemathesis.Case) -> schemathesis.Case:
    """The coverage phase (which flatmap_path_parameters does not reach): a case about
    anything but ``name`` (the body, the query, a header, the token) is aimed at a declared
    destination, chosen by its description, so that the handler judges it past the 404;
    a case about ``name`` keeps the name it tests."""
    meta = case.meta
    if ((case.method.upper(), case.path) not in NAMED_ROUTES or meta is None or meta.phase.name != "coverage"
            or meta.phase.data.parameter_location == "path"):
        return case
    name = (case.path_parameters or {}).get("name")
    if isinstance(name, str) and NAME.fullmatch(name) is not None:
        declared = (DELIVERED, PARKED)[zlib.crc32(str(meta.phase.data.description).encode()) % 2]
        case.path_parameters = {**case.path_parameters, "name": declared}
    return case


@schemathesis.hook
def after_call(context: schemathesis.HookContext, case: schemathesis.Case, response: schemathesis.Response) -> None:
    STATUSES[response.status_code] += 1
    route = (case.method.upper(), case.path)
    if route not in BY_OPERATION:
        return
    BY_OPERATION[route][response.status_code] += 1
    name = (case.path_parameters or {}).get("name")
    try:  # only counted here: whether the answer conforms is for the checks to say
        document = response.json()
        if 200 <= response.status_code < 300:
            SEEN[f"{route} 2xx for {name}"] += 1
            if route == LIST:
                for destination in document["destinations"]:
                    SEEN[f"listed {destination['name']}"] += 1
            elif route == ATTEMPTS:
                SEEN["attempt rows"] += len(document["attempts"])
                SEEN["attempts without an answer"] += sum(a["status"] is None for a in document["attempts"])
            elif route == RETRY:
                SEEN["retried"] += document["retried"]
        elif response.status_code == 404 and document["error"] == "unknown_destination":
            SEEN[f"{route} unknown_destination"] += 1
    except (ValueError, TypeError, KeyError):
        pass


def _destination(name: str, url: str, **keys: str) -> str:
    lines = [f"[destinations.{name}]", f'url = "{url}"', f'secrets = ["{WHSEC}"]', "allow_private_network = true",
             *(f"{key} = {value}" for key, value in keys.items())]
    return "\n".join(lines) + "\n"


def _call(live: Live, method: str, path: str) -> Any:
    request = urllib.request.Request(live.url + path, method=method,
                                     headers={"Authorization": f"Bearer {READ_TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def _post(live: Live, path: str) -> Any:
    return _call(live, "POST", path)


def _wait(live: Live, condition: Callable[[dict[str, Any]], bool], what: str) -> None:
    """Until ``condition`` holds of GET /destinations (by name), 30 s at most."""
    deadline = time.monotonic() + 30
    while True:
        states = {d["name"]: d for d in _call(live, "GET", "/destinations")["destinations"]}
        if condition(states):
            return
        assert time.monotonic() < deadline, f"not {what} within 30 s: {states}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def live(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """This module's serve (in place of the session's): with a read token scoped *,
    DELIVERED and PARKED declared, and an event already delivered to the one and
    parked at the other, so that every destination route has something to show."""
    sources = tmp_path_factory.mktemp("openapi") / "sources.toml"
    with receiver(WHSEC) as url:
        sources.write_text(_destination(DELIVERED, url)
                           + _destination(PARKED, f"http://127.0.0.1:{free_port()}/hook", retry_schedule="[0.05]"))
        with serve(database_url, HEADER_READ_TIMEOUT="5", BODY_READ_TIMEOUT="5",
                   CODEX_API_TOKENS=f"{READ_TOKEN}=*", CODEX_SOURCES=str(sources)) as service:
            body = b'{"type":"order.created","id":"openapi-primer"}'
            request = urllib.request.Request(
                service.url + "/pos/openapi/ingest", data=body, method="POST",
                headers={"Content-Type": "application/json", "X-Tenant-Id": "tenant-1", "X-Signature": sign(body),
                         "Idempotency-Key": "openapi-primer"})
            with urllib.request.urlopen(request, timeout=10) as resp:
                assert resp.status in (200, 201)
            _wait(service, lambda states: states[DELIVERED]["last_success_at"] is not None
                  and states[PARKED]["parked"] > 0, "the primer event delivered and parked")
            yield service


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
    # The console's HTML pages (/console/, a sub-application) are not the JSON API the document describes,
    # nor is the last route, which answers whatever no other route matched (404, 405).
    routes = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and not route.resource.canonical.startswith("/console")
        and route.name != UNMATCHED_NAME
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
    for route, statuses in BY_OPERATION.items():
        print(f"  {' '.join(route)}: {dict(sorted(statuses.items()))}")
    print(f"  seen: {dict(sorted(SEEN.items()))}")
    assert sum(STATUSES.values()) > 0
    assert not [status for status in STATUSES if status >= 500], STATUSES
    assert STATUSES[201] > 0, STATUSES  # signed, valid events were stored, not just refused
    # Every destination route was answered past authentication, by its handler: a 2xx
    # (for a declared destination), and a 404 unknown_destination for a generated name.
    for route in DESTINATION_ROUTES:
        assert any(200 <= status < 300 for status in BY_OPERATION[route]), (route, BY_OPERATION[route])
    for route in NAMED_ROUTES:
        assert SEEN[f"{route} unknown_destination"] > 0, (route, SEEN)
    assert SEEN[f"listed {DELIVERED}"] > 0 and SEEN[f"listed {PARKED}"] > 0, SEEN
    errors = [line for line in live.log().splitlines() if '"level":"error"' in line or "Traceback" in line]
    assert errors == []


@pytest.mark.parametrize("declared", [DELIVERED, PARKED])
@pytest.mark.parametrize("route", NAMED_ROUTES, ids=" ".join)
def test_each_destination_route_answers_a_declared_destination_as_documented(
        live: Live, route: tuple[str, str], declared: str) -> None:
    """Whatever the fuzzing drew, each route once on each declared destination, with
    every check the fuzzing runs: a 2xx conforming to the document."""
    method, path = route
    if route == RETRY and declared == PARKED:
        # Something to retry, whatever the fuzzing left: enabled, its deliveries parked again.
        _post(live, f"/destinations/{PARKED}/enable")
        _wait(live, lambda states: states[PARKED]["parked"] > 0, "a delivery parked again")
    operation = schema[path][method]
    token = {"Authorization": f"Bearer {READ_TOKEN}"}
    if route == REPLAY:
        case = operation.Case(path_parameters={"name": declared}, headers=token,
                              body={"since": "2000-01-01T00:00:00Z"}, media_type="application/json")
    else:
        case = operation.Case(path_parameters={"name": declared}, headers=token)
    response = case.call_and_validate(base_url=live.url, excluded_checks=[positive_data_acceptance])
    assert 200 <= response.status_code < 300, response.text
    if route == RETRY and declared == PARKED:
        assert response.json()["retried"] > 0
    if route == ATTEMPTS:
        # The primer's attempts: answered 200 by the receiver; refused at the closed port
        # (no answer: status null, error says why).
        attempts = response.json()["attempts"]
        if declared == DELIVERED:
            assert any(a["status"] == 200 and a["error"] is None for a in attempts), attempts
        else:
            assert attempts and all(a["status"] is None and a["error"] for a in attempts), attempts
