"""scheme = "shopify": ``X-Shopify-Hmac-Sha256`` is base64(HMAC-SHA256(app secret, body)).

Key: ``X-Shopify-Webhook-Id`` (the same on every retry of one delivery),
else ``X-Shopify-Event-Id``. Tenant: ``X-Shopify-Shop-Domain``. Shopify signs
only the body, so these headers are not covered by the signature; they are
what Shopify documents for deduplication and for naming the shop.
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

HEADER = "X-Shopify-Hmac-Sha256"


class ShopifyScheme:
    kept_headers = (HEADER, "X-Shopify-Topic", "X-Shopify-Shop-Domain", "X-Shopify-Webhook-Id", "X-Shopify-Event-Id",
                    "X-Shopify-API-Version", "X-Shopify-Triggered-At")
    fan_out = False
    tenant_from_request = False

    def __init__(self, secrets: Sequence[str]) -> None:
        self._keys = HmacKeys(s.encode("utf-8") for s in secrets)

    def read(self, headers: Headers, body: bytes) -> list[Delivery]:
        signature = decode_base64_digest(required_header(headers, HEADER), HEADER)
        self._keys.verify([signature], body, name=HEADER)
        parse_object(body)
        webhook_id = headers.get("X-Shopify-Webhook-Id")
        if webhook_id is None:
            webhook_id = headers.get("X-Shopify-Event-Id")
        return [
            Delivery(
                key=event_key(webhook_id, "X-Shopify-Webhook-Id (or X-Shopify-Event-Id)"),
                tenant=tenant_hint(headers.get("X-Shopify-Shop-Domain"), "X-Shopify-Shop-Domain"),
                body=body,
            )
        ]
