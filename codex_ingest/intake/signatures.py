"""HMAC-SHA256 over the raw body, verified in constant time: the keyed
states every HMAC scheme shares, the keys of a generic source (one set, or
one per tenant), and the service's own ``X-Signature`` header (the generic
scheme's)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections.abc import Iterable, Mapping, Sequence

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


class KeyRing:
    """The keys a generic source verifies with: the same secrets for every
    tenant, or each tenant's own (``tenants``), so that one tenant's secret
    cannot sign for another. A tenant with no secrets of its own gets a
    random key nobody has: its request is refused after the same kind of
    work (an HMAC of its bytes) and with the same answer as a wrong
    signature, so the answer does not tell which tenants exist."""

    __slots__ = ("_decoy", "_shared", "_tenants")

    def __init__(self, secrets: Sequence[str], tenants: Mapping[str, Sequence[str]] | None = None) -> None:
        self._shared = HmacKeys(s.encode("utf-8") for s in secrets) if tenants is None else None
        self._tenants = {t: HmacKeys(s.encode("utf-8") for s in own) for t, own in (tenants or {}).items()}
        self._decoy = HmacKeys([os.urandom(DIGEST_SIZE)])

    def for_tenant(self, tenant: str | None) -> HmacKeys:
        if self._shared is not None:
            return self._shared
        keys = self._tenants.get(tenant) if tenant is not None else None
        return self._decoy if keys is None else keys


def parse_x_signature(header: str | None) -> bytes:
    """The digest in ``X-Signature: sha256=<hex>`` (or the bare hex), or InvalidSignature."""
    if header is None:
        raise InvalidSignature("X-Signature header is missing")
    match = _X_SIGNATURE.match(header.strip())
    if match is None:
        raise InvalidSignature("X-Signature must be sha256=<64 hex digits>")
    return bytes.fromhex(match.group(1))


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
        self._keys.verify([parse_x_signature(header)], body, name="X-Signature")


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
