"""Webhook signature verification: HMAC-SHA256 over the raw body bytes."""

from __future__ import annotations

import hashlib
import hmac
import re

from codex_ingest.errors import InvalidSignature

# "sha256=<64 hex>" or the bare hex digest.
_SIGNATURE = re.compile(r"^(?:sha256=)?([0-9a-fA-F]{64})$")


class HmacSha256Verifier:
    """Checks ``X-Signature: sha256=<hex>`` against one shared secret.

    The keyed HMAC state is built once; each request copies it, which skips
    re-deriving the padded key for every body.
    """

    __slots__ = ("_keyed",)

    def __init__(self, secret: str) -> None:
        self._keyed = hmac.new(secret.encode("utf-8"), digestmod=hashlib.sha256)

    def sign(self, body: bytes) -> str:
        """The header value a sender puts on ``body`` (used by tests and the bench)."""
        mac = self._keyed.copy()
        mac.update(body)
        return "sha256=" + mac.hexdigest()

    def verify(self, body: bytes, header: str | None) -> None:
        """Raise InvalidSignature unless ``header`` signs ``body``."""
        if header is None:
            raise InvalidSignature("X-Signature header is missing")
        match = _SIGNATURE.match(header.strip())
        if match is None:
            raise InvalidSignature("X-Signature must be sha256=<64 hex digits>")
        mac = self._keyed.copy()
        mac.update(body)
        # Compare digests as bytes, in constant time.
        if not hmac.compare_digest(mac.digest(), bytes.fromhex(match.group(1))):
            raise InvalidSignature("X-Signature does not match the body")
