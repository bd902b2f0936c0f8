"""Schema migrations through yoyo's Python API (plain SQL files in migrations/)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from yoyo import get_backend, read_migrations
from yoyo.backends.base import DatabaseBackend
from yoyo.migrations import MigrationList

from codex_ingest.storage.paths import migrations_dir

_SCHEME = re.compile(r"^postgres(?:ql)?://", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class MigrationState:
    id: str
    applied: bool


def yoyo_url(database_url: str) -> str:
    """yoyo names its driver in the scheme: postgresql:// becomes postgresql+psycopg://.

    yoyo cannot parse a multi-host URL (``h1:p1,h2:p2``), but libpq can take
    the same hosts as ``?host=h1,h2&port=p1,p2``, with target_session_attrs
    kept: migrations then go to the writable server, as the service does.
    """
    parts = urlsplit(_SCHEME.sub("postgresql+psycopg://", database_url, count=1))
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if "," not in hosts:
        return urlunsplit(parts)
    names, ports = zip(*(host.rpartition(":")[::2] if ":" in host else (host, "5432") for host in hosts.split(",")),
                       strict=True)
    query = "&".join(filter(None, [parts.query, f"host={','.join(names)}", f"port={','.join(ports)}"]))
    return urlunsplit(parts._replace(netloc=userinfo + at, query=query))


def _open(database_url: str, directory: Path | None) -> tuple[DatabaseBackend, MigrationList]:
    backend = get_backend(yoyo_url(database_url))
    migrations = read_migrations(str(directory or migrations_dir()))
    return backend, migrations


def apply_all(database_url: str, directory: Path | None = None) -> list[str]:
    """Apply every pending migration; return the ids applied."""
    backend, migrations = _open(database_url, directory)
    try:
        with backend.lock():
            pending = backend.to_apply(migrations)
            backend.apply_migrations(pending)
        return [m.id for m in pending]
    finally:
        backend.connection.close()


def rollback(database_url: str, *, count: int | None = 1, directory: Path | None = None) -> list[str]:
    """Roll back the newest ``count`` applied migrations (None: all); return their ids."""
    backend, migrations = _open(database_url, directory)
    try:
        with backend.lock():
            applied = backend.to_rollback(migrations)  # newest first
            chosen = applied if count is None else applied[:count]
            backend.rollback_migrations(chosen)
        return [m.id for m in chosen]
    finally:
        backend.connection.close()


def status(database_url: str, directory: Path | None = None) -> list[MigrationState]:
    backend, migrations = _open(database_url, directory)
    try:
        return [MigrationState(m.id, backend.is_applied(m)) for m in migrations]
    finally:
        backend.connection.close()
