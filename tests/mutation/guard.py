"""A pytest plugin the mutation runner loads (``-p tests.mutation.guard``):
the run stops before any test when the code, the tests or the SQL it would
exercise are not the mutated copy's (an editable install pointing at the
checkout would otherwise win, and every mutant would "survive")."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TREE_VARIABLE = "CODEX_MUTATION_TREE"


def pytest_configure(config: pytest.Config) -> None:
    tree = os.environ.get(TREE_VARIABLE)
    if not tree:
        return
    import codex_ingest
    import tests
    from codex_ingest.storage.paths import sql_dir

    root = Path(tree).resolve()
    for what, where in [
        ("codex_ingest", Path(codex_ingest.__file__)),
        ("tests", Path(tests.__file__)),
        ("sql/", sql_dir()),
    ]:
        if not where.resolve().is_relative_to(root):
            raise pytest.UsageError(f"{what} comes from {where}, not from the mutated copy {root}")
