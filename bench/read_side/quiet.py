"""This machine is shared: before each measurement the read-side bench waits
(up to --quiet-wait seconds) until no test suite runs (``pgrep -f
main-pytest``), samples every 2 s whether one starts during it
(``quiet.tests_during_share``), and then measures again, up to --retries
times within --budget seconds, keeping the discarded attempts."""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path
from typing import Any

from bench.output import log


def tests_running() -> bool:
    """What ``pgrep -f main-pytest`` answers: a process whose command line holds ``main-pytest``."""
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            if b"main-pytest" in (entry / "cmdline").read_bytes():
                return True
        except OSError:
            continue
    return False


def wait_for_quiet(limit: float, poll: float = 10.0) -> dict[str, Any]:
    """Wait until no test suite runs here, polling every ``poll`` s, at most ``limit`` seconds."""
    start = time.monotonic()
    while True:
        busy = tests_running()
        waited = round(time.monotonic() - start, 1)
        if not busy:
            if waited:
                log(f"read_side: the test suite ended after {waited:.0f} s; measuring")
            return {"waited_s": waited, "tests_running_at_start": False}
        if waited >= limit:
            log(f"read_side: the test suite still runs after {waited:.0f} s; measuring anyway")
            return {"waited_s": waited, "tests_running_at_start": True}
        if not waited:
            log("read_side: the test suite (main-pytest) is running; waiting for it to end")
        time.sleep(poll)


class Quiet:
    """Waits for the test suite to end, then samples every 2 s whether one runs during the measurement."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.info: dict[str, Any] = {}
        self._stop = threading.Event()
        self._samples = self._busy = 0
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> Quiet:
        self.info = wait_for_quiet(self.limit)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(2.0):
            self._samples += 1
            self._busy += tests_running()

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.info["tests_during_share"] = round(self._busy / self._samples, 2) if self._samples else 0.0


_BUDGET = {"deadline": float("inf")}


def set_budget(deadline: float) -> None:
    """After ``deadline`` (time.monotonic()), ``guarded`` repeats no measurement."""
    _BUDGET["deadline"] = deadline


def guarded(label: str, args: argparse.Namespace, measure: Any, retries: int | None = None) -> dict[str, Any]:
    """``measure()`` after the test suite ends; again (up to ``retries`` times, within the run's
    time budget) when a test suite ran during it. Discarded attempts are kept."""
    retries = args.retries if retries is None else retries
    discarded: list[dict[str, Any]] = []
    attempt = 0
    while True:
        with Quiet(args.quiet_wait) as quiet:
            figure = measure()
        figure["quiet"] = quiet.info
        if discarded:
            figure["discarded_for_tests"] = discarded
        busy = quiet.info["tests_during_share"] > 0
        if not busy or attempt >= retries or time.monotonic() > _BUDGET["deadline"]:
            if busy:
                log(f"{label}: a test suite ran during this measurement (kept; no retry left)")
            return figure
        attempt += 1
        log(f"{label}: a test suite ran during this measurement; measuring again ({attempt}/{retries})")
        discarded.append({k: v for k, v in figure.items() if k != "discarded_for_tests"})
