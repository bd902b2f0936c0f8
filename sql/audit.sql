-- Read-only checks used by the fault tests and bench/chaos.py, never by the service.

-- name: stored_copies
-- How many rows each idempotency key of one tenant and source has:
-- (idempotency_key, copies). The unique index says at most 1; this checks it.
-- params: $1 tenant_id, $2 source
SELECT idempotency_key, count(*) AS copies
FROM events
WHERE tenant_id = $1 AND source = $2
GROUP BY idempotency_key;
