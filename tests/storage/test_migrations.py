"""Migrations: apply all, roll all back, apply again, on a real PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg

from codex_ingest.cli import main
from codex_ingest.storage import migrations
from codex_ingest.storage.paths import migrations_dir

EXPECTED_COLUMNS = {
    "id": "bigint",
    "tenant_id": "text",
    "source": "text",
    "idempotency_key": "text",
    "body_sha256": "bytea",
    "body": "bytea",
    "content_type": "text",
    "received_at": "timestamp with time zone",
}


def schema(url: str) -> dict:
    with psycopg.connect(url) as conn:
        columns = dict(
            conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'events'"
            ).fetchall()
        )
        identity = conn.execute(
            "SELECT is_identity FROM information_schema.columns WHERE table_name = 'events' AND column_name = 'id'"
        ).fetchone()
        unique = conn.execute(
            """
            SELECT array_agg(a.attname ORDER BY k.ord)
            FROM pg_constraint c
            CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord)
            JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
            WHERE c.conrelid = 'events'::regclass AND c.contype = 'u'
            GROUP BY c.oid
            """
        ).fetchall() if columns else []
    return {"columns": columns, "identity": identity, "unique": [tuple(r[0]) for r in unique]}


def assert_events_table(url: str) -> None:
    found = schema(url)
    assert found["columns"] == EXPECTED_COLUMNS
    assert found["identity"] == ("YES",)
    assert found["unique"] == [("tenant_id", "source", "idempotency_key")]


def test_every_migration_has_a_rollback() -> None:
    forward = sorted(p for p in migrations_dir().glob("*.sql") if not p.name.endswith(".rollback.sql"))
    assert forward, "no migrations found"
    for path in forward:
        assert path.name[:4].isdigit() and path.name[4] == "_", f"{path.name}: NNNN_name.sql"
        assert path.with_name(path.stem + ".rollback.sql").is_file(), f"{path.name} has no rollback"


def test_apply_rollback_apply_round_trip(new_database) -> None:
    url = new_database()
    applied = migrations.apply_all(url)
    assert applied == [s.id for s in migrations.status(url)]
    assert_events_table(url)
    assert migrations.apply_all(url) == []  # nothing pending the second time

    rolled = migrations.rollback(url, count=None)
    assert rolled == list(reversed(applied))
    assert schema(url)["columns"] == {}
    assert not any(s.applied for s in migrations.status(url))

    assert migrations.apply_all(url) == applied
    assert_events_table(url)


def test_cli_migrate_apply_list_rollback(new_database, capsys) -> None:
    url = new_database()
    env: dict[str, str] = {}
    assert main(["migrate", "list", "--database-url", url], env) == 0
    assert "[ ] 0001_create_events" in capsys.readouterr().out
    assert main(["migrate", "apply", "--database-url", url], env) == 0
    assert "applied 1 migration(s)" in capsys.readouterr().out
    assert main(["migrate", "list"], {"DATABASE_URL": url}) == 0
    assert "[x] 0001_create_events" in capsys.readouterr().out
    assert_events_table(url)
    assert main(["migrate", "rollback", "--database-url", url], env) == 0
    assert "rolled back 1 migration(s)" in capsys.readouterr().out
    assert schema(url)["columns"] == {}


def test_yoyo_command_line_applies_the_same_files(new_database) -> None:
    """The README's ops path: yoyo's own CLI on migrations/."""
    url = new_database()
    yoyo = Path(sys.executable).with_name("yoyo")
    result = subprocess.run(
        [str(yoyo), "apply", "--batch", "--no-config-file", "--database", migrations.yoyo_url(url), str(migrations_dir())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert_events_table(url)
    assert all(s.applied for s in migrations.status(url))
