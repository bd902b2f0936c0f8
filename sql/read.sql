-- The read side: events in delivery order, by cursor. The cursor is the
-- pair (xact, id): the transaction that stored a row, then its id. Only
-- rows whose transaction is older than every transaction still running are
-- served (below the snapshot's xmin): no row can later commit behind a
-- cursor that has passed it. xid8 travels as text; Python never does
-- arithmetic on it. Statements run outside any explicit transaction, so
-- the reader holds no xid and delays nobody's delivery.

-- name: read_events
-- A page of one tenant's deliverable events after a cursor, in delivery
-- order: (xact_text, id, tenant_id, source, idempotency_key, received_at,
-- content_type, headers (JSON text, or NULL), body). The horizon is taken once per statement (an
-- initplan). The text copy of xact must not be named xact: ORDER BY would
-- then sort by the text ('1000' < '903') and the cursor would skip.
-- The byte cap: a row carries its body only while the bodies up to and
-- including it fit in $6 (the first row always does); past it body is NULL
-- and the page ends there (storage/delivery.py). octet_length() of a stored
-- bytea reads the size from the row, not the TOASTed bytes, so the bodies
-- past the cap are never read nor sent; the window runs in the index's
-- order and stops at the LIMIT, like the scan.
-- params: $1 tenant_id, $2 source (NULL: every source), $3 after xact (text), $4 after id, $5 limit,
--         $6 most bytes of bodies (NULL: no cap)
SELECT xact::text AS xact_text, id, tenant_id, source, idempotency_key, received_at, content_type,
       headers::text AS headers,
       CASE WHEN $6::bigint IS NULL OR row_number() OVER page = 1 OR sum(octet_length(body)) OVER page <= $6::bigint
            THEN body END AS body
FROM events
WHERE tenant_id = $1
  AND ($2::text IS NULL OR source = $2::text)
  AND (xact, id) > ($3::text::xid8, $4::bigint)
  AND xact < (SELECT pg_snapshot_xmin(pg_current_snapshot()))
WINDOW page AS (ORDER BY xact, id ROWS UNBOUNDED PRECEDING)
ORDER BY xact, id
LIMIT $5;

-- name: read_feed
-- A page of every tenant's deliverable events after a cursor: the combined
-- feed, in the same delivery order and with the same horizon and byte cap
-- as read_events, served by the events_feed index (xact, id). Columns as
-- read_events.
-- params: $1 source (NULL: every source), $2 after xact (text), $3 after id, $4 limit,
--         $5 most bytes of bodies (NULL: no cap)
SELECT xact::text AS xact_text, id, tenant_id, source, idempotency_key, received_at, content_type,
       headers::text AS headers,
       CASE WHEN $5::bigint IS NULL OR row_number() OVER page = 1 OR sum(octet_length(body)) OVER page <= $5::bigint
            THEN body END AS body
FROM events
WHERE ($1::text IS NULL OR source = $1::text)
  AND (xact, id) > ($2::text::xid8, $3::bigint)
  AND xact < (SELECT pg_snapshot_xmin(pg_current_snapshot()))
WINDOW page AS (ORDER BY xact, id ROWS UNBOUNDED PRECEDING)
ORDER BY xact, id
LIMIT $4;

-- name: read_feed_of
-- The combined feed of some tenants (a token scoped to them): each
-- tenant's next events through events_delivery, at most $5 of each, merged
-- into one delivery order; then the byte cap as in read_events. Columns as
-- read_events. The horizon is one value for the whole statement.
-- params: $1 tenant_id[], $2 source (NULL: every source), $3 after xact (text), $4 after id, $5 limit,
--         $6 most bytes of bodies (NULL: no cap)
WITH horizon AS MATERIALIZED (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin),
next AS (
    SELECT e.*
    FROM unnest($1::text[]) AS t (tenant_id)
    CROSS JOIN LATERAL (
        SELECT xact, id, tenant_id, source, idempotency_key, received_at, content_type, headers, body
        FROM events
        WHERE tenant_id = t.tenant_id
          AND ($2::text IS NULL OR source = $2::text)
          AND (xact, id) > ($3::text::xid8, $4::bigint)
          AND xact < (SELECT xmin FROM horizon)
        ORDER BY xact, id
        LIMIT $5
    ) AS e
    ORDER BY xact, id
    LIMIT $5
)
SELECT xact::text AS xact_text, id, tenant_id, source, idempotency_key, received_at, content_type,
       headers::text AS headers,
       CASE WHEN $6::bigint IS NULL OR row_number() OVER page = 1 OR sum(octet_length(body)) OVER page <= $6::bigint
            THEN body END AS body
FROM next
WINDOW page AS (ORDER BY xact, id ROWS UNBOUNDED PRECEDING)
ORDER BY xact, id;

-- name: purge_state
-- Whether retention deleted, after a cursor, an event the reader had not
-- seen gone, and the stamp for the cursors this read gives out:
-- (stamp: this snapshot's xmin, as text; expired). Among the tenants read
-- ($1; NULL: every tenant), a horizon past the cursor expires it when the
-- purge that moved it ($generation) may have ended after the read that made
-- the cursor began (not below that read's stamp). Runs in the read's
-- REPEATABLE READ READ ONLY transaction, in the page's own snapshot: a purge
-- cannot land between this check and the page.
-- params: $1 tenant_id[] (NULL: every tenant), $2 after xact (text), $3 after id, $4 the cursor's stamp (text)
SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS stamp,
       EXISTS (
           SELECT 1 FROM purge_horizons
           WHERE ($1::text[] IS NULL OR tenant_id = ANY($1::text[]))
             AND generation >= $4::text::xid8
             AND (xact, id) > ($2::text::xid8, $3::bigint)
       ) AS expired;

-- name: export_events
-- One tenant's events received in [since, until), in delivery order, for a
-- server-side cursor: (xact_text, id, tenant_id, source, idempotency_key,
-- received_at, content_type, headers (JSON text, or NULL), body).
-- params: $1 tenant_id, $2 source (NULL: every source), $3 since (NULL: the start), $4 until (NULL: now)
SELECT xact::text AS xact_text, id, tenant_id, source, idempotency_key, received_at, content_type,
       headers::text AS headers, body
FROM events
WHERE tenant_id = $1
  AND ($2::text IS NULL OR source = $2::text)
  AND ($3::timestamptz IS NULL OR received_at >= $3::timestamptz)
  AND ($4::timestamptz IS NULL OR received_at < $4::timestamptz)
ORDER BY xact, id;

-- name: export_feed
-- Every tenant's events received in [since, until), in delivery order, for a
-- server-side cursor: (xact_text, id, tenant_id, source, idempotency_key,
-- received_at, content_type, headers (JSON text, or NULL), body).
-- params: $1 source (NULL: every source), $2 since (NULL: the start), $3 until (NULL: now)
SELECT xact::text AS xact_text, id, tenant_id, source, idempotency_key, received_at, content_type,
       headers::text AS headers, body
FROM events
WHERE ($1::text IS NULL OR source = $1::text)
  AND ($2::timestamptz IS NULL OR received_at >= $2::timestamptz)
  AND ($3::timestamptz IS NULL OR received_at < $3::timestamptz)
ORDER BY xact, id;

-- name: horizon_lag
-- Seconds the delivery horizon lags: the age of the oldest transaction that
-- holds an xid, anywhere on the server (0 when there is none).
SELECT coalesce(extract(epoch FROM now() - min(xact_start)), 0)::float8
FROM pg_stat_activity
WHERE backend_xid IS NOT NULL;

-- name: oldest_event_age
-- Seconds since the oldest retained event was received (no row: no event).
-- The lowest id is the oldest row to within the seconds a commit can lag;
-- min(received_at) would read the whole table (it has no index).
SELECT extract(epoch FROM now() - received_at)::float8 FROM events ORDER BY id LIMIT 1;

-- name: notify_readers
-- Wakes every worker's waiting readers; no payload: they re-read.
NOTIFY codex_events;

-- name: delivery_horizon
-- The delivery horizon now: the oldest transaction still running (text).
-- While readers wait, each worker reads it once a second on its listener
-- connection, and wakes them when it moves: an event held back by someone
-- else's long transaction is then delivered when that transaction ends.
SELECT pg_snapshot_xmin(pg_current_snapshot())::text;
