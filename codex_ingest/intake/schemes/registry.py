"""Which scheme reads each source: the declared sources' schemes built once,
at start-up, from the parsed sources file (keyed HMAC states, decoded whsec
keys), and the generic scheme keyed with WEBHOOK_SECRET for every source
the file does not declare (none with strict_sources)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from codex_ingest.errors import UnknownSource
from codex_ingest.intake.checks import check_source
from codex_ingest.intake.headers import COMMON
from codex_ingest.intake.schemes.base import Clock, Scheme
from codex_ingest.intake.schemes.bound import BoundHmacScheme
from codex_ingest.intake.schemes.clover import CloverScheme
from codex_ingest.intake.schemes.generic import GenericHmacScheme
from codex_ingest.intake.schemes.shopify import ShopifyScheme
from codex_ingest.intake.schemes.square import SquareScheme
from codex_ingest.intake.schemes.standard_webhooks import StandardWebhooksScheme
from codex_ingest.intake.schemes.stripe import StripeScheme
from codex_ingest.intake.schemes.toast import ToastScheme
from codex_ingest.intake.sources import SourcesConfig, SourceSpec


@dataclass(frozen=True, slots=True)
class SourceSchemes:
    """Every source's scheme, built once: ``schemes`` holds the declared
    ones by name, ``fallback`` reads the rest (None: strict_sources)."""

    strict: bool
    schemes: Mapping[str, Scheme]
    fallback: Scheme | None
    # The headers each declared source keeps (its scheme's, the common ones,
    # its table's), and those the fallback's sources keep (intake/headers.py).
    kept_headers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    fallback_kept_headers: tuple[str, ...] = ()

    def scheme_for(self, source: str) -> Scheme:
        """The scheme that reads ``source``; UnknownSource (404) when strict
        and undeclared, InvalidSource (400) for a name no source can have."""
        scheme = self.schemes.get(source)
        if scheme is not None:
            return scheme
        if self.fallback is None:
            raise UnknownSource(f"source {source!r} is not declared in the sources file")
        check_source(source)
        return self.fallback


def build_scheme(spec: SourceSpec, clock: Clock = time.time) -> Scheme:
    secrets = spec.secrets
    match spec.scheme:
        case "hmac-sha256-bound":
            return BoundHmacScheme(secrets, spec.tenants, spec.tolerance_seconds, clock)
        case "hmac-sha256-body" | "hmac-sha256":
            return GenericHmacScheme(secrets, spec.tenants)
        case "square":
            assert spec.notification_url is not None  # checked by sources.parse_sources
            return SquareScheme(secrets, spec.notification_url)
        case "shopify":
            return ShopifyScheme(secrets)
        case "stripe":
            return StripeScheme(secrets, spec.tolerance_seconds, clock)
        case "standard-webhooks":
            return StandardWebhooksScheme(secrets, spec.tolerance_seconds, clock)
        case "toast":
            return ToastScheme(secrets, spec.tolerance_seconds, clock)
        case "clover":
            return CloverScheme(secrets)
    raise ValueError(f"unknown scheme {spec.scheme!r}")


def build_sources(config: SourcesConfig | None, clock: Clock = time.time, *, webhook_secret: str = "") -> SourceSchemes:
    """The schemes of a sources file (None: no file, every source generic).
    ``webhook_secret`` keys the generic scheme of undeclared sources; with
    strict_sources there are none, and it may be empty."""
    strict = config is not None and config.strict
    specs = {} if config is None else config.sources
    declared = {name: build_scheme(spec, clock) for name, spec in specs.items()}
    fallback = None if strict else GenericHmacScheme([webhook_secret])
    kept = {name: (*declared[name].kept_headers, *COMMON, *spec.headers) for name, spec in specs.items()}
    return SourceSchemes(strict=strict, schemes=declared, fallback=fallback, kept_headers=kept,
                         fallback_kept_headers=(*GenericHmacScheme.kept_headers, *COMMON))
