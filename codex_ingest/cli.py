"""The ``codex-ingest`` command: ``serve`` and ``migrate``.

Flags are generated from settings.OPTIONS, so ``--help``, the environment
variables and .env.example describe the same settings.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import NoReturn

from codex_ingest import __version__
from codex_ingest.settings import (
    MIGRATE_OPTIONS,
    SERVE_OPTIONS,
    ConfigError,
    Option,
    Settings,
    load_settings,
    with_database_url,
)
from codex_ingest.storage.embedded import EmbeddedDatabaseError, start_embedded
from codex_ingest.storage.queries import load_queries
from codex_ingest.telemetry.logs import configure_logging

log = logging.getLogger("codex_ingest")

EXIT_CONFIG = 2
EXIT_FAILURE = 1


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One clear line and exit 2, instead of argparse's usage block.
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {message}\n")


def _add_options(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    for option in options:
        parser.add_argument(
            option.flag, dest=option.attr, metavar=option.metavar, default=None,
            help=f"{option.help} [env {option.env}]",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="codex-ingest",
        description="Verified, deduplicated, durable ingest of POS webhooks into PostgreSQL.",
    )
    parser.add_argument("--version", action="version", version=f"codex-ingest {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    serve = commands.add_parser(
        "serve", help="serve the HTTP API",
        description="Serve POST /pos/{source}/ingest, /healthz, /readyz and /metrics. "
        "Without DATABASE_URL, starts the embedded PostgreSQL in --data-dir. "
        "Pending migrations are applied first unless --no-migrate.",
    )
    _add_options(serve, SERVE_OPTIONS)
    serve.add_argument("--no-migrate", dest="no_migrate", action="store_true",
                       help="do not apply pending migrations at start")

    migrate = commands.add_parser(
        "migrate", help="apply, roll back or list schema migrations",
        description="Schema migrations (yoyo, plain SQL in migrations/). "
        "Without DATABASE_URL, works on the embedded PostgreSQL in --data-dir.",
    )
    actions = migrate.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=_Parser)
    apply_ = actions.add_parser("apply", help="apply every pending migration")
    rollback = actions.add_parser("rollback", help="roll back the newest migration (--all: every one)")
    rollback.add_argument("--all", dest="rollback_all", action="store_true",
                          help="roll back every applied migration")
    list_ = actions.add_parser("list", help="list migrations and whether each is applied")
    for sub in (apply_, rollback, list_):
        _add_options(sub, MIGRATE_OPTIONS)
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env = os.environ if environ is None else environ
    flags = vars(args)
    try:
        if args.command == "serve":
            settings = load_settings(SERVE_OPTIONS, flags, env, migrate=not args.no_migrate)
        else:
            settings = load_settings(MIGRATE_OPTIONS, flags, env)
    except ConfigError as exc:
        print(f"codex-ingest {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_level)
    try:
        if args.command == "serve":
            return _serve(settings)
        return _migrate(settings, args)
    except EmbeddedDatabaseError as exc:
        log.error(str(exc))
        return EXIT_FAILURE


def _resolve_database(settings: Settings) -> Settings:
    if settings.database_url is not None:
        return settings
    return with_database_url(settings, start_embedded(settings.data_dir, load_queries()))


def _serve(settings: Settings) -> int:
    from codex_ingest.storage import migrations
    from codex_ingest.web.server import StartupError, run_worker
    from codex_ingest.workers import PortInUse, check_port_free, supervise

    settings = _resolve_database(settings)
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


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from codex_ingest.storage import migrations

    settings = _resolve_database(settings)
    assert settings.database_url is not None
    try:
        if args.action == "apply":
            done = migrations.apply_all(settings.database_url)
            print(f"applied {len(done)} migration(s)" + "".join(f"\n  {m}" for m in done))
        elif args.action == "rollback":
            done = migrations.rollback(settings.database_url, count=None if args.rollback_all else 1)
            print(f"rolled back {len(done)} migration(s)" + "".join(f"\n  {m}" for m in done))
        else:
            for state in migrations.status(settings.database_url):
                print(f"[{'x' if state.applied else ' '}] {state.id}")
    except Exception as exc:
        log.error("migration failed", extra={"error": f"{exc.__class__.__name__}: {exc}"})
        return EXIT_FAILURE
    return 0
