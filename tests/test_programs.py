"""A test whose program is missing is skipped on a developer's machine and
fails in CI (tests/programs.py), and every run says how many were skipped."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

NEEDY_TEST = '''
import pytest

@pytest.mark.needs_program("codex-no-such-program")
def test_needs_a_missing_program():
    pass

@pytest.mark.needs_program("sh")
def test_needs_a_present_program():
    pass
'''


def run_pytest(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_needy.py").write_text(NEEDY_TEST)
    (tmp_path / "pytest.ini").write_text("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"PYTHONPATH": str(ROOT)}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.programs", "-rs", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_outside_ci_a_missing_program_skips_the_test_and_names_its_package(tmp_path: Path) -> None:
    done = run_pytest(tmp_path, ci=None)
    assert done.returncode == 0, done.stdout
    assert "1 passed, 1 skipped" in done.stdout
    assert "codex-no-such-program not installed (Debian: apt-get install codex-no-such-program)" in done.stdout
    assert "skipped tests: 1" in done.stdout


@pytest.mark.parametrize("ci", ["true", "1"])
def test_in_ci_a_missing_program_fails_the_test(tmp_path: Path, ci: str) -> None:
    done = run_pytest(tmp_path, ci=ci)
    assert done.returncode == 1, done.stdout
    assert "1 passed, 1 error" in done.stdout  # failed in setup: red, as a broken CI must be
    assert "CI must run every test" in done.stdout
    assert "skipped tests: 0 (CI)" in done.stdout
