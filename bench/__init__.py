"""Benchmarks: load generators and result checks, run outside the test suite.

Each bench is one module, run as ``python -m bench.NAME``: batch_load, chaos,
check_result, deadline_overhead, dedup_load, floor, metrics_overhead,
pgbouncer_cost, throughput, attack_memory, attack_readers, attack_metrics, ab,
feed, and read_side (a package, one module per part).
What they share has one home each, and imports only point down to it (no
bench imports another, but throughput and ab take aiohttp's floor from floor,
and ab and feed drive batches with batch_load's):

* plan.py      signed request plans; wrk.py driving a server with wrk;
  python_load.py the Python load generator; point.py one measured ingest point
* service.py   the service under test; database.py the embedded PostgreSQL,
  pgbench and the checking queries; local.py free ports and /proc (CPU, memory);
  output.py what a bench prints and writes (stderr, JSON)
* faults.py    the fault harness (signed load, stored copies, verdict);
  replication.py a primary and its standby; daemon.py and pgbouncer.py PgBouncer
  and the other daemons run beside the service
"""
