"""Migrations: apply all, roll all back, apply again, on a real PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg

from codex_ingest.cli import main
from codex_ingest.storage import migrations
from codex_ingest.storage.paths import migrations_dir

# Every migration's id, in order: what a fresh database gets.
ALL = sorted(p.name.removesuffix(".sql") for p in migrations_dir().glob("*.sql") if not p.name.endswith(".rollback.sql"))

EXPECTED_COLUMNS = {
    "id": "bigint",
    "tenant_id": "text",
    "source": "text",
    "idempotency_key": "text",
    "body_sha256": "bytea",
    "body": "bytea",
    "content_type": "text",
    "received_at": "timestamp with time zone",
    "xact": "xid8",
    "headers": "jsonb",
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
    assert f"applied {len(ALL)} migration(s)" in capsys.readouterr().out
    assert main(["migrate", "list"], {"DATABASE_URL": url}) == 0
    assert "[x] 0001_create_events" in capsys.readouterr().out
    assert_events_table(url)
    assert main(["migrate", "rollback", "--all", "--database-url", url], env) == 0
    assert f"rolled back {len(ALL)} migration(s)" in capsys.readouterr().out
    assert schema(url)["columns"] == {}


def test_yoyo_command_line_applies_the_same_files(new_database) -> None:
    """docs/operations.md's ops path: yoyo's own CLI on migrations/."""
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


def test_the_cursor_migration_gives_existing_rows_a_place_first_and_rolls_back(new_database, tmp_path) -> None:
    """0002 on a table that already holds events: they get xact 0 (delivered first, in id order), new
    rows their transaction's id; rolled back, the events are as they were."""
    url = new_database()
    upto = tmp_path / "migrations"
    copy_migrations(upto, "0001")
    migrations.apply_all(url, upto)
    insert = "INSERT INTO events (tenant_id, source, idempotency_key, body_sha256, body) VALUES ('t', 's', %s, %s, '{}')"
    with psycopg.connect(url, autocommit=True) as conn:
        for key in ("old-1", "old-2"):
            conn.execute(insert, (key, b"\x00" * 32))
    copy_migrations(upto, "0002")
    assert migrations.apply_all(url, upto) == ["0002_delivery_cursor"]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(insert, ("new-1", b"\x00" * 32))
        rows = conn.execute("SELECT idempotency_key, xact::text FROM events ORDER BY id").fetchall()
        assert [(k, x == "0") for k, x in rows] == [("old-1", True), ("old-2", True), ("new-1", False)]
        assert int(rows[2][1]) > 0
        indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'events'")}
        assert "events_delivery" in indexes
    assert migrations.rollback(url, directory=upto) == ["0002_delivery_cursor"]
    assert_cursorless = schema(url)["columns"]
    assert "xact" not in assert_cursorless and set(assert_cursorless) == set(EXPECTED_COLUMNS) - {"xact", "headers"}
    with psycopg.connect(url) as conn:
        assert [r[0] for r in conn.execute("SELECT idempotency_key FROM events ORDER BY id")] == ["old-1", "old-2", "new-1"]
        assert conn.execute("SELECT to_regclass('purge_horizons')").fetchone() == (None,)


def test_a_multi_host_url_reaches_yoyo_as_libpq_host_and_port_lists() -> None:
    url = "postgresql://ingest:pw@db1:5433,db2/codex?target_session_attrs=read-write"
    assert migrations.yoyo_url(url) == (
        "postgresql+psycopg://ingest:pw@/codex?target_session_attrs=read-write&host=db1,db2&port=5433,5432"
    )
    assert migrations.yoyo_url("postgres://u@h:1/d") == "postgresql+psycopg://u@h:1/d"


def copy_migrations(directory: Path, prefix: str) -> None:
    """The migration ``prefix`` (forward and rollback) copied into ``directory``."""
    directory.mkdir(exist_ok=True)
    for path in migrations_dir().glob(f"{prefix}_*.sql"):
        (directory / path.name).write_bytes(path.read_bytes())


def test_the_headers_and_feed_migrations_leave_old_rows_without_headers_and_roll_back(new_database, tmp_path) -> None:
    """0003 on a table that already holds events: they keep NULL headers (none was kept when they came),
    new rows take what they are given; 0004 builds the feed's index (CONCURRENTLY, outside a
    transaction); both roll back to the table as it was."""
    url = new_database()
    upto = tmp_path / "migrations"
    for prefix in ("0001", "0002"):
        copy_migrations(upto, prefix)
    migrations.apply_all(url, upto)
    insert = "INSERT INTO events (tenant_id, source, idempotency_key, body_sha256, body) VALUES ('t', 's', %s, %s, '{}')"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(insert, ("old", b"\x00" * 32))
    applied = migrations.apply_all(url)
    assert applied[:2] == ["0003_event_headers", "0004_feed_order"]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO events (tenant_id, source, idempotency_key, body_sha256, body, headers)"
                     " VALUES ('t', 's', 'new', %s, '{}', '{\"x-shopify-topic\": \"orders/create\"}')", (b"\x00" * 32,))
        rows = conn.execute("SELECT idempotency_key, headers FROM events ORDER BY id").fetchall()
        assert rows == [("old", None), ("new", {"x-shopify-topic": "orders/create"})]
        index = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'events_feed'").fetchone()
        assert index is not None and index[0].endswith("(xact, id)"), index
        valid = conn.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = 'events_feed'::regclass").fetchone()
        assert valid == (True,)
    # Back to 0002, through every later migration too.
    assert migrations.rollback(url, count=len(applied)) == applied[::-1]
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT to_regclass('events_feed')").fetchone() == (None,)
    assert set(schema(url)["columns"]) == set(EXPECTED_COLUMNS) - {"headers"}
