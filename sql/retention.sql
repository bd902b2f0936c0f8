-- Retention: old events deleted in short chunks.

-- name: purge_chunk
-- Deletes up to $2 events received before $1, oldest ids first, in one
-- short transaction, and moves each touched tenant's purge horizon to the
-- last (xact, id) deleted, so a cursor before it gets 410 instead of
-- skipping, and records this chunk's transaction as the one that moved it
-- (generation: a reader that began after it ended is not told 410 by it).
-- SKIP LOCKED: workers purging at once share the work. Returns the number
-- of rows deleted (0: done).
-- params: $1 older than (timestamptz), $2 chunk rows
WITH doomed AS (
    DELETE FROM events
    WHERE id IN (
        SELECT id FROM events WHERE received_at < $1 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED
    )
    RETURNING tenant_id, source, xact, id
), last_per_tenant AS (
    SELECT DISTINCT ON (tenant_id) tenant_id, xact, id
    FROM doomed
    ORDER BY tenant_id, xact DESC, id DESC
), moved AS (
    INSERT INTO purge_horizons AS h (tenant_id, xact, id, generation)
    SELECT tenant_id, xact, id, pg_current_xact_id() FROM last_per_tenant
    ON CONFLICT (tenant_id) DO UPDATE SET xact = EXCLUDED.xact, id = EXCLUDED.id, generation = EXCLUDED.generation
    WHERE (h.xact, h.id) < (EXCLUDED.xact, EXCLUDED.id)
), undelivered AS (
    -- Push delivery: an event deleted before a destination got it is never skipped silently.
    -- Its pending or parked delivery becomes expired (listed, counted), and a send in
    -- flight loses its lease, so its outcome cannot turn the row back to pending...
    UPDATE deliveries AS d
    SET state = 'expired', last_error = 'deleted by retention before it was delivered', updated_at = now(),
        lease_token = NULL, lease_until = NULL
    FROM doomed
    WHERE d.event_id = doomed.id AND d.state IN ('pending', 'parked')
), unscheduled AS (
    -- ...and one the destination's scheduler had not reached yet gets an expired row too.
    INSERT INTO deliveries (destination, event_id, tenant_id, xact, state, last_error)
    SELECT s.name, doomed.id, doomed.tenant_id, doomed.xact, 'expired', 'deleted by retention before it was scheduled'
    FROM doomed
    JOIN destination_state AS s
      ON (doomed.xact, doomed.id) > (s.xact, s.id)
     AND (s.sources IS NULL OR doomed.source = ANY(s.sources))
     AND (s.tenants IS NULL OR doomed.tenant_id = ANY(s.tenants))
    ON CONFLICT (destination, event_id) DO NOTHING
), delivered AS (
    -- What was delivered needs no row once its event is gone.
    DELETE FROM deliveries AS d USING doomed WHERE d.event_id = doomed.id AND d.state = 'delivered'
)
SELECT count(*) FROM doomed;
