"""scheme = "hmac-sha256": the service's own X-Signature scheme, with a
source's own list of secrets (rotation) instead of WEBHOOK_SECRET.

Same contract as an undeclared source: ``X-Signature: sha256=<hex>`` (or
bare hex; ``X-Webhook-Signature`` is an alias) over the body; the key is
Idempotency-Key, else the body's SHA-256; the tenant comes only from
X-Tenant-Id or ?tenant=.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from codex_ingest.errors import InvalidSignature
from codex_ingest.intake import check_idempotency_key, check_json
from codex_ingest.providers.base import Delivery, Headers, HmacKeys

_SIGNATURE = re.compile(r"^(?:sha256=)?([0-9a-fA-F]{64})$")


class GenericHmacScheme:
    fan_out = False

    def __init__(self, secrets: Sequence[str]) -> None:
        self._keys = HmacKeys(s.encode("utf-8") for s in secrets)

    def read(self, headers: Headers, body: bytes) -> list[Delivery]:
        client_key = check_idempotency_key(headers.get("Idempotency-Key"))
        header = headers.get("X-Signature")
        if header is None:
            header = headers.get("X-Webhook-Signature")
        if header is None:
            raise InvalidSignature("X-Signature header is missing")
        match = _SIGNATURE.match(header.strip())
        if match is None:
            raise InvalidSignature("X-Signature must be sha256=<64 hex digits>")
        self._keys.verify([bytes.fromhex(match.group(1))], body, name="X-Signature")
        check_json(body)  # an object or an array, as for undeclared sources
        key = client_key if client_key is not None else hashlib.sha256(body).hexdigest()
        return [Delivery(key=key, tenant=None, body=body)]

