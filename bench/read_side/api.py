"""The service as the read-side parts run it: the read API on, for a bearer
token of this run's own, batching on."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

from bench.local import free_port
from bench.service import SECRET, Service

TOKEN = "bench-read-side-token-" + uuid.uuid4().hex[:16]
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


@contextlib.contextmanager
def read_api_service(url: str, workdir: Path, workers: int, **env: str) -> Iterator[Service]:
    """The service, started; stopped (SIGTERM, then whatever is left killed) on the way out."""
    # SECRET: the notify and purge parts drive it with plans signed with it (bench/point.py).
    svc = Service(
        database_url=url, port=free_port(), secret=SECRET, log_path=workdir / "service.log", workers=workers,
        env={"CODEX_API_TOKENS": f"{TOKEN}=*", "BATCHING": "on", "LOG_LEVEL": "WARNING", **env},
    )
    svc.start()
    try:
        yield svc
    finally:
        svc.terminate()
        svc.cleanup()
