"""sql/ files: every query the code needs exists, and bad files fail at load time."""

from __future__ import annotations

from pathlib import Path

import pytest

from codex_ingest.storage.queries import QueryFileError, load_queries, parse_queries

EXPECTED = {"insert_event", "find_event", "ping", "database_exists", "create_service_database"}


def test_every_expected_query_is_loaded_with_a_description() -> None:
    queries = load_queries()
    assert EXPECTED <= set(queries)
    for name in EXPECTED:
        assert queries[name].doc, f"{name} has no description"
        assert queries[name].sql.strip()


def test_insert_event_is_the_single_dedup_statement() -> None:
    sql = " ".join(load_queries().sql("insert_event").split())
    assert sql.startswith("INSERT INTO events")
    assert "ON CONFLICT (tenant_id, source, idempotency_key) DO NOTHING RETURNING" in sql


def test_header_description_and_body_are_split() -> None:
    parsed = parse_queries("-- name: one\n-- Returns one.\n-- params: none\nSELECT 1;\n\n-- name: two\nSELECT 2;\n")
    assert parsed["one"].doc == "Returns one. params: none"
    assert parsed["one"].sql == "SELECT 1;"
    assert parsed["two"].sql == "SELECT 2;"


@pytest.mark.parametrize(
    "text, message",
    [
        ("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n", "defined twice"),
        ("-- name: empty\n-- nothing here\n", "has no SQL"),
        ("SELECT 1;\n-- name: late\nSELECT 2;\n", "before the first"),
    ],
)
def test_malformed_files_fail_at_load(text: str, message: str) -> None:
    with pytest.raises(QueryFileError, match=message):
        parse_queries(text)


def test_same_name_in_two_files_fails(tmp_path: Path) -> None:
    (tmp_path / "a.sql").write_text("-- name: q\nSELECT 1;\n")
    (tmp_path / "b.sql").write_text("-- name: q\nSELECT 2;\n")
    with pytest.raises(QueryFileError, match="already defined"):
        load_queries(tmp_path)
