"""Programs from outside the virtualenv that some tests start: Debian's
prometheus, nginx, pgbouncer, and the curl and openssl a reader of the quick
start types.

A test says what it needs with ``@pytest.mark.needs_program("nginx")`` (or a
module's ``pytestmark``). On a developer's machine a missing program skips the
test, naming the program and its package. In CI (``CI`` set, as `.ci/run` and
GitHub Actions run) it fails the test instead: CI installs every one of them,
so a missing program there is a broken CI, not a reason to pass with less.

Loaded as a plugin (``-p tests.programs`` in setup.cfg), which also ends every
run with a line counting the skipped tests.
"""

from __future__ import annotations

import os

import pytest

from bench.daemon import binary

# The Debian package each program comes from.
PACKAGES = {
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "nginx": "nginx",
    "pgbouncer": "pgbouncer",
    "curl": "curl",
    "openssl": "openssl",
    "chromium": "chromium",
    "chromedriver": "chromium-driver",
}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


def missing(*names: str) -> list[str]:
    return [name for name in names if binary(name) is None]


def require(*names: str) -> None:
    """Skip the running test (fail it in CI) unless every named program is installed."""
    absent = missing(*names)
    if not absent:
        return
    packages = " ".join(sorted({PACKAGES.get(name, name) for name in absent}))
    if in_ci():
        pytest.fail(f"{', '.join(absent)} not installed, and CI must run every test: "
                    f".ci/run installs them (apt-get install {packages})", pytrace=False)
    pytest.skip(f"{', '.join(absent)} not installed (Debian: apt-get install {packages})")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "needs_program(*names): the test starts these programs; skipped without them, failed in CI")


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs_program"):
        require(*mark.args)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    skipped = len(terminalreporter.stats.get("skipped", []))
    terminalreporter.write_line(f"skipped tests: {skipped}" + (" (CI)" if in_ci() else ""))
