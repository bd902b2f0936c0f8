"""scheme = "square": ``x-square-hmacsha256-signature`` is
base64(HMAC-SHA256(signature key, notification_url + body)).

The notification URL is the one registered with Square, byte for byte (it is
signed, so a proxy that rewrites the URL does not matter, but a typo does).
Key: the body's ``event_id``. Tenant: the body's ``merchant_id``.
"""

from __future__ import annotations

from collections.abc import Sequence

from codex_ingest.intake.schemes.base import (
    Delivery,
    Headers,
    event_key,
    parse_object,
    required_header,
    tenant_hint,
)
from codex_ingest.intake.signatures import HmacKeys, decode_base64_digest

HEADER = "x-square-hmacsha256-signature"


class SquareScheme:
    # The legacy SHA-1 signature and Square's delivery headers ride along; the event id is in the body.
    kept_headers = (HEADER, "X-Square-Signature", "Square-Version", "Square-Environment", "Square-Retry-Number",
                    "Square-Retry-Reason", "Square-Initial-Delivery-Timestamp")
    fan_out = False
    tenant_from_request = False

    def __init__(self, secrets: Sequence[str], notification_url: str) -> None:
        # The URL is fed into each keyed state once, here.
        self._keys = HmacKeys((s.encode("utf-8") for s in secrets), prefix=notification_url.encode("utf-8"))

    def read(self, headers: Headers, body: bytes) -> list[Delivery]:
        signature = decode_base64_digest(required_header(headers, HEADER), HEADER)
        self._keys.verify([signature], body, name=HEADER)
        document = parse_object(body)
        return [
            Delivery(
                key=event_key(document.get("event_id"), "event_id"),
                tenant=tenant_hint(document.get("merchant_id"), "merchant_id"),
                body=body,
            )
        ]
