"""``codex-ingest serve``: migrate (unless --no-migrate), then serve with one or more workers."""

from __future__ import annotations

import logging

from codex_ingest.cli.common import EXIT_FAILURE, resolve_database
from codex_ingest.settings import Settings

log = logging.getLogger("codex_ingest")


def serve(settings: Settings) -> int:
    from codex_ingest.storage import migrations
    from codex_ingest.web.server import StartupError, run_worker
    from codex_ingest.workers import PortInUse, check_port_free, supervise

    settings = resolve_database(settings)
    assert settings.database_url is not None
    if settings.migrate:
        try:
            applied = migrations.apply_all(settings.database_url)
        except Exception as exc:
            log.error("cannot apply migrations", extra={"error": f"{exc.__class__.__name__}: {exc}"})
            return EXIT_FAILURE
        log.info("migrations applied", extra={"applied": applied})
    try:
        if settings.workers > 1:
            return supervise(settings)
        check_port_free(settings.host, settings.port)
        run_worker(settings)
    except (StartupError, PortInUse) as exc:
        log.error(str(exc))
        return EXIT_FAILURE
    return 0
