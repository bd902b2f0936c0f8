-- The write path's statements. Parameters are positional ($n); the Python
-- wrapper that binds them (codex_ingest/storage/store.py) names each one.

-- name: insert_event
-- The dedup: stores a new event, or nothing when (tenant_id, source,
-- idempotency_key) already exists. One row (id, received_at) for a new event,
-- no row for an existing key. Runs in its own implicit transaction, so the row
-- is committed when the statement returns.
-- params: $1 tenant_id, $2 source, $3 idempotency_key, $4 body_sha256, $5 body, $6 content_type,
--         $7 headers (a JSON object's text, or NULL)
INSERT INTO events (tenant_id, source, idempotency_key, body_sha256, body, content_type, headers)
VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb)
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

-- name: insert_events
-- The dedup for a micro-batch: the same statement as insert_event over
-- arrays, one row per new event, in one implicit transaction (one commit).
-- Rows arrive sorted by key so concurrent batches take index locks in the
-- same order and cannot deadlock. Returns (id, tenant_id, source,
-- idempotency_key, received_at) for each new event; keys that already
-- existed return nothing.
-- params: $1 tenant_id[], $2 source[], $3 idempotency_key[], $4 body_sha256[], $5 body[], $6 content_type[],
--         $7 headers[] (JSON objects' text, or NULLs)
INSERT INTO events (tenant_id, source, idempotency_key, body_sha256, body, content_type, headers)
SELECT t, s, k, h, b, c, hd::jsonb
FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::bytea[], $6::text[], $7::text[]) AS u (t, s, k, h, b, c, hd)
ON CONFLICT (tenant_id, source, idempotency_key) DO NOTHING
RETURNING id, tenant_id, source, idempotency_key, received_at;

-- name: find_events
-- The stored events under many keys: (id, tenant_id, source,
-- idempotency_key, body_sha256, received_at) for each key found. Like
-- find_event, a statement of its own after insert_events.
-- params: $1 tenant_id[], $2 source[], $3 idempotency_key[]
SELECT e.id, e.tenant_id, e.source, e.idempotency_key, e.body_sha256, e.received_at
FROM unnest($1::text[], $2::text[], $3::text[]) AS k (tenant_id, source, idempotency_key)
JOIN events AS e USING (tenant_id, source, idempotency_key);
