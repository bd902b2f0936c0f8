"""The ``codex-ingest`` command: ``serve`` (serve.py), ``migrate``,
``purge`` and ``export`` on the database (data.py), ``destinations`` to
operate push delivery (destinations.py), and ``smoke`` against a
running service (smoke.py). This module builds the parser and dispatches.

Flags are generated from settings.OPTIONS, so ``--help``, the environment
variables and .env.example describe the same settings.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

from codex_ingest import __version__
from codex_ingest.cli.common import EXIT_CONFIG, EXIT_FAILURE
from codex_ingest.cli.data import export, migrate, purge
from codex_ingest.cli.destinations import DESTINATIONS_OPTIONS, destinations
from codex_ingest.cli.serve import check_config, serve
from codex_ingest.cli.smoke import DEFAULT_SOURCE, DEFAULT_TENANT, DEFAULT_TIMEOUT, smoke
from codex_ingest.settings import (
    MIGRATE_OPTIONS,
    SERVE_OPTIONS,
    ConfigError,
    Option,
    load_settings,
)
from codex_ingest.storage.embedded import EmbeddedDatabaseError
from codex_ingest.telemetry.logs import configure_logging

log = logging.getLogger("codex_ingest")



class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One clear line and exit 2, instead of argparse's usage block.
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {message}\n")


def _add_options(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    for option in options:
        parser.add_argument(
            option.flag, dest=option.attr, metavar=option.metavar, default=None,
            help=f"{option.help} (default: {option.default}) [env {option.env}]",
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
        description="Serve the ingest API (POST /pos/{source}/ingest and /ingest/batch), the read API "
        "(GET /events, with CODEX_API_TOKENS), /healthz, /readyz, /metrics and /openapi.json. "
        "Without DATABASE_URL, starts the embedded PostgreSQL in --data-dir. "
        "Pending migrations are applied first unless --no-migrate. "
        "With --check-config, only checks the settings and the sources file.",
    )
    _add_options(serve, SERVE_OPTIONS)
    serve.add_argument("--no-migrate", dest="no_migrate", action="store_true",
                       help="do not apply pending migrations at start")
    serve.add_argument("--check-config", dest="check_config", action="store_true",
                       help="load the settings and the sources file as serve does, print a summary "
                       "(never a secret) and exit 0, or the one line saying what is wrong and exit 2; "
                       "starts no database and no server")

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

    purge = commands.add_parser(
        "purge", help="delete events older than a duration, in short chunks",
        description="Delete events received more than --older-than ago, in chunks of short transactions, "
        "moving each tenant's purge horizon (readers behind it get 410). A purged key is accepted as new again.",
    )
    purge.add_argument("--older-than", dest="older_than", metavar="DURATION", required=True,
                       help="30s, 15m, 12h or 7d")
    _add_options(purge, MIGRATE_OPTIONS)

    export = commands.add_parser(
        "export", help="write a tenant's events (or every tenant's) to stdout as NDJSON",
        description="One event per line, in the shape GET /events returns, in delivery order; streamed "
        "with a server-side cursor. Progress on stderr when it is a terminal.",
    )
    whose = export.add_mutually_exclusive_group(required=True)
    whose.add_argument("--tenant", help="the tenant whose events to export")
    whose.add_argument("--all-tenants", action="store_true",
                       help="every tenant's events, in the combined feed's order (each line names its tenant_id)")
    export.add_argument("--source", default=None, help="only this source")
    export.add_argument("--since", default=None, metavar="TIME",
                        help="received at or after this ISO 8601 time (UTC when no offset is given)")
    export.add_argument("--until", default=None, metavar="TIME", help="received before this ISO 8601 time")
    _add_options(export, MIGRATE_OPTIONS)

    operate = commands.add_parser(
        "destinations", help="push delivery's destinations: list, attempts, replay, retry, enable, disable",
        description="Operate the destinations the sources file declares ([destinations.NAME]), as the "
        "/destinations routes do over HTTP. Without DATABASE_URL, works on the embedded PostgreSQL in "
        "--data-dir. A state changed here takes effect at every worker's next claim.",
    )
    verbs = operate.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=_Parser)
    listing = verbs.add_parser("list", help="every declared destination, its state and backlog (a table)")
    listing.add_argument("--json", dest="as_json", action="store_true",
                         help="one JSON object per destination and line, as GET /destinations shows each")
    attempts = verbs.add_parser("attempts", help="a destination's attempt log, newest first, as JSON lines")
    attempts.add_argument("name", metavar="NAME")
    attempts.add_argument("--status", default=None,
                          help="delivered (a 2xx), failed (anything else, no answer included) or an HTTP status")
    attempts.add_argument("--tenant", default=None, help="only this tenant's events' attempts")
    attempts.add_argument("--limit", default=None, metavar="N", help="at most N attempts, 1-1000 (default: 100)")
    attempts.add_argument("--after", default=None, metavar="CURSOR",
                          help="older than this cursor (printed on stderr as 'more: --after CURSOR' when there are more)")
    replay = verbs.add_parser("replay", help="send again every event received since a time that the destination takes")
    replay.add_argument("name", metavar="NAME")
    replay.add_argument("--since", required=True, metavar="TIME",
                        help="received at or after this ISO 8601 time (UTC when no offset is given)")
    replay.add_argument("--tenant", default=None, help="only this tenant's events")
    retry = verbs.add_parser("retry", help="send every parked delivery again")
    enable = verbs.add_parser("enable", help="deliver again; pending deliveries are due now")
    disable = verbs.add_parser("disable", help="stop delivering until enabled")
    for sub in (retry, enable, disable):
        sub.add_argument("name", metavar="NAME")
    for sub in (listing, attempts, replay, retry, enable, disable):
        _add_options(sub, DESTINATIONS_OPTIONS)

    smoke = commands.add_parser(
        "smoke", help="check a running service end to end; exit 0 only if every step passed",
        description="Check a running service over HTTP: /healthz and /readyz 200, a signed event 201, "
        "the same again 200 with the same event_id and Idempotent-Replayed: true, a wrong signature 401, "
        "and /metrics as Prometheus text with codex_ingest_events_total. Stores one event per run under "
        "its own tenant and a new Idempotency-Key. The event is signed like the generic scheme "
        "(X-Signature): with WEBHOOK_SECRET, or, for a --source declared in the service's sources file "
        "with one of the service's own schemes (hmac-sha256-bound, hmac-sha256-body), in that form, with that "
        "source's own first secret (or the --tenant's, with a tenants table). A --source declared with a "
        "provider's scheme, or undeclared under strict_sources = true, is refused (exit 2). "
        "Exit 0 when every step passed, 1 when one failed, 2 for a bad argument.",
    )
    smoke.add_argument("--url", required=True, help="the service's base URL, such as http://127.0.0.1:8080")
    smoke.add_argument("--secret", default=None,
                       help="the service's WEBHOOK_SECRET, for a --source the sources file does not declare "
                       "(prefer the variable: a flag shows in ps) [env WEBHOOK_SECRET]")
    smoke.add_argument("--sources", default=None, metavar="PATH",
                       help="the service's sources file, as serve's: a --source declared there with one of the "
                       "service's own schemes is signed in its form with its own secret (env:NAME read from "
                       "the environment); declared with a provider's scheme, or undeclared under "
                       "strict_sources, it is refused [env CODEX_SOURCES]")
    smoke.add_argument("--source", default=DEFAULT_SOURCE, help=f"source of the test event [{DEFAULT_SOURCE}]")
    smoke.add_argument("--tenant", default=DEFAULT_TENANT, help=f"tenant of the test event [{DEFAULT_TENANT}]")
    smoke.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                       help=f"seconds to wait for each answer [{DEFAULT_TIMEOUT:g}]")
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env = os.environ if environ is None else environ
    if args.command == "smoke":
        secret = args.secret if args.secret is not None else env.get("WEBHOOK_SECRET", "")
        # Like serve: the flag wins over CODEX_SOURCES; empty is unset.
        origin = "--sources" if args.sources is not None else "CODEX_SOURCES"
        sources = args.sources if args.sources is not None else env.get("CODEX_SOURCES")
        return smoke(args.url, secret, tenant=args.tenant, source=args.source, timeout=args.timeout,
                     sources=Path(sources) if sources else None, sources_origin=origin, environ=env)
    flags = vars(args)
    try:
        if args.command == "serve":
            settings = load_settings(SERVE_OPTIONS, flags, env, migrate=not args.no_migrate)
        elif args.command == "destinations":
            settings = load_settings(DESTINATIONS_OPTIONS, flags, env)
        else:
            settings = load_settings(MIGRATE_OPTIONS, flags, env)
    except ConfigError as exc:
        print(f"codex-ingest {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "serve" and args.check_config:
        return check_config(settings)
    configure_logging(settings.log_level)
    try:
        if args.command == "serve":
            return serve(settings)
        if args.command == "migrate":
            return migrate(settings, args.action, rollback_all=getattr(args, "rollback_all", False))
        if args.command == "purge":
            return purge(settings, args.older_than)
        if args.command == "destinations":
            return destinations(settings, args.action, name=getattr(args, "name", None),
                                status=getattr(args, "status", None), tenant=getattr(args, "tenant", None),
                                limit=getattr(args, "limit", None), after=getattr(args, "after", None),
                                since=getattr(args, "since", None), as_json=getattr(args, "as_json", False))
        return export(settings, tenant=None if args.all_tenants else args.tenant, source=args.source,
                      since=args.since, until=args.until)
    except EmbeddedDatabaseError as exc:
        log.error(str(exc))
        return EXIT_FAILURE
