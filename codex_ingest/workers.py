"""Several server processes on one port (SO_REUSEPORT), supervised.

The parent spawns ``settings.workers`` processes, each running the whole
app with its own pool; the kernel spreads connections across them. One
scrape of /metrics sees every worker: prometheus_client's multiprocess mode
keeps values in a directory the parent creates and removes. SIGTERM or
SIGINT stops every worker gracefully; a worker that dies while the service
is running stops the whole service with a non-zero exit, never leaving it
at partial capacity unnoticed. The service's one "serving" line is logged
here, once every worker listens; each worker says only "worker started"
(DEBUG).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from multiprocessing.synchronize import Event
from types import FrameType

from codex_ingest.settings import Settings

log = logging.getLogger("codex_ingest.workers")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# How long the parent waits for workers after passing SIGTERM on, beyond
# their own grace period.
_STOP_MARGIN_SECONDS = 5.0


class PortInUse(Exception):
    """Another process listens on the port."""


def check_port_free(host: str, port: int) -> None:
    # A bind without SO_REUSEPORT fails if any socket holds the port, even
    # one bound with SO_REUSEPORT; without this check a second service would
    # silently join the first one's port group.
    # SO_REUSEADDR, as the server itself uses: connections of an earlier run
    # lingering in TIME_WAIT must not count as "in use"; a listener still does.
    probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind((host, port))
    except OSError as exc:
        raise PortInUse(f"cannot listen on {host}:{port}: {exc.strerror} (is another codex-ingest serve running?)") from None
    finally:
        probe.close()


def _worker(settings: Settings, index: int, ready: Event) -> None:
    from codex_ingest.telemetry.logs import configure_logging
    from codex_ingest.web.server import StartupError, run_worker

    configure_logging(settings.log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it sends SIGTERM
    try:
        run_worker(settings, reuse_port=True, ready=ready.set)
    except StartupError as exc:
        log.error(str(exc), extra={"worker": index})
        raise SystemExit(1) from None


def supervise(settings: Settings) -> int:
    """Run the workers until a signal (exit 0) or a worker's death (exit 1).
    Logs the service's one "serving" line once every worker listens."""
    from codex_ingest.web.server import log_serving

    check_port_free(settings.host, settings.port)
    metrics_dir = tempfile.mkdtemp(prefix="codex-ingest-metrics-")
    os.environ[MULTIPROC_ENV] = metrics_dir
    context = multiprocessing.get_context("spawn")
    stop_signal: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop_signal.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    processes = []
    ready = [context.Event() for _ in range(settings.workers)]
    try:
        for index in range(settings.workers):
            process = context.Process(target=_worker, args=(settings, index, ready[index]),
                                      name=f"codex-ingest-worker-{index}")
            process.start()
            processes.append(process)
        pids = [p.pid for p in processes]
        log.debug("workers started", extra={"workers": settings.workers, "pids": pids, "metrics_dir": metrics_dir})
        failed = None
        serving = False
        while not stop_signal and failed is None:
            time.sleep(0.2)
            failed = next((p for p in processes if p.exitcode is not None), None)
            if not serving and failed is None and all(event.is_set() for event in ready):
                serving = True
                log_serving(settings, pids=pids, metrics_dir=metrics_dir)
        if failed is not None:
            log.error(
                "a worker exited; stopping the service",
                extra={"worker": failed.name, "pid": failed.pid, "exitcode": failed.exitcode},
            )
        else:
            log.info("stopping workers", extra={"signal": signal.Signals(stop_signal[0]).name})
        _stop_all(processes, stop_budget(settings))
        return 1 if failed is not None else 0
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(metrics_dir, ignore_errors=True)


def stop_budget(settings: Settings) -> float:
    """Longest a worker's graceful stop can take: the grace for requests,
    then the batches still in flight, then closing the pool."""
    return (
        settings.shutdown_grace_seconds + settings.db_write_timeout + settings.db_command_timeout + _STOP_MARGIN_SECONDS
    )


def _stop_all(processes: list, budget: float) -> None:
    for process in processes:
        if process.exitcode is None:
            process.terminate()  # SIGTERM: the worker's graceful shutdown
    deadline = time.monotonic() + budget
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.exitcode is None:
            log.error("worker did not stop in time; killing it", extra={"pid": process.pid})
            process.kill()
            process.join()
