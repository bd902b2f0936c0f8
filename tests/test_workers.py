"""serve --workers N: one port, one scrape, graceful stop, no silent half capacity."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.local import free_port
from tests.helpers import SECRET
from tests.test_cli import BASE_ENV, post, wait_healthy


def start_workers(database_url: str, port: int, workers: int = 2) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "codex_ingest", "serve", "--workers", str(workers), "--port", str(port), "--no-migrate"],
        env={**BASE_ENV, "WEBHOOK_SECRET": SECRET, "DATABASE_URL": database_url, "DB_POOL_MAX": "4"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def started_line(log: str) -> dict:
    return next(json.loads(line) for line in log.splitlines() if '"workers started"' in line)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def service(database_url: str, db):  # db: start from an empty events table
    port = free_port()
    proc = start_workers(database_url, port)
    wait_healthy(port, proc)
    yield proc, port
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_one_scrape_sees_every_worker_and_sigterm_stops_them_all(service) -> None:
    proc, port = service
    for i in range(40):
        assert post(port, f'{{"w":{i}}}'.encode())[0] == 201
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    accepted = 0.0
    pids = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "codex_ingest_events_total" and sample.labels.get("outcome") == "accepted":
                accepted += sample.value
            if "pid" in sample.labels:
                pids.add(sample.labels["pid"])
    assert accepted == 40  # every worker's counts, from whichever worker answered
    assert len(pids) == 2  # both workers served requests

    proc.send_signal(signal.SIGTERM)
    _, log = proc.communicate(timeout=60)
    assert proc.returncode == 0
    started = started_line(log)
    assert not any(alive(pid) for pid in started["pids"])
    assert not Path(started["metrics_dir"]).exists()


def test_a_worker_that_dies_stops_the_service_with_an_error(service) -> None:
    proc, _ = service
    # The parent logs the worker pids on stderr; read them from /proc instead of blocking on the pipe.
    children = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    workers = [pid for pid in children if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()]
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    _, log = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "a worker exited; stopping the service" in log
    assert not any(alive(pid) for pid in started_line(log)["pids"])
