"""The service's own schemes, for in-house senders and every source the
sources file does not declare: an ``X-Signature`` header (``X-Webhook-Signature``
is an alias), HMAC-SHA256.

Two forms share everything but what is signed:

* body-only (this module): ``X-Signature: sha256=<hex>`` (or bare hex) over
  the body. An undeclared source gets it keyed with WEBHOOK_SECRET; a source
  declared with ``scheme = "hmac-sha256-body"`` (or its old name,
  ``"hmac-sha256"``) with its own secrets. It signs neither the tenant, the
  route, the key nor a time: a captured request can be sent again, forever,
  under another tenant, source or key (docs/security.md).
* bound (bound.py, ``scheme = "hmac-sha256-bound"``, the default for a
  declared source): ``t=<unix>,v2=<hex>`` over the time, tenant, route,
  Idempotency-Key and body.

Either way: the key is Idempotency-Key, else the body's SHA-256; the tenant
comes only from X-Tenant-Id or ?tenant=; the body must be a JSON object or
array; with a tenants table, a tenant's request is verified with that
tenant's own secrets alone (signatures.KeyRing).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from codex_ingest.intake.checks import check_idempotency_key, check_json
from codex_ingest.intake.schemes.base import Delivery, Headers, Target
from codex_ingest.intake.signatures import KeyRing, parse_x_signature


def signature_header(headers: Headers) -> str | None:
    signature = headers.get("X-Signature")
    if signature is None:
        signature = headers.get("X-Webhook-Signature")
    return signature


class GenericScheme:
    """What both forms share: one event per request, the tenant named by the
    request, batches taken. Subclasses say what the signature covers."""

    fan_out = False
    tenant_from_request = True
    # What the signature covers besides the body (X-Tenant-Id may be ?tenant= instead).
    kept_headers = ("X-Signature", "X-Webhook-Signature", "Idempotency-Key", "X-Tenant-Id")

    __slots__ = ("_keys",)

    def __init__(self, secrets: Sequence[str], tenants: Mapping[str, Sequence[str]] | None = None) -> None:
        self._keys = KeyRing(secrets, tenants)

    def read(self, headers: Headers, body: bytes, target: Target | None = None) -> list[Delivery]:
        client_key = check_idempotency_key(headers.get("Idempotency-Key"))
        self.verify(headers, body, target)
        check_json(body)
        return [Delivery(key=client_key, tenant=None, body=body)]

    def verify(self, headers: Headers, body: bytes, target: Target | None = None) -> None:
        """The signature alone: also what a batch request is checked with, as a whole.
        ``target``: where the request was sent (None: not known, as in a unit test of the body-only form)."""
        raise NotImplementedError


class GenericHmacScheme(GenericScheme):
    """Body-only: ``X-Signature: sha256=<hex>`` over the body alone."""

    __slots__ = ()

    def verify(self, headers: Headers, body: bytes, target: Target | None = None) -> None:
        digest = parse_x_signature(signature_header(headers))
        self._keys.for_tenant(None if target is None else target.tenant).verify([digest], body, name="X-Signature")
