"""Per-request HTTP metrics: the series aiohttp-prometheus-exporter defines,
recorded without its per-request cost.

The exporter's middleware calls ``.labels(**kwargs)`` five times a request;
each call hashes the labels, takes a lock and validates them, which cost
about 22 us a request here (bench/metrics_overhead.py), a tenth of the whole
ingest. This middleware keeps the exporter's metric names, labels and
meaning, so dashboards written for the exporter still work, and /metrics
(web/probes.py) serves them as the exporter's handler did, but looks each
label child up once per distinct (method, scheme, remote, path template[,
status]) and reuses it.

The client address label is the constant "-" unless METRICS_REMOTE_LABEL is
on: labelling it creates one set of series per client address, unbounded
when providers post from many addresses.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from codex_ingest.telemetry.deferred import FlushOnCollect, PendingCounts

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HIDDEN_REMOTE = "-"
UNMATCHED_PATH = "__not_matched__"

# With client addresses labelled the key space is unbounded: stop caching
# (not recording) past this many children, so the cache cannot grow forever.
_MAX_CACHED = 10_000

_REQUEST_LABELS = ["method", "scheme", "remote", "path_template"]

# What start() hands to finish(): the label key, the in-progress gauge child, the start time.
_Timing = tuple[tuple[str, ...], Any, float]


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry, *, label_remote: bool, prefix: str = "aiohttp",
                 pending: PendingCounts | None = None) -> None:
        """``pending``: where the per-request counts wait for their flush (telemetry/deferred.py);
        a PendingCounts of its own, flushed on collection, when not given."""
        if pending is None:
            pending = PendingCounts()
            registry.register(FlushOnCollect(pending))
        self._pending = pending
        self._label_remote = label_remote
        self._requests = Counter(
            f"{prefix}_requests", "Total requests by method, scheme, remote and path template.",
            _REQUEST_LABELS, registry=registry,
        )
        self._responses = Counter(
            f"{prefix}_responses",
            "Total responses by method, scheme, remote, path template and status code.",
            [*_REQUEST_LABELS, "status_code"], registry=registry,
        )
        self._duration = Histogram(
            f"{prefix}_request_duration",
            "Histogram of requests processing time by method, scheme, remote, path template and status code "
            "(in seconds)",
            [*_REQUEST_LABELS, "status_code"], unit="seconds", registry=registry,
        )
        self._in_progress = Gauge(
            f"{prefix}_requests_in_progress",
            "Gauge of requests by method, scheme, remote and path template currently being processed.",
            # The exporter's default multiprocess mode ("all"): with several
            # workers, one series per worker pid, which also shows how evenly
            # SO_REUSEPORT spreads the connections.
            _REQUEST_LABELS, registry=registry,
        )
        self._exceptions = Counter(
            f"{prefix}_exceptions",
            "Total exceptions raised by path, scheme, remote, path template and exception type.",
            [*_REQUEST_LABELS, "exception_type"], registry=registry,
        )
        self._started: dict[tuple[str, ...], tuple[Any, Any]] = {}
        self._finished: dict[tuple[Any, ...], tuple[Any, Any]] = {}

    def start(self, request: web.Request, path: str | None = None) -> _Timing:
        """Count a request as it starts; hand what finish() needs back to the caller.
        ``path``: the path label, when not the matched route's (UNMATCHED_PATH for the catch-all)."""
        if path is None:
            resource = request.match_info.route.resource
            path = resource.canonical if resource is not None else UNMATCHED_PATH
        remote = (request.remote or "") if self._label_remote else HIDDEN_REMOTE
        key = (request.method, request.scheme, remote, path)
        started = self._started.get(key)
        if started is None:
            started = self._children_started(key)
        started[0].inc()
        started[1].inc()
        return key, started[1], time.perf_counter()

    def finish(self, timing: _Timing, status: int) -> None:
        """Count the response the client gets, and the time it took."""
        key, in_progress, began = timing
        in_progress.dec()
        self._finish(key, status, time.perf_counter() - began)

    def failed(self, timing: _Timing, exc: BaseException) -> None:
        """A request that ended in an exception nobody turned into a response."""
        self._exceptions.labels(*timing[0], type(exc).__name__).inc()
        self.finish(timing, exc.status if isinstance(exc, web.HTTPException) else 500)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The same recording as a middleware of its own (the service records
        from its handlers' wrapper, web/every_request.py, through start/finish)."""
        timing = self.start(request)
        try:
            response = await handler(request)
        except Exception as exc:
            self.failed(timing, exc)
            raise
        except BaseException:  # cancelled: no response to count, but no longer in progress
            timing[1].dec()
            raise
        self.finish(timing, response.status)
        return response

    def _finish(self, key: tuple[str, ...], status: int, seconds: float) -> None:
        finished = self._finished.get((key, status))
        if finished is None:
            finished = self._children_finished(key, status)
        finished[0].inc()
        finished[1].observe(seconds)

    def _children_started(self, key: tuple[str, ...]) -> tuple[Any, Any]:
        children = (self._requests.labels(*key), self._in_progress.labels(*key))
        if len(self._started) >= _MAX_CACHED:
            return children  # counted at once: only a cached key holds deferred counts, so they stay bounded
        deferred = (self._pending.counter(children[0]), self._pending.counter(children[1]))
        self._started[key] = deferred
        return deferred

    def _children_finished(self, key: tuple[str, ...], status: int) -> tuple[Any, Any]:
        children = (self._responses.labels(*key, str(status)), self._duration.labels(*key, str(status)))
        if len(self._finished) >= _MAX_CACHED:
            return children
        deferred = (self._pending.counter(children[0]), self._pending.histogram(children[1]))
        self._finished[(key, status)] = deferred
        return deferred
