"""sql/console.sql against the migrated schema: every statement prepares."""

from __future__ import annotations

from pathlib import Path

import pytest

from codex_ingest.storage.queries import parse_queries

CONSOLE_SQL = Path(__file__).resolve().parents[2] / "sql" / "console.sql"
STATEMENTS = parse_queries(CONSOLE_SQL.read_text(), str(CONSOLE_SQL))


@pytest.mark.parametrize("name", sorted(STATEMENTS))
async def test_each_statement_prepares_on_the_migrated_schema(db, name: str) -> None:
    statement = await db.prepare(STATEMENTS[name].sql)
    assert statement.get_parameters() is not None
