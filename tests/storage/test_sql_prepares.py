"""Every statement in sql/ prepares on the migrated schema: its syntax and its
parameters' types hold before any code runs it."""

from __future__ import annotations

from pathlib import Path

import pytest

from codex_ingest.storage.queries import parse_queries

SQL = Path(__file__).resolve().parents[2] / "sql"
STATEMENTS = [(path.name, name, query.sql)
              for path in sorted(SQL.glob("*.sql"))
              for name, query in parse_queries(path.read_text(), str(path)).items()]


@pytest.mark.parametrize(("file", "name", "sql"), STATEMENTS, ids=[f"{f}:{n}" for f, n, _ in STATEMENTS])
async def test_each_statement_prepares_on_the_migrated_schema(db, file: str, name: str, sql: str) -> None:
    statement = await db.prepare(sql)
    assert statement.get_parameters() is not None
