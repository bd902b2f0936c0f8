"""From a request's headers and bytes to verified events: the one road every
webhook takes, whatever its source's scheme.

Reading happens in two steps around the body, which the web layer reads in
between: ``admit`` judges everything the headers can tell (which scheme, the
tenant when the request names it, whether its rate-limit bucket is already
empty, media type and encoding), so a request refused there costs no body
read; ``read`` has the scheme verify the body (signature before parsing),
only then takes the tenant's rate-limit token, and turns what the body
carries into IncomingEvents. A forged request spends no tenant's budget.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from codex_ingest.errors import InvalidTenant, UnknownSource
from codex_ingest.events import IncomingEvent
from codex_ingest.intake import batch
from codex_ingest.intake.batch import InvalidItem
from codex_ingest.intake.headers import DropCounter, HeaderKeeper, SecretGuard
from codex_ingest.intake.checks import (
    Headers,
    check_content_encoding,
    check_content_type,
    media_type,
    requested_tenant,
)
from codex_ingest.intake.ratelimit import RateLimiter
from codex_ingest.intake.schemes.base import Delivery, Handshake, Scheme, Target
from codex_ingest.intake.schemes.generic import GenericScheme
from codex_ingest.intake.schemes.registry import SourceSchemes

BATCH_MEDIA_TYPES = frozenset({batch.NDJSON})
# Each item of a batch is one JSON document, whatever the request's framing.
ITEM_CONTENT_TYPE = "application/json"


@dataclass(frozen=True, slots=True)
class Admitted:
    """A request whose headers passed: what ``read`` needs once the body is in."""

    source: str
    scheme: Scheme
    tenant: str | None  # named by the request (X-Tenant-Id / ?tenant=); None: the provider names it
    content_type: str | None
    limiter: RateLimiter | None
    keeper: HeaderKeeper


# With no limit given: room for every provider's headers, a long User-Agent and a few of the operator's.
DEFAULT_HEADERS_MAX_BYTES = 4096


class EventReader:
    """Reads webhooks for every source through that source's scheme, and
    keeps the headers each source stores with its events (intake/headers.py)."""

    __slots__ = ("_sources", "_keepers", "_fallback_keeper")

    def __init__(self, sources: SourceSchemes, *, secrets: Sequence[str] = (),
                 headers_max_bytes: int = DEFAULT_HEADERS_MAX_BYTES, count_dropped: DropCounter | None = None) -> None:
        """``secrets``: every secret and token the service holds; a header carrying one is never kept."""
        self._sources = sources
        guard = SecretGuard(secrets)
        self._keepers = {name: HeaderKeeper(names, guard, headers_max_bytes, count_dropped)
                         for name, names in sources.kept_headers.items()}
        self._fallback_keeper = HeaderKeeper(sources.fallback_kept_headers, guard, headers_max_bytes, count_dropped)

    def admit(
        self, source: str, headers: Headers, query: Mapping[str, str], limiter: RateLimiter | None = None,
        *, batch: bool = False,
    ) -> Admitted:
        """Judge the request from its URL and headers alone; raise the IngestError that refuses it.

        ``batch``: the request carries many events (read_batch); only the
        generic scheme's sources take batches (providers never batch: 404).
        """
        scheme = self._sources.scheme_for(source)
        if batch and not isinstance(scheme, GenericScheme):
            raise UnknownSource(f"source {source!r} is a provider's: providers send one event per request, never a batch")
        tenant = requested_tenant(headers, query)
        if tenant is None and scheme.tenant_from_request:
            raise InvalidTenant("X-Tenant-Id header (or ?tenant=) is required")
        if limiter is not None and tenant is not None:
            # Before the body is read, so a refused request costs no read; but
            # nothing is spent: the request is not known to be the tenant's yet.
            limiter.check_available(tenant, source)
        content_type = check_content_type(headers, also=BATCH_MEDIA_TYPES if batch else frozenset())
        check_content_encoding(headers)
        keeper = self._keepers.get(source, self._fallback_keeper)
        return Admitted(source, scheme, tenant, content_type, limiter, keeper)

    def read(self, admitted: Admitted, headers: Headers, body: bytes) -> list[IncomingEvent] | Handshake:
        """Verify ``body`` with the source's scheme; the events it carries, or a provider's handshake."""
        scheme = admitted.scheme
        if isinstance(scheme, GenericScheme):
            assert admitted.tenant is not None  # admit: the generic schemes' tenant comes from the request
            read: Sequence[Delivery] | Handshake = scheme.read(headers, body, Target(admitted.tenant, admitted.source))
        else:
            read = scheme.read(headers, body)
        if isinstance(read, Handshake):
            return read
        tenants = [_tenant(delivery, admitted) for delivery in read]
        if admitted.limiter is not None:
            # Verified: now the tenant's tokens may be spent (the provider may
            # name the tenant in the body: known only now), before the database.
            for tenant in dict.fromkeys(tenants):
                admitted.limiter.check(tenant, admitted.source)
        # Verified and admitted: only now is anything of the request's headers kept.
        kept = admitted.keeper.keep(headers)
        return [_event(delivery, admitted, tenant, kept) for delivery, tenant in zip(read, tenants, strict=True)]

    def read_batch(self, admitted: Admitted, headers: Headers, body: bytes, *, max_items: int,
                   max_item_bytes: int) -> list[IncomingEvent | InvalidItem]:
        """Verify a batch's signature over the whole body, then each item as an event or why it is invalid."""
        scheme, tenant = admitted.scheme, admitted.tenant
        assert isinstance(scheme, GenericScheme) and tenant is not None  # admit(batch=True)
        scheme.verify(headers, body, Target(tenant, admitted.source, batch=True))
        if admitted.limiter is not None:
            admitted.limiter.check(tenant, admitted.source)
        return batch.read_items(body, media_type(admitted.content_type), tenant=tenant, source=admitted.source,
                                content_type=ITEM_CONTENT_TYPE, headers=admitted.keeper.keep(headers),
                                max_items=max_items, max_item_bytes=max_item_bytes)


def _tenant(delivery: Delivery, admitted: Admitted) -> str:
    tenant = admitted.tenant if admitted.tenant is not None else delivery.tenant
    if tenant is None:
        raise InvalidTenant("this provider names no tenant for this event: send X-Tenant-Id or ?tenant=")
    return tenant


def _event(delivery: Delivery, admitted: Admitted, tenant: str, headers: str) -> IncomingEvent:
    digest = hashlib.sha256(delivery.body).digest()
    return IncomingEvent(
        tenant_id=tenant,
        source=admitted.source,
        idempotency_key=delivery.key if delivery.key is not None else digest.hex(),
        body=delivery.body,
        body_sha256=digest,
        content_type=admitted.content_type,
        headers=headers,
    )
