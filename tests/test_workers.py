"""serve --workers N: one port, one scrape, graceful stop, no silent half capacity."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.local import free_port
from codex_ingest.settings import Settings
from tests.cli import BASE_ENV, post, wait_healthy
from tests.helpers import READ_TOKEN, SECRET, wait_until


def start_workers(database_url: str, port: int, log_file: Path, workers: int = 2, **env: str) -> subprocess.Popen:
    """serve --workers N, its stderr (the JSON log) written to ``log_file``."""
    with open(log_file, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "codex_ingest", "serve", "--workers", str(workers), "--port", str(port), "--no-migrate"],
            env={**BASE_ENV, "WEBHOOK_SECRET": SECRET, "DATABASE_URL": database_url, "DB_POOL_MAX": "4", **env},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


def wait_serving(proc: subprocess.Popen, port: int, log_file: Path, timeout: float = 60) -> None:
    """Until the service logs its "serving" line: with several workers the
    supervisor logs it once every worker listens, maybe after the first answers."""
    wait_healthy(port, proc, timeout=timeout, output=lambda: log_file.read_text(errors="replace"))
    deadline = time.monotonic() + timeout
    while '"msg":"serving"' not in log_file.read_text(errors="replace"):
        assert time.monotonic() < deadline and proc.poll() is None, log_file.read_text(errors="replace")
        time.sleep(0.1)


def started_line(log: str) -> dict:
    """The service's "serving" line: its workers' pids, its metrics directory."""
    return next(entry for entry in log_entries(log) if entry["msg"] == "serving")


def log_entries(log: str) -> list[dict]:
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def service(database_url: str, db, tmp_path: Path):  # db: start from an empty events table
    port = free_port()
    log_file = tmp_path / "serve.log"
    proc = start_workers(database_url, port, log_file)
    wait_serving(proc, port, log_file)
    yield proc, port, log_file
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_one_scrape_sees_every_worker_and_sigterm_stops_them_all(service) -> None:
    proc, port, log_file = service
    for i in range(40):
        assert post(port, f'{{"w":{i}}}'.encode())[0] == 201

    def scraped() -> tuple[float, set[str]]:
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
        return accepted, pids

    # Every worker's counts, from whichever worker answers: each applies its own within a second.
    accepted, pids = wait_until(lambda: (found := scraped())[0] == 40 and found, "all 40 counted")
    assert accepted == 40
    assert len(pids) == 2  # both workers served requests

    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode == 0
    started = started_line(log_file.read_text())
    assert not any(alive(pid) for pid in started["pids"])
    assert not Path(started["metrics_dir"]).exists()


def test_a_worker_that_dies_stops_the_service_with_an_error(service) -> None:
    proc, _, log_file = service
    # The worker pids, from /proc.
    children = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    workers = [pid for pid in children if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()]
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    proc.wait(timeout=60)
    log = log_file.read_text()
    assert proc.returncode == 1
    assert "a worker exited; stopping the service" in log
    assert not any(alive(pid) for pid in workers)


SOURCES = """
strict_sources = true

[sources.shop]
scheme = "shopify"
secrets = ["env:SHOP_SECRET"]

[sources.pos]
scheme = "hmac-sha256"
secrets = ["literal-pos-secret-0123456789"]
"""
SHOP_SECRET = "shop-secret-from-env-0123456789"


@pytest.mark.parametrize("workers", [1, 2])
def test_one_serving_line_per_service_with_plain_settings_and_the_sources(
    database_url: str, tmp_path: Path, workers: int,
) -> None:
    sources = tmp_path / "sources.toml"
    sources.write_text(SOURCES)
    port = free_port()
    log_file = tmp_path / "serve.log"
    proc = start_workers(database_url, port, log_file, workers, SHOP_SECRET=SHOP_SECRET, CODEX_SOURCES=str(sources),
                         CODEX_API_TOKENS=f"{READ_TOKEN}=*", DB_POOL_MAX="2")
    try:
        wait_serving(proc, port, log_file)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0
    text = log_file.read_text()
    serving = [entry for entry in log_entries(text) if entry["msg"] == "serving"]
    assert len(serving) == 1, text
    (line,) = serving
    settings = line["settings"]
    assert isinstance(settings, dict), settings
    assert line["sources"] == {"shop": "shopify", "pos": "hmac-sha256"}
    assert line["strict_sources"] is True
    assert line["level"] == "info" and line["port"] == port and len(line["pids"]) == workers
    assert settings["workers"] == workers and settings["port"] == port and settings["sources"] == str(sources)
    assert settings["retention"] is None and settings["batching"] is True
    # Every field of Settings but those it keeps out of its repr, each a plain JSON value, not a repr.
    fields = dataclasses.fields(Settings)
    assert set(settings) == {f.name for f in fields if f.repr}
    assert all(isinstance(value, (str, int, float, bool, type(None))) for value in settings.values()), settings
    for secret in (SECRET, SHOP_SECRET, "literal-pos-secret-0123456789", READ_TOKEN, database_url):
        assert secret not in text
