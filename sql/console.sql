-- The console's statements (codex_ingest/console/). Parameters are
-- positional; the console names each one where it binds them.

-- name: console_create_session
-- params: $1 the session id's SHA-256, $2 the token's SHA-256, $3 lifetime in seconds
INSERT INTO console_sessions (id_sha256, token_sha256, expires_at)
VALUES ($1, $2, now() + make_interval(secs => $3));

-- name: console_find_session
-- The token a live session was opened with; no row: none, or expired.
-- params: $1 the session id's SHA-256
SELECT token_sha256 FROM console_sessions WHERE id_sha256 = $1 AND expires_at > now();

-- name: console_end_session
-- params: $1 the session id's SHA-256
DELETE FROM console_sessions WHERE id_sha256 = $1;

-- name: console_purge_sessions
-- Expired sessions, deleted on each sign-in (console_sessions_expiry).
DELETE FROM console_sessions WHERE expires_at <= now();

-- name: console_events
-- A page of events, newest first in delivery order reversed: (xact, id)
-- descending, below the delivery horizon, from before ($6, $7) when given.
-- A page never repeats or skips an event while new ones arrive: a late
-- commit lands above where the paging started (its transaction was running
-- then, so its xact is at or past that horizon), never below it. Served by
-- events_delivery with a tenant, by events_feed without.
-- params: $1 tenants the token may read (NULL: every tenant), $2 tenant, $3 source,
--         $4 received from, $5 received before, $6 before xact (text), $7 before id, $8 limit,
--         $9 event id searched, $10 idempotency key searched (each NULL: no filter)
SELECT e.id, e.tenant_id, e.source, e.idempotency_key, e.received_at, octet_length(e.body) AS size,
       e.xact::text AS xact
FROM events AS e
WHERE e.xact < (SELECT pg_snapshot_xmin(pg_current_snapshot()))
  AND ($6::text IS NULL OR (e.xact, e.id) < ($6::text::xid8, $7::bigint))
  AND ($1::text[] IS NULL OR e.tenant_id = ANY($1::text[]))
  AND ($2::text IS NULL OR e.tenant_id = $2::text)
  AND ($3::text IS NULL OR e.source = $3::text)
  AND ($4::timestamptz IS NULL OR e.received_at >= $4::timestamptz)
  AND ($5::timestamptz IS NULL OR e.received_at < $5::timestamptz)
  AND ($9::bigint IS NULL OR e.id = $9::bigint)
  AND ($10::text IS NULL OR e.idempotency_key = $10::text)
ORDER BY e.xact DESC, e.id DESC
LIMIT $8;

-- name: console_event_deliveries
-- Each listed event's delivery state per destination.
-- params: $1 event ids
SELECT event_id, destination, state FROM deliveries WHERE event_id = ANY($1::bigint[]);

-- name: console_event
-- One event, when the token may read its tenant, and the delivery horizon now
-- (a read cursor after the event exists only once it is below the horizon).
-- params: $1 event id, $2 tenants the token may read (NULL: every tenant)
SELECT id, tenant_id, source, idempotency_key, received_at, content_type, headers::text AS headers, body,
       body_sha256, xact::text AS xact, pg_snapshot_xmin(pg_current_snapshot())::text AS horizon
FROM events
WHERE id = $1 AND ($2::text[] IS NULL OR tenant_id = ANY($2::text[]));

-- name: console_event_attempts
-- An event's delivery attempts, oldest first (delivery_attempts_event).
-- params: $1 event id
SELECT destination, attempt, status, error, duration_ms, response_excerpt, at
FROM delivery_attempts WHERE event_id = $1 ORDER BY id;

-- name: console_audit_write
-- params: $1 actor, $2 action, $3 destination, $4 detail (jsonb text)
INSERT INTO console_audit (actor, action, destination, detail) VALUES ($1, $2, $3, $4::jsonb);

-- name: console_audit_of
-- A destination's latest audit rows, newest first (console_audit_destination).
-- params: $1 destination, $2 limit
SELECT at, actor, action, detail::text AS detail FROM console_audit
WHERE destination = $1 ORDER BY id DESC LIMIT $2;

-- name: console_replay_count
-- How many events a replay since $2 would send again (what the confirmation shows).
-- params: $1 since, $2 tenant (NULL: all), $3 sources (NULL: all), $4 tenants (NULL: all)
SELECT count(*) FROM events
WHERE received_at >= $1
  AND ($2::text IS NULL OR tenant_id = $2)
  AND ($3::text[] IS NULL OR source = ANY($3::text[]))
  AND ($4::text[] IS NULL OR tenant_id = ANY($4::text[]));

-- name: console_retry_event
-- One event's delivery to one destination, due again now with its original
-- webhook-id (left alone while a send of it is in flight). Returns the row.
-- params: $1 destination, $2 event id
INSERT INTO deliveries AS d (destination, event_id, tenant_id, xact)
SELECT $1, e.id, e.tenant_id, e.xact FROM events AS e WHERE e.id = $2
ON CONFLICT (destination, event_id) DO UPDATE
SET state = 'pending', next_at = now(), attempts = 0, lease_token = NULL, lease_until = NULL, updated_at = now()
WHERE NOT (d.state = 'pending' AND d.lease_until > now())
RETURNING d.event_id;

-- name: console_minutes_add
-- A worker's counts since its last flush, added to this minute's, and
-- minutes older than two days deleted.
-- params: $1 source labels, $2 outcomes, $3 counts
WITH added AS (
    INSERT INTO ingest_minutes (minute, source, outcome, count)
    SELECT date_trunc('minute', now()), s, o, c FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u(s, o, c)
    ON CONFLICT (minute, source, outcome) DO UPDATE SET count = ingest_minutes.count + EXCLUDED.count
)
DELETE FROM ingest_minutes WHERE minute < now() - interval '2 days';

-- name: console_rejections_add
-- A worker's newest refusals, and the table trimmed to about 1,000 rows.
-- params: $1 unix times, $2 source labels, $3 outcomes, $4 tenants named (NULL: none)
WITH added AS (
    INSERT INTO recent_rejections (at, source, outcome, tenant)
    SELECT to_timestamp(a), s, o, t FROM unnest($1::float8[], $2::text[], $3::text[], $4::text[]) AS u(a, s, o, t)
)
DELETE FROM recent_rejections WHERE id <= (SELECT max(id) - 1000 FROM recent_rejections);

-- name: console_overview
-- Per source label and outcome: the last hour's and the last day's counts.
SELECT source, outcome,
       coalesce(sum(count) FILTER (WHERE minute >= date_trunc('minute', now()) - interval '1 hour'), 0) AS hour,
       sum(count) AS day
FROM ingest_minutes WHERE minute >= now() - interval '1 day'
GROUP BY source, outcome ORDER BY source, outcome;

-- name: console_recent_rejections
-- params: $1 limit
SELECT at, source, outcome, tenant FROM recent_rejections ORDER BY id DESC LIMIT $1;

-- name: console_oldest_event
SELECT received_at FROM events ORDER BY id LIMIT 1;
