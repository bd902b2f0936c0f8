"""From a request's headers and bytes to verified events: the one road every
webhook takes, whatever its source's scheme.

Reading happens in two steps around the body, which the web layer reads in
between: ``admit`` judges everything the headers can tell (which scheme, the
tenant when the request names it, the rate limit, media type and encoding),
so a request refused there costs no body read; ``read`` has the scheme
verify the body (signature before parsing) and turns what it carries into
IncomingEvents.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from codex_ingest.errors import InvalidTenant
from codex_ingest.events import IncomingEvent
from codex_ingest.intake.checks import Headers, check_content_encoding, check_content_type, requested_tenant
from codex_ingest.intake.ratelimit import RateLimiter
from codex_ingest.intake.schemes.base import Delivery, Handshake, Scheme
from codex_ingest.intake.schemes.registry import SourceSchemes


@dataclass(frozen=True, slots=True)
class Admitted:
    """A request whose headers passed: what ``read`` needs once the body is in."""

    source: str
    scheme: Scheme
    tenant: str | None  # named by the request (X-Tenant-Id / ?tenant=); None: the provider names it
    content_type: str | None
    limiter: RateLimiter | None


class EventReader:
    """Reads webhooks for every source through that source's scheme."""

    __slots__ = ("_sources",)

    def __init__(self, sources: SourceSchemes) -> None:
        self._sources = sources

    def admit(
        self, source: str, headers: Headers, query: Mapping[str, str], limiter: RateLimiter | None = None
    ) -> Admitted:
        """Judge the request from its URL and headers alone; raise the IngestError that refuses it."""
        scheme = self._sources.scheme_for(source)
        tenant = requested_tenant(headers, query)
        if tenant is None and scheme.tenant_from_request:
            raise InvalidTenant("X-Tenant-Id header (or ?tenant=) is required")
        if limiter is not None and tenant is not None:
            limiter.check(tenant, source)  # before the body is read: a refused request costs no read
        content_type = check_content_type(headers)
        check_content_encoding(headers)
        return Admitted(source, scheme, tenant, content_type, limiter)

    def read(self, admitted: Admitted, headers: Headers, body: bytes) -> list[IncomingEvent] | Handshake:
        """Verify ``body`` with the source's scheme; the events it carries, or a provider's handshake."""
        read = admitted.scheme.read(headers, body)
        if isinstance(read, Handshake):
            return read
        events = [_event(delivery, admitted) for delivery in read]
        if admitted.limiter is not None and admitted.tenant is None:
            # The provider names the tenant in the body or its own header:
            # known only now, after verification, still before the database.
            for tenant in dict.fromkeys(e.tenant_id for e in events):
                admitted.limiter.check(tenant, admitted.source)
        return events


def _event(delivery: Delivery, admitted: Admitted) -> IncomingEvent:
    tenant = admitted.tenant if admitted.tenant is not None else delivery.tenant
    if tenant is None:
        raise InvalidTenant("this provider names no tenant for this event: send X-Tenant-Id or ?tenant=")
    digest = hashlib.sha256(delivery.body).digest()
    return IncomingEvent(
        tenant_id=tenant,
        source=admitted.source,
        idempotency_key=delivery.key if delivery.key is not None else digest.hex(),
        body=delivery.body,
        body_sha256=digest,
        content_type=admitted.content_type,
    )
