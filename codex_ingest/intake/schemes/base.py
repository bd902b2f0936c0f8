"""What every scheme shares: the Scheme protocol, what it yields, and the
checks on provider fields (keyed HMAC states are in intake/signatures.py).

A scheme turns (headers, raw body) into the deliveries to store, or raises
the IngestError that says why not. It checks the signature first (over the
raw bytes, in constant time, any configured secret verifying is enough);
anything it cannot parse in a signature header is InvalidSignature (401).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from codex_ingest.errors import InvalidIdempotencyKey, InvalidJSON, InvalidSignature, InvalidTenant
from codex_ingest.intake.checks import IDEMPOTENCY_KEY_PATTERN, TENANT_PATTERN, Headers

Clock = Callable[[], float]  # seconds since the epoch, like time.time


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event to store: the provider's idempotency key (None: the hex
    SHA-256 of ``body``, computed once with the digest stored beside it), its
    tenant (None: the provider names none) and the bytes to store."""

    key: str | None
    tenant: str | None
    body: bytes


@dataclass(frozen=True, slots=True)
class Target:
    """Where a request was sent, as the service's own schemes sign it: the
    tenant it names (X-Tenant-Id / ?tenant=), its source, and whether it is
    a batch. Provider schemes sign none of these."""

    tenant: str
    source: str
    batch: bool = False

    @property
    def route(self) -> str:
        """The route's path, as documented (not as a proxy may have rewritten it)."""
        return f"/pos/{self.source}/ingest" + ("/batch" if self.batch else "")


@dataclass(frozen=True, slots=True)
class Handshake:
    """A provider's set-up request (Clover's verification code): answered 200, logged, not stored."""

    code: str


class Scheme(Protocol):
    """One provider's way of signing and naming its events."""

    #: True when one request may carry several events (answered with a per-event list).
    fan_out: bool
    #: True when the tenant can come only from the request (X-Tenant-Id or
    #: ?tenant=), never from the provider's body: it is then required before
    #: the body is read.
    tenant_from_request: bool
    #: The headers that carry its signature, timestamp, topic and event id,
    #: stored with each event (intake/headers.py); never one holding a secret.
    kept_headers: tuple[str, ...]

    def read(self, headers: Headers, body: bytes) -> Sequence[Delivery] | Handshake:
        """Verify ``body`` against ``headers``; the deliveries it carries, or a handshake.

        Raises InvalidSignature (401) for a missing, malformed or wrong
        signature, and the other IngestErrors (400) for a body that is not
        the provider's JSON.
        """
        ...


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
