"""The service's own scheme, for in-house senders and every source the
sources file does not declare: ``X-Signature: sha256=<hex>`` (or bare hex;
``X-Webhook-Signature`` is an alias) over the body, HMAC-SHA256.

An undeclared source gets it keyed with WEBHOOK_SECRET; a source declared
with ``scheme = "hmac-sha256"`` gets it keyed with its own list of secrets
(rotation). Either way: the key is Idempotency-Key, else the body's
SHA-256; the tenant comes only from X-Tenant-Id or ?tenant=; the body must
be a JSON object or array.
"""

from __future__ import annotations

from collections.abc import Sequence

from codex_ingest.intake.checks import check_idempotency_key, check_json
from codex_ingest.intake.schemes.base import Delivery, Headers
from codex_ingest.intake.signatures import HmacSha256Verifier


class GenericHmacScheme:
    fan_out = False
    tenant_from_request = True

    __slots__ = ("_verifier",)

    def __init__(self, secrets: Sequence[str]) -> None:
        self._verifier = HmacSha256Verifier(*secrets)

    def read(self, headers: Headers, body: bytes) -> list[Delivery]:
        client_key = check_idempotency_key(headers.get("Idempotency-Key"))
        self.verify(headers, body)
        check_json(body)
        return [Delivery(key=client_key, tenant=None, body=body)]

    def verify(self, headers: Headers, body: bytes) -> None:
        """The signature alone: also what a batch request is checked with, as a whole."""
        signature = headers.get("X-Signature")
        if signature is None:
            signature = headers.get("X-Webhook-Signature")
        self._verifier.verify(body, signature)
