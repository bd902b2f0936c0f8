"""The service's own Prometheus metrics (the per-request HTTP ones are in
http_metrics.py).

Labels stay bounded: no tenant label, outcomes are a fixed set, and the
source label is only ever a source that exists: one declared in the sources
file, or an undeclared name that a verified request came for (an outcome
only a verified request can have, see ``_proves``), up to
``MAX_SOURCE_LABELS`` in all. Everything else is counted as "_other": a name
that failed validation, or an undeclared one refused before it proved
anything (a bad signature, bad input, a rate limit on the headers), never
takes a label, so a caller inventing source names, signed or not, cannot
grow the series, nor use up the slots a real source needs.

Every series whose label values are known starts at 0, so a dashboard shows
0 rather than "no data" and a rate() sees the first increase: each database
error class the service names, each outcome's duration, and each source's
outcomes. The sources of the sources file are known at start-up and take
their label slots first; any other source gets all its outcomes at once,
when it first proves it exists (while there is a slot; then "_other" does).
Each worker decides from what it has seen itself.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess

from codex_ingest import __version__
from codex_ingest.telemetry.deferred import DeferredCounter, DeferredHistogram, FlushOnCollect, PendingCounts

OUTCOMES = (
    "accepted",
    "duplicate",
    "conflict",
    "rejected_signature",
    "rejected_input",
    "unavailable",
    "rate_limited",
)
MAX_SOURCE_LABELS = 100
# Refused requests a worker keeps between two flushes of the console's overview.
REFUSED_KEPT = 200
# Outcomes that are not a refusal.
_NOT_REFUSED = frozenset({"accepted", "duplicate"})
OTHER_SOURCE = "_other"


class Refusal(NamedTuple):
    """A refused request as the console lists it: never a body, a header value or a secret."""

    at: float  # unix time
    source: str  # its metrics label (bounded)
    outcome: str
    tenant: str | None  # the tenant it named, a claim; None when it named none (or a malformed one)


# Outcomes only a verified request can have: its source exists.
PROOF_OUTCOMES = frozenset({"accepted", "duplicate", "conflict"})
# Outcomes a request can have before or after it is verified: proof only
# when the handler says it was verified (a 429 on the headers is not).
PROOF_IF_VERIFIED = frozenset({"rate_limited", "unavailable"})

DELIVERY_OUTCOMES = ("delivered", "retried", "parked", "expired", "disabled")

_DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServiceMetrics:
    """The service's series in ``registry``.

    ``sources``: the declared sources, whose series exist from the start;
    they always get a label of their own and count toward
    ``MAX_SOURCE_LABELS``. ``db_error_classes``: the classes
    ``codex_ingest_db_errors_total`` starts with; ``header_drop_reasons``:
    those ``codex_ingest_headers_dropped_total`` starts with. ``retention``: RETENTION is
    set; only then is ``codex_ingest_oldest_event_age_seconds`` exported.
    """

    def __init__(
        self, registry: CollectorRegistry, *, sources: Iterable[str] = (), db_error_classes: Iterable[str] = (),
        header_drop_reasons: Iterable[str] = (), retention: bool = False, destinations: Iterable[str] = (),
        pending: PendingCounts | None = None,
    ) -> None:
        """``pending``: where the per-request counts wait for their flush (telemetry/deferred.py),
        shared with the HTTP metrics; one of its own, flushed on collection, when not given."""
        self.registry = registry
        if pending is None:
            pending = PendingCounts()
            registry.register(FlushOnCollect(pending))
        self.pending = pending
        self._events = Counter(
            "codex_ingest_events",
            "Ingest requests by source and outcome.",
            ["source", "outcome"],
            registry=registry,
        )
        self._duration = Histogram(
            "codex_ingest_ingest_duration_seconds",
            "Time to answer an ingest request, by outcome.",
            ["outcome"],
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self._db_errors = Counter(
            "codex_ingest_db_errors",
            "Errors from the database, by SQLSTATE class (or connection, timeout, client_data).",
            ["class"],
            registry=registry,
        )
        self._headers_dropped = Counter(
            "codex_ingest_headers_dropped",
            "Request headers a source keeps that were left out of a verified request's events, by why "
            "(size: past HEADERS_MAX_BYTES; secret: the value carries one of ours; encoding: not UTF-8).",
            ["reason"],
            registry=registry,
        )
        for reason in header_drop_reasons:
            self._headers_dropped.labels(reason)
        # multiprocess_mode matters only with several workers: pool gauges
        # add up across live workers, build_info is the same everywhere.
        self._pool_size = Gauge(
            "codex_ingest_db_pool_size", "Connections open in the database pool(s).",
            registry=registry, multiprocess_mode="livesum",
        )
        self._pool_in_use = Gauge(
            "codex_ingest_db_pool_in_use", "Pool connections currently lent out.",
            registry=registry, multiprocess_mode="livesum",
        )
        self._readers_waiting = Gauge(
            "codex_ingest_readers_waiting", "Readers waiting at the head (GET /events?wait=N).",
            registry=registry, multiprocess_mode="livesum",
        )
        self._served = Counter(
            "codex_ingest_events_served", "Events returned by GET /events.", registry=registry,
        )
        self._purged = Counter(
            "codex_ingest_events_purged", "Events deleted by retention.", registry=registry,
        )
        self._horizon_lag = Gauge(
            "codex_ingest_read_horizon_lag_seconds",
            "Age of the oldest transaction holding an xid on the server: how long delivery to readers may lag.",
            registry=registry, multiprocess_mode="max",
        )
        # Without RETENTION nothing is purged: no series, so no alert can fire on it.
        self._oldest_age = Gauge(
            "codex_ingest_oldest_event_age_seconds",
            "Seconds since the oldest retained event was received (0: none); past RETENTION, the purge is not running.",
            registry=registry, multiprocess_mode="max",
        ) if retention else None
        # Push delivery, by destination: the declared ones only, so the labels are bounded.
        self._deliveries = Counter(
            "codex_ingest_deliveries", "Delivery attempts by destination and outcome "
            "(delivered, retried, parked, expired, disabled).",
            ["destination", "outcome"], registry=registry,
        )
        self._delivery_duration = Histogram(
            "codex_ingest_delivery_duration_seconds", "Time of one delivery attempt, connect to last byte.",
            ["destination"], buckets=_DURATION_BUCKETS + (10.0, 30.0), registry=registry,
        )
        self._delivery_lag_events = Gauge(
            "codex_ingest_delivery_lag_events", "Events not yet delivered to a destination (pending).",
            ["destination"], registry=registry, multiprocess_mode="max",
        )
        self._delivery_lag_seconds = Gauge(
            "codex_ingest_delivery_lag_seconds", "Age of the oldest event pending for a destination.",
            ["destination"], registry=registry, multiprocess_mode="max",
        )
        self._delivery_parked = Gauge(
            "codex_ingest_delivery_parked", "Events parked for a destination after their last retry.",
            ["destination"], registry=registry, multiprocess_mode="max",
        )
        self._destination_disabled = Gauge(
            "codex_ingest_destination_disabled", "1 while a destination is disabled (a 410, or an operator).",
            ["destination"], registry=registry, multiprocess_mode="max",
        )
        self._destinations = frozenset(destinations)
        for name in self._destinations:
            for outcome in DELIVERY_OUTCOMES:
                self._deliveries.labels(name, outcome)
            self._delivery_duration.labels(name)
            for gauge in (self._delivery_lag_events, self._delivery_lag_seconds, self._delivery_parked,
                          self._destination_disabled):
                gauge.labels(name).set(0)
        self._live: list[tuple[Gauge, Callable[[], float]]] = []
        build_info = Gauge(
            "codex_ingest_build_info", "Always 1; the version is a label.", ["version"],
            registry=registry, multiprocess_mode="max",
        )
        build_info.labels(version=__version__).set(1)
        # Label children cached per (source, outcome): .labels() takes a lock
        # and hashes every call, which the hot path does not need to repeat.
        self._children: dict[tuple[str, str], tuple[DeferredCounter, DeferredHistogram, tuple[str, str]]] = {}
        self._durations: dict[str, DeferredHistogram] = {}  # one per outcome, shared by every source
        # For the console's overview: counts since the last take_tally(), and the newest refusals
        # (bounded: labels are, and the deque keeps REFUSED_KEPT).
        self._tally: dict[tuple[str, str], int] = {}
        self._refused: collections.deque[Refusal] = collections.deque(maxlen=REFUSED_KEPT)
        self._sources: set[str] = set()
        self._started: set[str] = set()
        for error_class in db_error_classes:
            self._db_errors.labels(error_class)
        for outcome in OUTCOMES:
            self._duration.labels(outcome=outcome)
        for source in sources:
            # Declared by the operator, so bounded: never "_other".
            self._sources.add(source)
            self._start_source(source)

    def record(self, source: str, outcome: str, seconds: float, *, verified: bool = False,
               tenant: str | None = None) -> None:
        """One ingest request's outcome and time.

        ``verified``: the request's signature was verified before it ended
        (say so for a 503 or a 429 that came after verification); it decides
        whether an undeclared ``source`` may take a label of its own.
        ``tenant``: the tenant a refused request named (checks.claimed_tenant), kept
        with the refusal for the console.
        """
        children = self._children.get((source, outcome))
        if children is None:
            children = self._children_for(self._label(source, _proves(outcome, verified)), outcome)
        children[0].inc()
        children[1].observe(seconds)
        key = children[2]
        self._tally[key] = self._tally.get(key, 0) + 1
        if outcome not in _NOT_REFUSED:
            self._refused.append(Refusal(time.time(), key[0], outcome, tenant))

    def record_events(self, source: str, outcomes: list[str], answer: str, seconds: float) -> None:
        """One verified request that carried several events (Clover, a
        batch): each event's outcome is counted; the request's time is
        observed once, under ``answer``, the outcome its HTTP status reports.
        The source takes a label as for one request, on its events' outcomes
        (a batch of invalid items alone does not)."""
        label = self._label(source, any(_proves(o, True) for o in outcomes))
        # One inc per distinct outcome, not per event: a batch holds up to 1000.
        for outcome, count in collections.Counter(outcomes).items():
            self._children_for(label, outcome)[0].inc(count)
            self._tally[(label, outcome)] = self._tally.get((label, outcome), 0) + count
        self._children_for(label, answer)[1].observe(seconds)
        if answer not in _NOT_REFUSED:  # the request as a whole was refused (503, 422)
            self._refused.append(Refusal(time.time(), label, answer, None))

    def _label(self, source: str, proves: bool) -> str:
        """``source`` if it has a label or may take one now, else "_other"."""
        if source in self._sources:
            return source
        if proves and source != OTHER_SOURCE and len(self._sources) < MAX_SOURCE_LABELS:
            self._sources.add(source)
            return source
        return OTHER_SOURCE

    def take_tally(self) -> dict[tuple[str, str], int]:
        """The requests counted by (source label, outcome) since the last call (the console's
        overview adds them up in PostgreSQL)."""
        tally, self._tally = self._tally, {}
        return tally

    def take_refused(self) -> list[Refusal]:
        refused = list(self._refused)
        self._refused.clear()
        return refused

    def _children_for(self, label: str, outcome: str) -> tuple[DeferredCounter, DeferredHistogram, tuple[str, str]]:
        """The (counter, histogram) children of a label that exists (or "_other"), cached:
        the cache holds labels only, never a name that was refused, so it stays bounded."""
        children = self._children.get((label, outcome))
        if children is None:
            if label not in self._started:
                self._start_source(label)
            duration = self._durations.get(outcome)
            if duration is None:
                duration = self._durations[outcome] = self.pending.histogram(self._duration.labels(outcome=outcome))
            children = (self.pending.counter(self._events.labels(source=label, outcome=outcome)), duration, (label, outcome))
            self._children[(label, outcome)] = children
        return children

    def _start_source(self, label: str) -> None:
        """Every outcome's series of a source label, at 0. Once per label, and
        labels are bounded: the declared sources, up to ``MAX_SOURCE_LABELS``
        in all with the others seen, and "_other"."""
        self._started.add(label)
        for outcome in OUTCOMES:
            self._events.labels(source=label, outcome=outcome)

    def delivered(self, destination: str, outcome: str, seconds: float) -> None:
        """One delivery attempt to a declared destination."""
        if destination in self._destinations:
            self._deliveries.labels(destination, outcome).inc()
            self._delivery_duration.labels(destination).observe(seconds)

    def set_delivery_state(self, destination: str, *, pending: int, oldest_seconds: float, parked: int,
                           disabled: bool) -> None:
        if destination in self._destinations:
            self._delivery_lag_events.labels(destination).set(pending)
            self._delivery_lag_seconds.labels(destination).set(oldest_seconds)
            self._delivery_parked.labels(destination).set(parked)
            self._destination_disabled.labels(destination).set(1 if disabled else 0)

    def header_dropped(self, reason: str) -> None:
        """A request header a source keeps was left out of its stored event (intake/headers.py)."""
        self._headers_dropped.labels(reason).inc()

    def count_db_error(self, error_class: str) -> None:
        self._db_errors.labels(error_class).inc()

    def watch_pool(self, size: Callable[[], int], in_use: Callable[[], int]) -> None:
        """The pool's gauges, read at scrape time (one process) or on refresh_live()."""
        self._watch(self._pool_size, size)
        self._watch(self._pool_in_use, in_use)

    def watch_readers(self, waiting: Callable[[], int]) -> None:
        self._watch(self._readers_waiting, waiting)

    def _watch(self, gauge: Gauge, read: Callable[[], float]) -> None:
        self._live.append((gauge, read))
        if not multiprocess_mode():
            gauge.set_function(read)

    def refresh_live(self) -> None:
        """Copy the watched values into their gauges; with several workers a
        scrape reads files, not this process, so each worker refreshes them itself."""
        for gauge, read in self._live:
            gauge.set(read())

    # -- the read side and retention ------------------------------------------

    def served(self, events: int) -> None:
        self._served.inc(events)

    def purged(self, events: int) -> None:
        self._purged.inc(events)

    def set_horizon_lag(self, seconds: float) -> None:
        self._horizon_lag.set(seconds)

    def set_oldest_event_age(self, seconds: float) -> None:
        if self._oldest_age is None:
            raise RuntimeError("codex_ingest_oldest_event_age_seconds is exported only with RETENTION set")
        self._oldest_age.set(seconds)

    def exposition(self) -> bytes:
        return prometheus_client.generate_latest(scrape_registry(self.registry))


def _proves(outcome: str, verified: bool) -> bool:
    """Whether a request with this outcome shows that its source exists."""
    return outcome in PROOF_OUTCOMES or (verified and outcome in PROOF_IF_VERIFIED)


def multiprocess_mode() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def scrape_registry(own: CollectorRegistry) -> CollectorRegistry:
    """What /metrics exposes: this process's registry, or every worker's values."""
    if not multiprocess_mode():
        return own
    combined = CollectorRegistry()
    multiprocess.MultiProcessCollector(combined)
    return combined
