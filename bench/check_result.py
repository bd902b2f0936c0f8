"""Check a dedup_load result: every distinct event accepted once, every
other request answered as a duplicate, nothing else.

    python -m bench.check_result result.json --expected-total 20000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson


def problems(result: dict, expected_total: int | None) -> list[str]:
    found = []
    if expected_total is not None and result["total"] != expected_total:
        found.append(f"total is {result['total']}, expected {expected_total}")
    if result["accepted"] != result["unique"]:
        found.append(f"accepted {result['accepted']} != distinct events {result['unique']}")
    if result["accepted"] + result["duplicates"] != result["total"]:
        found.append(
            f"accepted + duplicates = {result['accepted'] + result['duplicates']} != total {result['total']}"
        )
    if result["other"] != 0:
        found.append(f"{result['other']} other answers: {result.get('other_statuses')}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.check_result", description=__doc__.split("\n\n")[0])
    parser.add_argument("result", type=Path)
    parser.add_argument("--expected-total", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        result = orjson.loads(args.result.read_bytes())
        found = problems(result, args.expected_total)
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
        print(f"check_result: cannot read {args.result}: {exc}", file=sys.stderr)
        return 2
    for line in found:
        print(f"FAIL: {line}", file=sys.stderr)
    if found:
        return 1
    print(
        f"OK: {result['total']} requests, {result['accepted']} accepted, "
        f"{result['duplicates']} duplicates, 0 other"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
