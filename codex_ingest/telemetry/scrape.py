"""What GET /metrics answers, rendered at most once per interval.

Rendering the text format walks every series (with several workers, it also
reads and merges every worker's files): tens of milliseconds, more as the
series grow. Scrapes that come faster than Prometheus does (a dashboard left
polling, a client looping on the endpoint) would each pay it, on the worker
that also answers ingests. Here one rendering is shared: scrapes within
``max_age`` seconds of the last one get its bytes, and scrapes that arrive
while it is being rendered wait for that rendering rather than start their
own. However many scrapes come, a worker renders at most once per
``max_age`` plus the rendering's own time.

The rendering runs in a thread, so the event loop keeps answering requests
meanwhile (prometheus_client's collection takes its own locks).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable


class Exposition:
    """The bytes of ``render()``, shared by the scrapes of ``max_age`` seconds (0: a rendering per scrape,
    still shared by the scrapes that arrive while it runs)."""

    __slots__ = ("_body", "_clock", "_fresh_until", "_max_age", "_pending", "_render", "renders")

    def __init__(self, render: Callable[[], bytes], max_age: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._render = render
        self._max_age = max_age
        self._clock = clock
        self._body = b""
        self._fresh_until = -math.inf
        self._pending: asyncio.Future[bytes] | None = None
        self.renders = 0  # how many renderings this worker has made

    async def body(self) -> bytes:
        """The latest rendering if it is at most ``max_age`` old, else a new one (shared with concurrent callers)."""
        if self._clock() < self._fresh_until:
            return self._body
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._refresh())
        # shield: a scrape that gives up must not cancel the rendering the others wait for.
        return await asyncio.shield(self._pending)

    async def _refresh(self) -> bytes:
        try:
            body = await asyncio.get_running_loop().run_in_executor(None, self._render)
        finally:
            self._pending = None
        self.renders += 1
        self._body = body
        # Counted from the end of the rendering: a rendering slower than
        # max_age still leaves max_age between two of them.
        self._fresh_until = self._clock() + self._max_age
        return body
