"""Per-request counting without a lock: plain numbers now, prometheus_client later.

Every prometheus_client operation takes a lock, and with several workers
(multiprocess mode) also calls ``os.getpid()`` and writes a memory-mapped
file: about 1-2.5 us each, seven of them per ingest request. The hot path
instead adds to plain numbers held here (about 0.1 us each), and ``flush()``
applies what accumulated to the real label children. The series, names and
values ``/metrics`` shows stay exactly what they were; they are only applied
later:
- at every scrape, by the worker that answers it, before rendering;
- by ``registry.collect()`` itself (``FlushOnCollect``, registered first), so
  anything that reads the registry on the event loop's thread sees every
  count;
- every second in each worker when there are several (web/background.py),
  so another worker's scrape sees this one's counts at most a second late;
- when the worker stops.

Only the event loop's thread touches the pending numbers: the flush that a
collection triggers is skipped on any other thread (the scrape renders in a
thread, after flushing on the loop), so no count is lost between a read and
a reset.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable
from typing import Any

from prometheus_client.registry import Collector


class DeferredCounter:
    """A counter (or gauge) child's increments, applied at flush. ``dec`` serves a gauge."""

    __slots__ = ("child", "pending")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.pending = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.pending += amount

    def dec(self, amount: float = 1.0) -> None:
        self.pending -= amount

    def flush(self) -> None:
        if self.pending:
            amount, self.pending = self.pending, 0.0
            self.child.inc(amount)


class DeferredHistogram:
    """A histogram child's observations as bucket counts and a sum, applied at flush.

    Bucket ``i`` counts observations at most its upper bound and above the one before,
    as ``Histogram.observe`` files them; flush adds to the child's own bucket and sum
    values (prometheus_client's ``_buckets`` and ``_sum``, checked by
    tests/web/test_deferred_counts.py against ``observe`` itself)."""

    __slots__ = ("bounds", "child", "counts", "total")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.bounds: list[float] = list(child._upper_bounds)
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def observe(self, amount: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, amount)] += 1
        self.total += amount

    def flush(self) -> None:
        counts = self.counts
        if not any(counts):
            return
        total, self.total = self.total, 0.0
        self.child._sum.inc(total)
        buckets = self.child._buckets
        for index, count in enumerate(counts):
            if count:
                buckets[index].inc(count)
                counts[index] = 0


class PendingCounts:
    """Every deferred child of one registry, and their flush."""

    def __init__(self) -> None:
        self._deferred: list[DeferredCounter | DeferredHistogram] = []
        self.thread = threading.get_ident()  # the event loop's: the only one that counts

    def counter(self, child: Any) -> DeferredCounter:
        deferred = DeferredCounter(child)
        self._deferred.append(deferred)
        return deferred

    def histogram(self, child: Any) -> DeferredHistogram:
        deferred = DeferredHistogram(child)
        self._deferred.append(deferred)
        return deferred

    def flush(self) -> None:
        """Apply every pending count. Call it on the thread that counts."""
        for deferred in self._deferred:
            deferred.flush()


class FlushOnCollect(Collector):
    """Registered first in a registry: a collection on the counting thread flushes first,
    so the collectors after it see every count. It exposes nothing itself."""

    def __init__(self, pending: PendingCounts) -> None:
        self._pending = pending

    def describe(self) -> Iterable[Any]:
        return ()

    def collect(self) -> Iterable[Any]:
        if threading.get_ident() == self._pending.thread:
            self._pending.flush()
        return ()
