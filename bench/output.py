"""What the benches say: progress on stderr, results as JSON (one line on
stdout, indented in the --out file), so stdout stays data."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def print_json(doc: Any) -> None:
    """One JSON line on stdout."""
    print(orjson.dumps(doc).decode(), flush=True)


def write_json(path: Path, doc: Any) -> None:
    """``doc`` indented into ``path``, its folder made if need be."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
