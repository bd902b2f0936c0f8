"""HMAC-SHA256 over the raw body, verified in constant time: the keyed
states every HMAC scheme shares, and the service's own ``X-Signature``
header (the generic scheme's)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence

from codex_ingest.errors import InvalidSignature

DIGEST_SIZE = hashlib.sha256().digest_size

# "sha256=<64 hex>" or the bare hex digest.
_X_SIGNATURE = re.compile(r"^(?:sha256=)?([0-9a-fA-F]{64})$")


class HmacKeys:
    """HMAC-SHA256 states keyed once per secret (rotation: any may verify).

    ``prefix`` is fed into every state at start-up (Square signs its
    notification URL before the body), so a request only copies a state
    and adds its own bytes.
    """

    __slots__ = ("_states",)

    def __init__(self, keys: Iterable[bytes], prefix: bytes = b"") -> None:
        self._states = [hmac.new(key, prefix, hashlib.sha256) for key in keys]
        if not self._states:
            raise ValueError("at least one key is needed")

    def digests(self, *parts: bytes) -> list[bytes]:
        out = []
        for state in self._states:
            mac = state.copy()
            for part in parts:
                mac.update(part)
            out.append(mac.digest())
        return out

    def verify(self, candidates: Sequence[bytes], *parts: bytes, name: str) -> None:
        """Raise InvalidSignature unless one candidate equals the MAC of ``parts`` under one key."""
        matched = False
        for digest in self.digests(*parts):
            for candidate in candidates:
                # Every pair is compared, in constant time: no early exit
                # that would tell which key or candidate came close.
                matched |= hmac.compare_digest(digest, candidate)
        if not matched:
            raise InvalidSignature(f"{name} does not match the body")


class HmacSha256Verifier:
    """Checks ``X-Signature: sha256=<hex>`` (or the bare hex digest) against
    one or more secrets; any one verifying is enough (rotation)."""

    __slots__ = ("_keys",)

    def __init__(self, *secrets: str) -> None:
        self._keys = HmacKeys(s.encode("utf-8") for s in secrets)

    def sign(self, body: bytes) -> str:
        """The header value a sender puts on ``body`` under the first secret (tests and the bench)."""
        return "sha256=" + self._keys.digests(body)[0].hex()

    def verify(self, body: bytes, header: str | None) -> None:
        """Raise InvalidSignature unless ``header`` signs ``body``."""
        if header is None:
            raise InvalidSignature("X-Signature header is missing")
        match = _X_SIGNATURE.match(header.strip())
        if match is None:
            raise InvalidSignature("X-Signature must be sha256=<64 hex digits>")
        self._keys.verify([bytes.fromhex(match.group(1))], body, name="X-Signature")


def decode_base64_digest(text: str, name: str) -> bytes:
    """A base64 HMAC-SHA256 digest from a header, or InvalidSignature."""
    try:
        raw = base64.b64decode(text.strip().encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise InvalidSignature(f"{name} is not base64") from None
    if len(raw) != DIGEST_SIZE:
        raise InvalidSignature(f"{name} is not a base64 HMAC-SHA256 digest")
    return raw


def decode_hex_digest(text: str) -> bytes | None:
    """A hex HMAC-SHA256 digest, or None when ``text`` is not one."""
    if len(text) != 2 * DIGEST_SIZE:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None
