"""What every provider scheme shares: the Scheme protocol, what it yields,
keyed HMAC states built once per secret, and the checks on provider fields.

A scheme turns (headers, raw body) into the deliveries to store, or raises
the IngestError that says why not. It checks the signature first (over the
raw bytes, in constant time, any configured secret verifying is enough);
anything it cannot parse in a signature header is InvalidSignature (401).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from codex_ingest.errors import InvalidIdempotencyKey, InvalidJSON, InvalidSignature, InvalidTenant
from codex_ingest.intake import IDEMPOTENCY_KEY_PATTERN, TENANT_PATTERN

Clock = Callable[[], float]  # seconds since the epoch, like time.time
Headers = Mapping[str, str]  # case-insensitive in practice (aiohttp's CIMultiDictProxy)

_DIGEST_SIZE = hashlib.sha256().digest_size


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event to store: the provider's idempotency key, its tenant (None:
    the provider names none) and the bytes to store."""

    key: str
    tenant: str | None
    body: bytes


@dataclass(frozen=True, slots=True)
class Handshake:
    """A provider's set-up request (Clover's verification code): answered 200, logged, not stored."""

    code: str


class Scheme(Protocol):
    """One provider's way of signing and naming its events."""

    #: True when one request may carry several events (answered with a per-event list).
    fan_out: bool

    def read(self, headers: Headers, body: bytes) -> Sequence[Delivery] | Handshake:
        """Verify ``body`` against ``headers``; the deliveries it carries, or a handshake.

        Raises InvalidSignature (401) for a missing, malformed or wrong
        signature, and the other IngestErrors (400) for a body that is not
        the provider's JSON.
        """
        ...


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


def decode_base64_digest(text: str, name: str) -> bytes:
    """A base64 HMAC-SHA256 digest from a header, or InvalidSignature."""
    try:
        raw = base64.b64decode(text.strip().encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise InvalidSignature(f"{name} is not base64") from None
    if len(raw) != _DIGEST_SIZE:
        raise InvalidSignature(f"{name} is not a base64 HMAC-SHA256 digest")
    return raw


def decode_hex_digest(text: str) -> bytes | None:
    """A hex HMAC-SHA256 digest, or None when ``text`` is not one."""
    if len(text) != 2 * _DIGEST_SIZE:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


def required_header(headers: Headers, name: str) -> str:
    value = headers.get(name)
    if value is None or not value.strip():
        raise InvalidSignature(f"{name} header is missing")
    return value


def check_fresh(timestamp: float, now: float, tolerance: int, name: str) -> None:
    """Raise InvalidSignature when the signed time is more than ``tolerance`` seconds away from now."""
    if abs(now - timestamp) > tolerance:
        raise InvalidSignature(f"{name} is outside the {tolerance} s tolerance (stale, replayed or clock skew)")


def parse_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or InvalidJSON."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"the body is not valid UTF-8 JSON: {exc.msg}") from None
    if not isinstance(document, dict):
        raise InvalidJSON("the body must be a JSON object")
    return document


def event_key(value: object, where: str) -> str:
    """The provider's event id as an idempotency key, or InvalidIdempotencyKey naming ``where``."""
    if isinstance(value, str) and IDEMPOTENCY_KEY_PATTERN.fullmatch(value):
        return value
    raise InvalidIdempotencyKey(f"{where} (the event id, used as the idempotency key) must be 1-255 printable ASCII characters")


def tenant_hint(value: object, where: str) -> str | None:
    """The provider's tenant field: None when absent, else validated like X-Tenant-Id."""
    if value is None:
        return None
    if isinstance(value, str) and TENANT_PATTERN.fullmatch(value):
        return value
    raise InvalidTenant(f"{where} (the tenant) must match ^[A-Za-z0-9][A-Za-z0-9._:-]{{0,127}}$")
