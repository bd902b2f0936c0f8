"""Typed keys for what the Application holds."""

from __future__ import annotations

from aiohttp import web

from codex_ingest.intake.ratelimit import RateLimiter
from codex_ingest.intake.reader import EventReader
from codex_ingest.settings import Settings
from codex_ingest.storage.batching import EventWriter
from codex_ingest.storage.delivery import EventLog
from codex_ingest.storage.notify import HeadWatch
from codex_ingest.storage.queries import Queries
from codex_ingest.storage.store import EventStore
from codex_ingest.telemetry.metrics import ServiceMetrics
from codex_ingest.web.auth import ReadAuth
from codex_ingest.web.every_request import EveryRequest

SETTINGS = web.AppKey("settings", Settings)
QUERIES = web.AppKey("queries", Queries)
METRICS = web.AppKey("metrics", ServiceMetrics)
READER = web.AppKey("reader", EventReader)
STORE = web.AppKey("store", EventStore)
WRITER = web.AppKey("writer", EventWriter)
RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)
EVENT_LOG = web.AppKey("event_log", EventLog)
HEAD_WATCH = web.AppKey("head_watch", HeadWatch)
READ_AUTH = web.AppKey("read_auth", ReadAuth)
EVERY_REQUEST = web.AppKey("every_request", EveryRequest)  # wraps each route's handler (web/routes.py)
