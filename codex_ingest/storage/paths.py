"""Where the project's SQL and migration files live.

In a checkout (or an editable install) they sit at the top of the
repository, beside the package; a regular install copies them under
``<prefix>/share/codex-ingest`` (see setup.cfg's data_files).
"""

from __future__ import annotations

import sys
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[2]
_INSTALLED = Path(sys.prefix) / "share" / "codex-ingest"


def _resource_dir(name: str) -> Path:
    for base in (_CHECKOUT, _INSTALLED):
        candidate = base / name
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"cannot find the {name}/ directory (looked in {_CHECKOUT} and {_INSTALLED})")


def sql_dir() -> Path:
    return _resource_dir("sql")


def migrations_dir() -> Path:
    return _resource_dir("migrations")
