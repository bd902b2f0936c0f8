"""Dedup load test: send a signed plan and count what the service answers.

    python -m bench.dedup_load --url http://127.0.0.1:8080 --source square \
        --tenant bench --total 20000 --unique 10000 --concurrency 64 --out result.json

Counts come from the answers (bench/python_load.py: 201 accepted, 200 +
Idempotent-Replayed duplicate, 422 conflict, anything else "other"), never
from the plan.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from bench.output import log, print_json, write_json
from bench.plan import build_plan
from bench.python_load import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dedup_load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="service base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--source", required=True)
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--total", type=int, required=True, help="requests to send (N)")
    parser.add_argument("--unique", type=int, required=True, help="distinct events among them (U)")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight (C)")
    parser.add_argument("--secret", default=os.environ.get("WEBHOOK_SECRET"), help="default: $WEBHOOK_SECRET")
    parser.add_argument("--seed", type=int, default=None, help="shuffle seed, for a repeatable order")
    parser.add_argument("--out", type=Path, required=True, help="where to write the result JSON")
    args = parser.parse_args(argv)
    if not args.secret:
        parser.error("--secret or WEBHOOK_SECRET is required")
    if not 1 <= args.unique <= args.total:
        parser.error("need 1 <= --unique <= --total")
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")

    run_id, plan = build_plan(
        total=args.total, unique=args.unique, tenant=args.tenant, secret=args.secret, seed=args.seed
    )
    target = f"{args.url.rstrip('/')}/pos/{args.source}/ingest"
    log(f"dedup_load: {args.total} requests, {args.unique} distinct, concurrency {args.concurrency}, run {run_id}")
    result = asyncio.run(run(target, plan, args.concurrency))
    result = {"run_id": run_id, "unique": args.unique, "concurrency": args.concurrency, **result}
    write_json(args.out, result)
    print_json(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
