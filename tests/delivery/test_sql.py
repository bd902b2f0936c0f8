"""sql/delivery.sql against the migrated schema: every statement prepares
(its syntax and its parameters' types hold), before the engine runs them."""

from __future__ import annotations

from pathlib import Path

import pytest

from codex_ingest.storage.queries import parse_queries

DELIVERY_SQL = Path(__file__).resolve().parents[2] / "sql" / "delivery.sql"
STATEMENTS = parse_queries(DELIVERY_SQL.read_text(), str(DELIVERY_SQL))


@pytest.mark.parametrize("name", sorted(STATEMENTS))
async def test_each_statement_prepares_on_the_migrated_schema(db, name: str) -> None:
    statement = await db.prepare(STATEMENTS[name].sql)
    assert statement.get_parameters() is not None
