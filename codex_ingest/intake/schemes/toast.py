"""scheme = "toast": ``Toast-Signature`` is base64(HMAC-SHA256(secret, body + timestamp)).

Toast's "Message signing" guide says the signature is computed over "the
body and timestamp of the webhook message" concatenated (its Java sample:
``getSignature(secret, body, timestamp)`` = Base64(HMAC-SHA256(secret,
body + timestamp)), UTF-8), but does not say where that timestamp is carried.
Toast lists no timestamp header; its message schema has a top-level
``"timestamp"`` field. So the timestamp signed here is that field's string
value, exactly as it appears in the body, appended to the raw body bytes.
(An assumption; see docs/providers.md, "Toast".)

Because that timestamp is the event's own time, it is also checked against
tolerance_seconds. Key: the body's ``guid``. Tenant:
``Toast-Restaurant-External-ID``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from codex_ingest.errors import InvalidJSON, InvalidSignature
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
from codex_ingest.intake.signatures import HmacKeys, decode_base64_digest

HEADER = "Toast-Signature"


def signed_time(document: dict[str, object]) -> tuple[bytes, float]:
    """The body's timestamp: (the bytes that are signed, seconds since the epoch)."""
    value = document.get("timestamp")
    if not isinstance(value, str):
        raise InvalidSignature("Toast signs the body's timestamp, and the body has none")
    try:
        signed = value.encode("utf-8")
        moment = datetime.fromisoformat(value)
    except (UnicodeEncodeError, ValueError):
        raise InvalidSignature("the body's timestamp is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # Toast's timestamps are UTC
    return signed, moment.timestamp()


class ToastScheme:
    kept_headers = (HEADER, "Toast-Restaurant-External-ID")
    fan_out = False
    tenant_from_request = False

    def __init__(self, secrets: Sequence[str], tolerance: int, clock: Clock) -> None:
        self._keys = HmacKeys(s.encode("utf-8") for s in secrets)
        self._tolerance = tolerance
        self._clock = clock

    def read(self, headers: Headers, body: bytes) -> list[Delivery]:
        signature = decode_base64_digest(required_header(headers, HEADER), HEADER)
        # The signed timestamp is inside the body, so the body is parsed
        # first; a body that is not JSON cannot be verified at all.
        try:
            document = parse_object(body)
        except InvalidJSON:
            raise InvalidSignature("Toast signs the body's timestamp; the body is not a JSON object") from None
        signed, moment = signed_time(document)
        self._keys.verify([signature], body, signed, name=HEADER)
        check_fresh(moment, self._clock(), self._tolerance, "the body's timestamp")
        return [
            Delivery(
                key=event_key(document.get("guid"), "guid"),
                tenant=tenant_hint(headers.get("Toast-Restaurant-External-ID"), "Toast-Restaurant-External-ID"),
                body=body,
            )
        ]

