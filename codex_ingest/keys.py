"""Typed keys for what the Application holds."""

from __future__ import annotations

from aiohttp import web

from codex_ingest.batching import EventWriter
from codex_ingest.metrics import ServiceMetrics
from codex_ingest.providers.registry import DeclaredSources
from codex_ingest.queries import Queries
from codex_ingest.ratelimit import RateLimiter
from codex_ingest.settings import Settings
from codex_ingest.signatures import HmacSha256Verifier
from codex_ingest.store import EventStore

SETTINGS = web.AppKey("settings", Settings)
QUERIES = web.AppKey("queries", Queries)
METRICS = web.AppKey("metrics", ServiceMetrics)
VERIFIER = web.AppKey("verifier", HmacSha256Verifier)
STORE = web.AppKey("store", EventStore)
WRITER = web.AppKey("writer", EventWriter)
SOURCES = web.AppKey("sources", DeclaredSources)
RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)
