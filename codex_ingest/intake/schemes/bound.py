"""scheme = "hmac-sha256-bound" (the default for a declared source): the
service's own ``X-Signature``, bound to where and when the request was sent::

    X-Signature: t=<unix seconds>,v2=<hex>[,v2=<hex>...]
    v2 = hex HMAC-SHA256(secret, "<t>\\n<tenant>\\n/pos/<source>/ingest[/batch]\\n<Idempotency-Key>\\n" + body)

The tenant is the one the request names (X-Tenant-Id or ?tenant=); the
route is the documented path of the endpoint it was sent to (``/batch`` for
a batch), whatever a proxy made of it; the Idempotency-Key is the header as
sent, empty when there is none. The lines are joined by newlines, which
none of them can hold, so no two requests sign the same bytes.

What that buys over the body-only form: a captured request cannot be sent
under another tenant, source, route or key (401), and only within
tolerance_seconds of its ``t``; inside that window it can only be the same
request again, answered as a duplicate (the key is signed). Any ``v2``
matching any secret passes (a sender may sign with two while rotating);
other names (a future ``v3``) are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from codex_ingest.errors import InvalidSignature
from codex_ingest.intake.schemes.base import Clock, Headers, Target, check_fresh
from codex_ingest.intake.schemes.generic import GenericScheme, signature_header
from codex_ingest.intake.signatures import decode_hex_digest

SCHEME = "hmac-sha256-bound"
_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")
_FORM = f"X-Signature must be t=<unix time>,v2=<64 hex digits> (this source's scheme, {SCHEME}, signs the time, " \
        "tenant, route and Idempotency-Key with the body)"


def parse_header(header: str | None) -> tuple[int, list[bytes]]:
    """(t, the v2 digests) from an X-Signature value; InvalidSignature when it is not one."""
    if header is None or not header.strip():
        raise InvalidSignature("X-Signature header is missing")
    timestamps: list[str] = []
    signatures: list[bytes] = []
    for item in header.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep:
            raise InvalidSignature(_FORM)
        if name == "t":
            timestamps.append(value)
        elif name == "v2":
            digest = decode_hex_digest(value)
            if digest is None:
                raise InvalidSignature(_FORM)
            signatures.append(digest)
    if len(timestamps) != 1 or _TIMESTAMP.fullmatch(timestamps[0]) is None or not signatures:
        raise InvalidSignature(_FORM)
    return int(timestamps[0]), signatures


def signed_head(timestamp: int, target: Target, idempotency_key: str | None) -> bytes:
    """What is signed before the body."""
    key = idempotency_key or ""
    # Header values reach us decoded with surrogateescape: encode them back to the bytes sent.
    return f"{timestamp}\n{target.tenant}\n{target.route}\n{key}\n".encode("utf-8", "surrogateescape")


class BoundHmacScheme(GenericScheme):
    __slots__ = ("_clock", "_tolerance")

    def __init__(self, secrets: Sequence[str], tenants: Mapping[str, Sequence[str]] | None, tolerance: int,
                 clock: Clock) -> None:
        super().__init__(secrets, tenants)
        self._tolerance = tolerance
        self._clock = clock

    def verify(self, headers: Headers, body: bytes, target: Target | None = None) -> None:
        timestamp, signatures = parse_header(signature_header(headers))
        if target is None:  # a caller's bug, never a request's: every route knows its tenant
            raise InvalidSignature("the request's tenant and route are needed to verify X-Signature")
        head = signed_head(timestamp, target, headers.get("Idempotency-Key"))
        self._keys.for_tenant(target.tenant).verify(signatures, head, body, name="X-Signature")
        # Freshness after the MAC: an unsigned t says nothing either way.
        check_fresh(timestamp, self._clock(), self._tolerance, "X-Signature t")
