"""The mutant list cannot rot silently: every mutant still applies to the
code (its snippet occurs exactly once) and names tests that exist. Cheap:
nothing is mutated and no tests are run here (``python -m tests.mutation``
does that)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.mutation.__main__ import ROOT, mutated_text
from tests.mutation.mutants import MUTANTS, Mutant


def test_names_are_unique_and_each_mutant_says_what_it_breaks() -> None:
    assert len({m.name for m in MUTANTS}) == len(MUTANTS)
    for mutant in MUTANTS:
        assert mutant.promise and mutant.tests, mutant.name


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_the_snippet_occurs_exactly_once_and_the_mutant_changes_it(mutant: Mutant) -> None:
    path = ROOT / mutant.file
    assert path.is_file(), f"{mutant.file} does not exist"
    text = path.read_text()
    assert mutated_text(mutant, text) != text  # raises StaleMutant unless the snippet occurs once


def _defined(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    return {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_the_tests_named_for_it_exist(mutant: Mutant) -> None:
    for selection in mutant.tests:
        file, _, node = selection.partition("::")
        path = ROOT / file
        assert path.exists(), f"{mutant.name}: {file} does not exist"
        if node:
            name = node.split("::")[-1].split("[")[0]
            assert name in _defined(path), f"{mutant.name}: {file} defines no test {name}"
