"""scheme = "stripe": ``Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]``.

Each v1 is hex HMAC-SHA256 over ``"{t}." + body``, keyed with the
``whsec_...`` string's own bytes (not decoded). Any v1 matching any secret
passes (Stripe sends several while its own secret rolls). ``t`` further than
tolerance_seconds from now, either way, is 401. Key: the body's ``id``
(``evt_...``), the same on every retry, which is re-signed with a new ``t``.
Tenant: the body's ``account`` (Connect events) when present.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from codex_ingest.errors import InvalidSignature
from codex_ingest.intake.schemes.base import (
    Clock,
    Delivery,
    Headers,
    check_fresh,
    event_key,
    parse_object,
    required_header,
    tenant_hint,
)
from codex_ingest.intake.signatures import HmacKeys, decode_hex_digest

HEADER = "Stripe-Signature"
_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")


def parse_header(header: str) -> tuple[int, list[bytes]]:
    """(t, the v1 digests) from a Stripe-Signature value; InvalidSignature when malformed."""
    timestamps: list[str] = []
    signatures: list[bytes] = []
    for item in header.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep:
            raise InvalidSignature(f"{HEADER} must be t=<unix time>,v1=<hex>[,...]")
        if name == "t":
            timestamps.append(value)
        elif name == "v1":
            digest = decode_hex_digest(value)
            if digest is not None:
                signatures.append(digest)
        # Other schemes (v0, ...) are ignored, as Stripe's own libraries do.
    if len(timestamps) != 1 or _TIMESTAMP.fullmatch(timestamps[0]) is None:
        raise InvalidSignature(f"{HEADER} must carry one t=<unix time>")
    if not signatures:
        raise InvalidSignature(f"{HEADER} carries no v1=<64 hex digits> signature")
    return int(timestamps[0]), signatures


class StripeScheme:
    kept_headers = (HEADER,)
    fan_out = False
    tenant_from_request = False

    def __init__(self, secrets: Sequence[str], tolerance: int, clock: Clock) -> None:
        self._keys = HmacKeys(s.encode("utf-8") for s in secrets)
        self._tolerance = tolerance
        self._clock = clock

    def read(self, headers: Headers, body: bytes) -> list[Delivery]:
        timestamp, signatures = parse_header(required_header(headers, HEADER))
        self._keys.verify(signatures, f"{timestamp}.".encode("ascii"), body, name=HEADER)
        # Freshness after the MAC: an unsigned t says nothing either way.
        check_fresh(timestamp, self._clock(), self._tolerance, f"{HEADER} t")
        document = parse_object(body)
        return [
            Delivery(
                key=event_key(document.get("id"), "id"),
                tenant=tenant_hint(document.get("account"), "account"),
                body=body,
            )
        ]
