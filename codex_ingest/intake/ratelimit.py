"""Per-(tenant, source) rate limit: a token bucket for each key, in this process.

Each key's bucket holds up to ``burst`` tokens and gains ``rate`` a second;
a request takes one or is refused with the seconds until the next token.
Memory stays bounded: buckets are kept in least-recently-used order, and a
bucket that has refilled to full is indistinguishable from no bucket, so it
is dropped as soon as it reaches the front. ``max_keys`` caps the rest: past
it the least recently used bucket is dropped even if not full (that key
starts again with a full bucket, which errs on the side of letting through).

Only a request whose signature verified takes a token (``check``): a
forged request naming a tenant must not spend that tenant's budget. Before
the body is read, ``check_available`` refuses a request whose bucket is
already empty, spending nothing and recording nothing.

Limits are per process: workers and replicas do not share buckets (docs/security.md,
"Rate limit").
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

from codex_ingest.errors import RateLimited

DEFAULT_MAX_KEYS = 100_000


class RateLimiter:
    """Token buckets keyed by (tenant, source). ``clock`` is injectable for tests."""

    __slots__ = ("_buckets", "_burst", "_clock", "_full_after", "_max_keys", "_rate")

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._max_keys = max_keys
        # Seconds an empty bucket takes to refill completely.
        self._full_after = burst / rate
        # key -> (tokens after the last take, time of the last take)
        self._buckets: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def wait_time(self, tenant: str, source: str) -> float:
        """Take a token for (tenant, source): 0.0 if granted, else seconds until one is due."""
        now = self._clock()
        key = (tenant, source)
        bucket = self._buckets.get(key)
        if bucket is None:
            tokens = self._burst
        else:
            tokens = min(self._burst, bucket[0] + (now - bucket[1]) * self._rate)
            self._buckets.move_to_end(key)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            self._evict(now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self._rate

    def available_in(self, tenant: str, source: str) -> float:
        """0.0 if (tenant, source) has a token now, else seconds until one is due; takes nothing, stores nothing."""
        bucket = self._buckets.get((tenant, source))
        if bucket is None:
            return 0.0
        tokens = min(self._burst, bucket[0] + (self._clock() - bucket[1]) * self._rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self._rate

    def check(self, tenant: str, source: str) -> None:
        """Take a token for (tenant, source), or raise RateLimited (429, Retry-After).
        Only for a request whose signature verified."""
        _refuse_after(self.wait_time(tenant, source))

    def check_available(self, tenant: str, source: str) -> None:
        """Raise RateLimited when (tenant, source)'s bucket is empty now, taking
        nothing: the cheap refusal before the body is read and verified."""
        _refuse_after(self.available_in(tenant, source))

    def _evict(self, now: float) -> None:
        buckets = self._buckets
        while buckets:
            key, (_, last) = next(iter(buckets.items()))
            # Oldest first: once one is still refilling, all newer ones are too.
            if now - last < self._full_after and len(buckets) <= self._max_keys:
                return
            del buckets[key]


def _refuse_after(wait: float) -> None:
    if wait > 0.0:
        raise RateLimited(retry_after=max(1, math.ceil(wait)))
