-- Read-only checks used by the fault tests and bench/chaos.py, never by the service.

-- name: stored_copies
-- How many rows each idempotency key of one tenant and source has:
-- (idempotency_key, copies). The unique index says at most 1; this checks it.
-- params: $1 tenant_id, $2 source
SELECT idempotency_key, count(*) AS copies
FROM events
WHERE tenant_id = $1 AND source = $2
GROUP BY idempotency_key;

-- name: writes_waiting_on_locks
-- How many of the service's connections (application_name codex-ingest)
-- are waiting on a lock right now: tests use it to know a write is in flight.
SELECT count(*) FROM pg_stat_activity
WHERE application_name = 'codex-ingest' AND wait_event_type = 'Lock';
