"""``codex-ingest serve``: migrate (unless --no-migrate), then serve with one or more workers;
with --check-config, only say whether the configuration is usable."""

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


def check_config(settings: Settings) -> int:
    """``serve --check-config``: ``settings`` were loaded and checked as serve
    loads them (the sources file with them); build the sources' verifiers as
    each worker does, and print a one-paragraph summary on stdout. Starts no
    database and no server."""
    from codex_ingest.intake.schemes.registry import build_sources

    build_sources(settings.source_table, webhook_secret=settings.webhook_secret)
    print(config_summary(settings))
    return 0


def _counted(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def config_summary(settings: Settings) -> str:
    """What serve would run with, in one paragraph: names, schemes and the
    destinations' scheme://host, never a secret, a token or a database URL."""
    database = ("the database at DATABASE_URL (not contacted)" if settings.database_url is not None
                else f"the embedded PostgreSQL in {settings.data_dir} (not started)")
    parts = [f"codex-ingest serve: configuration OK: {_counted(settings.workers, 'worker')} would listen on "
             f"{settings.host}:{settings.port}, with {database}"]
    table = settings.source_table
    if table is None:
        parts.append("No sources file: every source is verified with the generic X-Signature scheme "
                     "(WEBHOOK_SECRET); no destinations")
        return ". ".join(parts) + "."
    sources = ", ".join(f"{name} ({spec.scheme})" for name, spec in table.sources.items())
    parts.append(f"Sources file {settings.sources}: {_counted(len(table.sources), 'source')}"
                 + (f": {sources}" if sources else ""))
    parts.append("Undeclared sources are refused (strict_sources = true)" if table.strict
                 else "Undeclared sources use the generic X-Signature scheme (WEBHOOK_SECRET)")
    destinations = []
    for name, spec in table.destinations.items():
        detail = [spec.url_origin, f"sources {', '.join(spec.sources)}", f"tenants {', '.join(spec.tenants)}"]
        if spec.ordered:
            detail.append("ordered")
        if spec.allow_private_network:
            detail.append("private network allowed")
        destinations.append(f"{name} ({'; '.join(detail)})")
    parts.append(_counted(len(destinations), "destination") + (f": {', '.join(destinations)}" if destinations else ""))
    return ". ".join(parts) + "."
