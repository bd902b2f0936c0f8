"""Per-request counts kept as plain numbers and applied later
(telemetry/deferred.py): what a flush applies must be exactly what
prometheus_client would have recorded, nothing counted may be lost, and a
read of the registry on the counting thread sees every count."""

from __future__ import annotations

import math
import threading

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from codex_ingest.telemetry.deferred import FlushOnCollect, PendingCounts
from codex_ingest.telemetry.http_metrics import HttpMetrics
from codex_ingest.telemetry.metrics import ServiceMetrics

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Every bound exactly, just either side of each, zero, and beyond the last.
VALUES = [v for b in BUCKETS for v in (b, math.nextafter(b, 0), math.nextafter(b, math.inf))] + [0.0, 7.5, 1e9]


def samples(registry: CollectorRegistry, name: str) -> dict[tuple, float]:
    """Every sample of ``name``; the sum rounded to 12 significant digits: added at once rather
    than one observation at a time, it may differ in the last bits of a float."""
    return {(s.name, tuple(sorted(s.labels.items()))): float(f"{s.value:.12g}") if s.name.endswith("_sum") else s.value
            for family in registry.collect() for s in family.samples
            if s.name.startswith(name) and not s.name.endswith("_created")}


def test_a_flushed_histogram_is_exactly_what_observe_records() -> None:
    direct, deferred = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("t_seconds", "t", ["k"], buckets=BUCKETS, registry=direct).labels("x")
    pending = PendingCounts()
    kept = pending.histogram(Histogram("t_seconds", "t", ["k"], buckets=BUCKETS, registry=deferred).labels("x"))
    for value in VALUES:
        reference.observe(value)
        kept.observe(value)
    pending.flush()
    assert samples(deferred, "t_seconds") == samples(direct, "t_seconds")
    # A second round adds to the first: a flush starts the pending counts again from zero.
    for value in VALUES[:7]:
        reference.observe(value)
        kept.observe(value)
    pending.flush()
    pending.flush()
    assert samples(deferred, "t_seconds") == samples(direct, "t_seconds")


def test_flushed_counters_and_gauges_are_what_inc_and_dec_record() -> None:
    registry = CollectorRegistry()
    pending = PendingCounts()
    counter = pending.counter(Counter("c", "c", ["k"], registry=registry).labels("x"))
    gauge = pending.counter(Gauge("g", "g", ["k"], registry=registry).labels("x"))
    for _ in range(5):
        counter.inc()
        gauge.inc()
    counter.inc(2.5)
    gauge.dec(3)
    assert registry.get_sample_value("c_total", {"k": "x"}) == 0  # nothing applied yet...
    pending.flush()
    assert registry.get_sample_value("c_total", {"k": "x"}) == 7.5  # ...and all of it at the flush
    assert registry.get_sample_value("g", {"k": "x"}) == 2


def test_a_collection_on_the_counting_thread_flushes_and_one_on_another_thread_loses_nothing() -> None:
    registry = CollectorRegistry()
    pending = PendingCounts()
    registry.register(FlushOnCollect(pending))  # first: it flushes before the counter is read
    counter = pending.counter(Counter("c", "c", registry=registry))
    counter.inc(3)
    seen: list[float | None] = []
    reader = threading.Thread(target=lambda: seen.append(registry.get_sample_value("c_total")))
    reader.start()
    reader.join()
    assert seen == [0.0]  # another thread (the scrape's renderer) does not flush: it could race the counting
    assert counter.pending == 3
    assert registry.get_sample_value("c_total") == 3  # the counting thread's read flushes first
    assert counter.pending == 0


def test_the_service_metrics_read_on_the_loop_show_every_request_at_once() -> None:
    registry = CollectorRegistry()
    pending = PendingCounts()
    registry.register(FlushOnCollect(pending))
    metrics = ServiceMetrics(registry, sources=["orders"], pending=pending)
    for seconds in (0.001, 0.002, 0.2):
        metrics.record("orders", "accepted", seconds)
    metrics.record_events("orders", ["accepted", "duplicate"], "accepted", 0.003)
    assert registry.get_sample_value("codex_ingest_events_total", {"source": "orders", "outcome": "accepted"}) == 4
    assert registry.get_sample_value("codex_ingest_events_total", {"source": "orders", "outcome": "duplicate"}) == 1
    assert registry.get_sample_value("codex_ingest_ingest_duration_seconds_count", {"outcome": "accepted"}) == 4
    assert registry.get_sample_value("codex_ingest_ingest_duration_seconds_sum",
                                     {"outcome": "accepted"}) == pytest.approx(0.206)


def test_http_metrics_past_the_cache_count_at_once_and_hold_no_deferred_count() -> None:
    """Past the children cache (client addresses labelled, one key each), counts are applied at
    once: a deferred count per uncached key would grow without bound."""
    import codex_ingest.telemetry.http_metrics as http_metrics

    registry = CollectorRegistry()
    pending = PendingCounts()
    metrics = HttpMetrics(registry, label_remote=True, pending=pending)
    limit = 3
    original, http_metrics._MAX_CACHED = http_metrics._MAX_CACHED, limit
    try:
        for n in range(limit + 5):
            key = ("POST", "http", f"10.0.0.{n}", "/pos/{source}/ingest")
            started = metrics._started.get(key) or metrics._children_started(key)
            started[0].inc()
    finally:
        http_metrics._MAX_CACHED = original
    assert len(pending._deferred) == limit * 2
    total = sum(registry.get_sample_value("aiohttp_requests_total", {"method": "POST", "scheme": "http",
                                                                     "remote": f"10.0.0.{n}",
                                                                     "path_template": "/pos/{source}/ingest"})
                for n in range(limit + 5))
    assert total == 5  # the uncached five, at once; the cached three wait for a flush
    pending.flush()
    assert sum(registry.get_sample_value("aiohttp_requests_total", {"method": "POST", "scheme": "http",
                                                                    "remote": f"10.0.0.{n}",
                                                                    "path_template": "/pos/{source}/ingest"})
               for n in range(limit + 5)) == limit + 5
