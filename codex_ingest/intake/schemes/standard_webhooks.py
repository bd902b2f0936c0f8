"""scheme = "standard-webhooks" (https://www.standardwebhooks.com, as sent by Svix and others).

Headers ``webhook-id``, ``webhook-timestamp`` (unix seconds) and
``webhook-signature``: a space-separated list of ``v1,<base64>``, each
HMAC-SHA256 over ``"{id}.{timestamp}." + body``. The secret is ``whsec_``
followed by the base64 of the key; the key is decoded once, at start-up.
A timestamp further than tolerance_seconds from now is 401. Key:
``webhook-id`` (signed, and the same on every retry). The scheme names no
tenant: send X-Tenant-Id or ?tenant= (register the URL with ?tenant=...).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence

from codex_ingest.errors import InvalidSignature
from codex_ingest.intake.checks import IDEMPOTENCY_KEY_PATTERN
from codex_ingest.intake.schemes.base import (
    Clock,
    Delivery,
    Headers,
    check_fresh,
    parse_object,
    required_header,
)
from codex_ingest.intake.signatures import HmacKeys

SECRET_PREFIX = "whsec_"
_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")


def decode_secret(secret: str) -> bytes:
    """The HMAC key inside ``whsec_<base64>``; ValueError (naming no value) when it is not one."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("must start with whsec_")
    text = secret[len(SECRET_PREFIX):]
    try:
        # Padding is optional in the wild; add what is missing.
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be whsec_ followed by base64") from None
    if not key:
        raise ValueError("must not be empty after whsec_")
    return key


def parse_signatures(header: str) -> list[bytes]:
    """The v1 digests in a webhook-signature value; InvalidSignature when there is none."""
    found = []
    for entry in header.split():
        version, sep, value = entry.partition(",")
        if not sep:
            raise InvalidSignature("webhook-signature must be a space-separated list of v1,<base64>")
        if version != "v1":
            continue  # other versions (v1a: asymmetric) are not ours to check
        try:
            digest = base64.b64decode(value.encode("ascii"), validate=True)
        except (UnicodeEncodeError, binascii.Error, ValueError):
            continue
        found.append(digest)
    if not found:
        raise InvalidSignature("webhook-signature carries no v1,<base64> signature")
    return found


class StandardWebhooksScheme:
    kept_headers = ("webhook-id", "webhook-timestamp", "webhook-signature")
    fan_out = False
    tenant_from_request = False

    def __init__(self, secrets: Sequence[str], tolerance: int, clock: Clock) -> None:
        self._keys = HmacKeys(decode_secret(s) for s in secrets)
        self._tolerance = tolerance
        self._clock = clock

    def read(self, headers: Headers, body: bytes) -> list[Delivery]:
        msg_id = required_header(headers, "webhook-id")
        timestamp = required_header(headers, "webhook-timestamp")
        signatures = parse_signatures(required_header(headers, "webhook-signature"))
        if IDEMPOTENCY_KEY_PATTERN.fullmatch(msg_id) is None:
            raise InvalidSignature("webhook-id must be 1-255 printable ASCII characters")
        if _TIMESTAMP.fullmatch(timestamp) is None:
            raise InvalidSignature("webhook-timestamp must be unix seconds")
        self._keys.verify(signatures, f"{msg_id}.{timestamp}.".encode("ascii"), body, name="webhook-signature")
        check_fresh(int(timestamp), self._clock(), self._tolerance, "webhook-timestamp")
        parse_object(body)
        return [Delivery(key=msg_id, tenant=None, body=body)]
