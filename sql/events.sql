-- The write path's statements. Parameters are positional ($n); the Python
-- wrapper that binds them (codex_ingest/store.py) names each one.

-- name: insert_event
-- The dedup: stores a new event, or nothing when (tenant_id, source,
-- idempotency_key) already exists. One row (id, received_at) for a new event,
-- no row for an existing key. Runs in its own implicit transaction, so the row
-- is committed when the statement returns.
-- params: $1 tenant_id, $2 source, $3 idempotency_key, $4 body_sha256, $5 body, $6 content_type
INSERT INTO events (tenant_id, source, idempotency_key, body_sha256, body, content_type)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (tenant_id, source, idempotency_key) DO NOTHING
RETURNING id, received_at;

-- name: find_event
-- The stored event under a key: (id, body_sha256, received_at), or no row.
-- Must run as a statement of its own after insert_event found a conflict: its
-- fresh snapshot sees an original that committed while the insert waited.
-- params: $1 tenant_id, $2 source, $3 idempotency_key
SELECT id, body_sha256, received_at
FROM events
WHERE tenant_id = $1 AND source = $2 AND idempotency_key = $3;
