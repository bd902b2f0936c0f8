"""The table of declared sources: each source's scheme built once, at start-up,
from the parsed sources file (keyed HMAC states, decoded whsec keys)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from codex_ingest.providers.base import Clock, Scheme
from codex_ingest.providers.clover import CloverScheme
from codex_ingest.providers.generic import GenericHmacScheme
from codex_ingest.providers.shopify import ShopifyScheme
from codex_ingest.providers.square import SquareScheme
from codex_ingest.providers.standard_webhooks import StandardWebhooksScheme
from codex_ingest.providers.stripe import StripeScheme
from codex_ingest.providers.toast import ToastScheme
from codex_ingest.sources import SourcesConfig, SourceSpec


@dataclass(frozen=True, slots=True)
class DeclaredSources:
    """The verifiers of every declared source, keyed by source name; built once."""

    strict: bool
    schemes: Mapping[str, Scheme]


def build_scheme(spec: SourceSpec, clock: Clock = time.time) -> Scheme:
    secrets = spec.secrets
    match spec.scheme:
        case "hmac-sha256":
            return GenericHmacScheme(secrets)
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


def build_sources(config: SourcesConfig, clock: Clock = time.time) -> DeclaredSources:
    return DeclaredSources(
        strict=config.strict,
        schemes={name: build_scheme(spec, clock) for name, spec in config.sources.items()},
    )
