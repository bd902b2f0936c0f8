"""``codex-ingest smoke``: check a running service from the outside.

Six steps over HTTP(S), with urllib and prometheus_client's parser: /healthz 200,
/readyz 200, a signed event 201, the same event again 200 with the same
event_id and ``Idempotent-Replayed: true``, a wrong signature 401, and
/metrics parsing as Prometheus text with ``codex_ingest_events_total`` (read
last, so the counter has samples even on a fresh service). One line per
step, then a verdict; exit 0 only when every step passed, else 1.

The event goes to its own tenant and source with a new Idempotency-Key each
run, so the check can run against production: each run stores one small
event under (``smoke-check``, ``smoke``, ``smoke-<random>``) and nothing
else. The secret is never printed.

With the service's sources file (``--sources``, else CODEX_SOURCES), a
``--source`` declared there with one of the service's own schemes is signed
in its form (``hmac-sha256-bound``: ``t=<now>,v2=`` over the time, tenant,
route, key and body; ``hmac-sha256-body`` or ``hmac-sha256``: ``sha256=``
over the body) with its own first secret, or the ``--tenant``'s own first
one when the source lists its tenants (read by serve's loader; no other
source's secret is resolved); one declared with a provider's scheme, an
undeclared one under ``strict_sources``, or a tenant the source does not
list, is refused up front (exit 2): the service would answer 401 or 404.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any, TextIO

from prometheus_client.parser import text_string_to_metric_families

from codex_ingest.cli.common import EXIT_CONFIG, EXIT_FAILURE
from codex_ingest.intake.checks import SOURCE_PATTERN, TENANT_PATTERN
from codex_ingest.intake.sources import BOUND, GENERIC, SourcesError, load_sources

DEFAULT_TENANT = "smoke-check"
DEFAULT_SOURCE = "smoke"
DEFAULT_TIMEOUT = 5.0
EVENTS_COUNTER = "codex_ingest_events_total"
# The schemes of the sources file smoke can sign: the service's own X-Signature, either form.
SMOKE_SOURCE_EXAMPLE = (f'[sources.smoke] scheme = "{BOUND}", secrets = ["env:SMOKE_SECRET"] '
                        '(or scheme = "hmac-sha256" or "hmac-sha256-body" to sign the body alone)')


class UsageError(Exception):
    """A bad argument, or a check that cannot work as asked; one line, exit 2."""


class Unreachable(Exception):
    """The service gave no HTTP answer: refused, timed out, reset, not HTTP."""


class StepFailed(Exception):
    """The service answered, but not as the contract says."""


class NotRun(StepFailed):
    """A step that could not be tried, because one before it failed."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Message
    body: bytes

    def json(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.body)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise StepFailed(f"{self.status}, body is not a JSON object")
        return doc


@dataclass(frozen=True)
class Signer:
    """How the service verifies the smoke event's X-Signature: the key, and
    whether the signature is bound to the time, tenant, route and key
    (scheme hmac-sha256-bound) or covers the body alone."""

    secret: bytes = field(repr=False)
    bound: bool = False

    def sign(self, body: bytes, *, tenant: str, source: str, key: str) -> str:
        if not self.bound:
            return "sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest()
        t = int(time.time())
        head = f"{t}\n{tenant}\n/pos/{source}/ingest\n{key}\n".encode()
        return f"t={t},v2=" + hmac.new(self.secret, head + body, hashlib.sha256).hexdigest()

    def wrong(self) -> str:
        """A well-formed signature that signs nothing."""
        return f"t={int(time.time())},v2={'0' * 64}" if self.bound else "sha256=" + "0" * 64


@dataclass
class Check:
    url: str
    signer: Signer
    tenant: str
    source: str
    timeout: float
    key: str = ""
    body: bytes = b""
    event_id: int | None = None

    def request(self, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None) -> Answer:
        request = urllib.request.Request(self.url + path, data=body, headers=dict(headers or {}),
                                         method="GET" if body is None else "POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                return Answer(resp.status, resp.headers, resp.read())
        except urllib.error.HTTPError as err:  # 4xx and 5xx are answers too
            with err:
                return Answer(err.code, err.headers, err.read())
        except urllib.error.URLError as err:
            raise Unreachable(_transport(err.reason, self.timeout)) from None
        except (OSError, http.client.HTTPException) as err:
            raise Unreachable(_transport(err, self.timeout)) from None

    def post_event(self, body: bytes, signature: str) -> Answer:
        return self.request(f"/pos/{self.source}/ingest", body, {
            "Content-Type": "application/json",
            "X-Tenant-Id": self.tenant,
            "Idempotency-Key": self.key,
            "X-Signature": signature,
        })

    def sign(self, body: bytes) -> str:
        return self.signer.sign(body, tenant=self.tenant, source=self.source, key=self.key)

    # -- the steps, in order; each returns its detail or raises ---------------

    def healthz(self) -> str:
        return self.probe("/healthz")

    def readyz(self) -> str:
        return self.probe("/readyz")

    def probe(self, path: str) -> str:
        answer = self.request(path)
        _expect(answer, 200)
        return f"200 {answer.json().get('status')}"

    def event(self) -> str:
        self.key = f"smoke-{uuid.uuid4().hex}"
        self.body = json.dumps({"type": "smoke.check", "id": self.key, "sent_at": time.time()}).encode()
        answer = self.post_event(self.body, self.sign(self.body))
        _expect(answer, 201)
        event_id = answer.json().get("event_id")
        if not isinstance(event_id, int):
            raise StepFailed("201 without an event_id")
        self.event_id = event_id
        return f"201 accepted, event_id {event_id} (tenant {self.tenant}, source {self.source}, key {self.key})"

    def replay(self) -> str:
        if self.event_id is None:
            raise NotRun("not run: the event step stored no event")
        answer = self.post_event(self.body, self.sign(self.body))
        _expect(answer, 200)
        event_id = answer.json().get("event_id")
        if event_id != self.event_id:
            raise StepFailed(f"200 with event_id {event_id}, expected {self.event_id}")
        replayed = answer.headers.get("Idempotent-Replayed")
        if replayed != "true":
            raise StepFailed(f"200 with Idempotent-Replayed: {replayed}, expected true")
        return f"200 duplicate, same event_id {event_id}, Idempotent-Replayed: true"

    def bad_signature(self) -> str:
        body = json.dumps({"type": "smoke.check", "id": f"{self.key}-unsigned"}).encode()
        answer = self.post_event(body, self.signer.wrong())
        _expect(answer, 401)
        return f"401 {answer.json().get('error')}"

    def metrics(self) -> str:
        answer = self.request("/metrics")
        _expect(answer, 200)
        try:
            samples = [s for family in text_string_to_metric_families(answer.body.decode())
                       for s in family.samples if s.name == EVENTS_COUNTER]
        except ValueError as exc:
            raise StepFailed(f"not Prometheus text: {exc}") from None
        if not samples:
            raise StepFailed(f"parsed, but no {EVENTS_COUNTER}")
        return f"parsed, {EVENTS_COUNTER}: {len(samples)} series"


def _expect(answer: Answer, status: int) -> None:
    if answer.status != status:
        try:
            doc = answer.json()
            said = f" {doc.get('error') or doc.get('status') or ''}".rstrip()
        except StepFailed:
            said = ""
        raise StepFailed(f"{answer.status}{said}, expected {status}")


def _transport(reason: object, timeout: float) -> str:
    if isinstance(reason, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, BaseException):
        return f"{reason.__class__.__name__}: {reason}"
    return str(reason)


def signer_for(source: str, tenant: str, secret: str, sources: Path | None, origin: str = "--sources",
               environ: Mapping[str, str] | None = None) -> Signer:
    """How the service verifies ``source``'s events: a source declared with
    one of its own schemes, in that scheme's form, with the source's (or the
    tenant's) own first secret; else ``secret`` (WEBHOOK_SECRET's) over the
    body, for a source the sources file does not declare. UsageError when
    smoke cannot sign for it."""
    if sources is not None:
        try:
            config = load_sources(sources, os.environ if environ is None else environ,
                                  build=lambda name, scheme: name == source and scheme in GENERIC)
        except SourcesError as exc:
            raise UsageError(f"{origin} {exc}") from None
        scheme = config.schemes.get(source)
        if scheme in GENERIC:
            spec = config.sources[source]
            if spec.tenants is None:
                own = spec.secrets[0]
            elif tenant in spec.tenants:
                own = spec.tenants[tenant][0]
            else:
                raise UsageError(
                    f"--tenant {tenant} is not listed in [sources.{source}.tenants] of {sources} (the service would "
                    f"answer 401): pass --tenant with a tenant listed there, or list one for the smoke check")
            return Signer(own.encode(), bound=scheme == BOUND)
        if scheme is not None:
            raise UsageError(
                f"--source {source} is declared in {sources} with scheme {scheme!r}, which smoke cannot sign: "
                f"declare a source of the service's own scheme for the smoke check, e.g. {SMOKE_SOURCE_EXAMPLE}, "
                f"and pass --source with its name")
        if config.strict:
            raise UsageError(
                f"--source {source} is not declared in {sources}, which sets strict_sources = true "
                f"(the service would answer 404): declare a source for the smoke check, "
                f"e.g. {SMOKE_SOURCE_EXAMPLE}, and pass --source with its name")
    if not secret:
        raise UsageError("--secret or WEBHOOK_SECRET is required")
    return Signer(secret.encode())


def smoke(url: str, secret: str, *, tenant: str = DEFAULT_TENANT, source: str = DEFAULT_SOURCE,
          timeout: float = DEFAULT_TIMEOUT, sources: Path | None = None, sources_origin: str = "--sources",
          environ: Mapping[str, str] | None = None, out: TextIO = sys.stdout) -> int:
    """Run every step against ``url``; print one line each and a verdict.
    0: every step passed; 1: one failed; 2: a bad argument (one line on stderr).

    ``sources``: the service's sources file (``sources_origin`` names where it
    came from in errors); ``environ`` resolves its ``env:NAME`` secrets."""
    problem = (
        "--url must start with http:// or https://" if not url.startswith(("http://", "https://"))
        else f"--source must match {SOURCE_PATTERN.pattern}" if SOURCE_PATTERN.fullmatch(source) is None
        else f"--tenant must match {TENANT_PATTERN.pattern}" if TENANT_PATTERN.fullmatch(tenant) is None
        else f"--timeout must be a positive number of seconds, not {timeout:g}" if not timeout > 0
        else None
    )
    try:
        if problem is not None:
            raise UsageError(problem)
        signer = signer_for(source, tenant, secret, sources, sources_origin, environ)
    except UsageError as exc:
        print(f"codex-ingest smoke: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    check = Check(url.rstrip("/"), signer, tenant, source, timeout)
    steps: dict[str, Callable[[], str]] = {
        "healthz": check.healthz, "readyz": check.readyz, "event": check.event,
        "replay": check.replay, "bad-signature": check.bad_signature, "metrics": check.metrics,
    }
    failed: list[str] = []
    not_run: list[str] = []
    unreachable = False
    for name, step in steps.items():
        try:
            if unreachable:
                raise NotRun("not run: the service did not answer")
            ok, detail = True, step()
        except NotRun as exc:
            ok, detail = False, str(exc)
            not_run.append(name)
        except StepFailed as exc:
            ok, detail = False, str(exc)
            failed.append(name)
        except Unreachable as exc:
            ok, detail, unreachable = False, f"{exc} ({check.url})", True
            failed.append(name)
        print(f"{name:<14} {'ok' if ok else 'FAIL':<4}  {detail}", file=out, flush=True)
    passed = len(steps) - len(failed) - len(not_run)
    if passed < len(steps):
        print(f"FAIL: {passed}/{len(steps)} steps passed; failed: {', '.join(failed)}"
              + (f"; not run: {', '.join(not_run)}" if not_run else ""), file=out)
        return EXIT_FAILURE
    print(f"PASS: {len(steps)}/{len(steps)} steps passed against {check.url}", file=out)
    return 0
