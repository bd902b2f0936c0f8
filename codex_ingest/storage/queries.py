"""Named SQL queries, loaded once from ``sql/*.sql``.

A file holds blocks, each opened by a header::

    -- name: find_event
    -- The stored event under a key: (id, body_sha256, received_at), or no row.
    -- params: $1 tenant_id, $2 source, $3 idempotency_key
    SELECT ...

The first comment line names the query, the next ones describe it. A file
that breaks these rules fails at load time, not at query time.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from codex_ingest.storage.paths import sql_dir

_HEADER = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$")


class QueryFileError(Exception):
    """A sql/ file is malformed (no name, duplicate name, empty body)."""


@dataclass(frozen=True, slots=True)
class Query:
    name: str
    doc: str
    sql: str


class Queries(Mapping[str, Query]):
    """Read-only mapping of query name to Query; ``queries.sql(name)`` gives the text."""

    def __init__(self, by_name: dict[str, Query]) -> None:
        self._by_name = dict(by_name)

    def __getitem__(self, name: str) -> Query:
        return self._by_name[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def sql(self, name: str) -> str:
        return self._by_name[name].sql


def parse_queries(text: str, origin: str = "<string>") -> dict[str, Query]:
    found: dict[str, Query] = {}
    name: str | None = None
    doc: list[str] = []
    body: list[str] = []

    def close() -> None:
        if name is None:
            if any(line.strip() and not line.lstrip().startswith("--") for line in body):
                raise QueryFileError(f"{origin}: SQL before the first '-- name:' header")
            return
        sql = "\n".join(body).strip()
        if not sql:
            raise QueryFileError(f"{origin}: query {name!r} has no SQL")
        if name in found:
            raise QueryFileError(f"{origin}: query {name!r} is defined twice")
        found[name] = Query(name=name, doc=" ".join(doc).strip(), sql=sql)

    for line in text.splitlines():
        header = _HEADER.match(line.strip())
        if header:
            close()
            name, doc, body = header.group(1), [], []
        elif name is not None and not body and line.strip().startswith("--"):
            doc.append(line.strip()[2:].strip())
        else:
            body.append(line)
    close()
    return found


def load_queries(directory: Path | None = None) -> Queries:
    """Parse every ``*.sql`` file in the directory (default: the project's sql/)."""
    directory = directory or sql_dir()
    merged: dict[str, Query] = {}
    for path in sorted(directory.glob("*.sql")):
        for name, query in parse_queries(path.read_text(encoding="utf-8"), str(path)).items():
            if name in merged:
                raise QueryFileError(f"{path}: query {name!r} is already defined in another file")
            merged[name] = query
    return Queries(merged)
