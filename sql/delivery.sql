-- Push delivery's statements (docs/delivery.md). Parameters are
-- positional; codex_ingest/delivery/ names each one where it binds them.

-- name: ensure_destination
-- A destination's state row, created active the first time a worker sees
-- it, with its filters as declared now (retention reads them).
-- params: $1 name, $2 sources (text[], NULL: all), $3 tenants (text[], NULL: all)
INSERT INTO destination_state (name, sources, tenants) VALUES ($1, $2, $3)
ON CONFLICT (name) DO UPDATE SET sources = EXCLUDED.sources, tenants = EXCLUDED.tenants;

-- name: lock_schedule
-- The destination's position, locked for this scheduling transaction; no row:
-- another worker is scheduling it now (SKIP LOCKED). A disabled destination is
-- scheduled too (only its sending stops): its lag and backlog stay true, and
-- what it owes goes out when it is enabled again.
-- Returns (xact text, id, stamp text).
-- params: $1 name
SELECT xact::text AS xact, id, stamp::text AS stamp
FROM destination_state
WHERE name = $1
FOR UPDATE SKIP LOCKED;

-- name: schedule
-- One delivery row for each matching event after the position, in delivery
-- order, up to $7 of them, below the delivery horizon (as read_feed): a late
-- commit is scheduled when it lands, never skipped. Returns the last
-- (xact text, id) looked at, how many were looked at and how many matched;
-- the caller moves the position.
-- params: $1 name, $2 after xact (text), $3 after id, $4 sources (text[], NULL: all),
--         $5 tenants (text[], NULL: all), $6 limit
WITH next AS (
    SELECT e.id, e.tenant_id, e.xact
    FROM events AS e
    WHERE (e.xact, e.id) > ($2::text::xid8, $3::bigint)
      AND e.xact < (SELECT pg_snapshot_xmin(pg_current_snapshot()))
    ORDER BY e.xact, e.id
    LIMIT $6
), matching AS (
    INSERT INTO deliveries (destination, event_id, tenant_id, xact)
    SELECT $1, n.id, n.tenant_id, n.xact
    FROM next AS n JOIN events AS e ON e.id = n.id
    WHERE ($4::text[] IS NULL OR e.source = ANY($4::text[]))
      AND ($5::text[] IS NULL OR e.tenant_id = ANY($5::text[]))
    ON CONFLICT (destination, event_id) DO NOTHING
    RETURNING 1
)
SELECT (SELECT xact::text FROM next ORDER BY xact DESC, id DESC LIMIT 1) AS xact,
       (SELECT id FROM next ORDER BY xact DESC, id DESC LIMIT 1) AS id,
       (SELECT count(*) FROM next) AS examined,
       (SELECT count(*) FROM matching) AS scheduled;

-- name: move_position
-- params: $1 name, $2 xact (text), $3 id, $4 stamp (text), $5 events found expired
UPDATE destination_state
SET xact = $2::text::xid8, id = $3, stamp = $4::text::xid8, expired = expired + $5
WHERE name = $1;

-- name: claim_parallel
-- Up to $3 due deliveries of a destination, leased to $2 for $4 seconds, in
-- delivery order, with the event's bytes and headers. A row whose lease ran
-- out is due again; nothing while the destination is paused or disabled.
-- Returns (event_id, tenant_id, attempts, source,
-- idempotency_key, content_type, headers text, body); a row whose event
-- retention deleted comes with a NULL body: the caller marks it expired.
-- params: $1 destination, $2 lease token (uuid), $3 limit, $4 lease seconds
WITH due AS (
    SELECT destination, event_id
    FROM deliveries
    WHERE destination = $1 AND state = 'pending' AND next_at <= now()
      AND (lease_until IS NULL OR lease_until < now())
      AND EXISTS (SELECT 1 FROM destination_state WHERE name = $1 AND state = 'active')
    ORDER BY xact, event_id
    LIMIT $3
    FOR UPDATE SKIP LOCKED
), leased AS (
    UPDATE deliveries AS d
    SET lease_token = $2, lease_until = now() + make_interval(secs => $4), attempts = d.attempts + 1,
        updated_at = now()
    FROM due
    WHERE d.destination = due.destination AND d.event_id = due.event_id
    RETURNING d.event_id, d.tenant_id, d.attempts
)
SELECT l.event_id, l.tenant_id, l.attempts, e.source, e.idempotency_key, e.content_type,
       e.headers::text AS headers, e.body
FROM leased AS l LEFT JOIN events AS e ON e.id = l.event_id;

-- name: claim_ordered
-- As claim_parallel, but only each tenant's first pending delivery, and only
-- while no delivery of that tenant holds a live lease: per (destination,
-- tenant), event n+1 is not sent before event n got a 2xx or was parked.
-- The tenants with something pending are found by skipping through
-- deliveries_tenant_head (one index probe per tenant, not a pass over every
-- pending row), and each one's head by one more probe.
-- params: $1 destination, $2 lease token (uuid), $3 limit, $4 lease seconds
WITH RECURSIVE tenants AS (
    (SELECT tenant_id FROM deliveries
     WHERE destination = $1 AND state = 'pending' ORDER BY tenant_id LIMIT 1)
    UNION ALL
    SELECT (SELECT d.tenant_id FROM deliveries AS d
            WHERE d.destination = $1 AND d.state = 'pending' AND d.tenant_id > t.tenant_id
            ORDER BY d.tenant_id LIMIT 1)
    FROM tenants AS t
    WHERE t.tenant_id IS NOT NULL
), heads AS (
    SELECT h.destination, h.event_id, h.tenant_id, h.next_at, h.lease_until
    FROM tenants AS t
    CROSS JOIN LATERAL (
        SELECT d.destination, d.event_id, d.tenant_id, d.next_at, d.lease_until
        FROM deliveries AS d
        WHERE d.destination = $1 AND d.state = 'pending' AND d.tenant_id = t.tenant_id
        ORDER BY d.xact, d.event_id
        LIMIT 1
    ) AS h
    WHERE t.tenant_id IS NOT NULL
), due AS (
    SELECT d.destination, d.event_id
    FROM deliveries AS d JOIN heads AS h USING (destination, event_id)
    WHERE h.next_at <= now() AND (h.lease_until IS NULL OR h.lease_until < now())
      -- Checked again on the row as locked: heads comes from this statement's snapshot, and
      -- another worker may have leased or finished that row since (its update is what the
      -- lock waits for); without this, two workers send the same head at once.
      AND d.state = 'pending' AND d.next_at <= now() AND (d.lease_until IS NULL OR d.lease_until < now())
      AND EXISTS (SELECT 1 FROM destination_state WHERE name = $1 AND state = 'active')
    ORDER BY d.xact, d.event_id
    LIMIT $3
    FOR UPDATE OF d SKIP LOCKED
), leased AS (
    UPDATE deliveries AS d
    SET lease_token = $2, lease_until = now() + make_interval(secs => $4), attempts = d.attempts + 1,
        updated_at = now()
    FROM due
    WHERE d.destination = due.destination AND d.event_id = due.event_id
    RETURNING d.event_id, d.tenant_id, d.attempts
)
SELECT l.event_id, l.tenant_id, l.attempts, e.source, e.idempotency_key, e.content_type,
       e.headers::text AS headers, e.body
FROM leased AS l LEFT JOIN events AS e ON e.id = l.event_id;

-- name: record_results
-- Several attempts' outcomes in one statement and one commit (the engine
-- gathers what finished while the last write was under way). Each delivery
-- changes only under the lease that sent it: a worker whose lease ran out
-- (the row was claimed again) changes nothing. Every attempt is logged all
-- the same. state: delivered, pending (a retry at next_at), parked or
-- expired. Returns the event ids recorded.
-- params: $1 destination, $2 event ids, $3 lease tokens, $4 states, $5 next attempt at (NULL: unchanged),
--         $6 HTTP statuses, $7 errors, $8 tenants, $9 attempt numbers, $10 durations in ms,
--         $11 response excerpts (arrays of one element per attempt, in the same order)
WITH outcome AS (
    SELECT *
    FROM unnest($2::bigint[], $3::uuid[], $4::text[], $5::timestamptz[], $6::integer[], $7::text[],
                $8::text[], $9::integer[], $10::real[], $11::text[])
         AS o(event_id, token, state, next_at, status, error, tenant_id, attempt, duration_ms, excerpt)
), recorded AS (
    UPDATE deliveries AS d
    SET state = o.state, next_at = coalesce(o.next_at, d.next_at), lease_token = NULL, lease_until = NULL,
        last_status = o.status, last_error = o.error, updated_at = now()
    FROM outcome AS o
    WHERE d.destination = $1 AND d.event_id = o.event_id AND d.lease_token = o.token
    RETURNING d.event_id
), logged AS (
    INSERT INTO delivery_attempts (destination, event_id, tenant_id, attempt, status, error, duration_ms,
                                   response_excerpt)
    SELECT $1, o.event_id, o.tenant_id, o.attempt, o.status, o.error, o.duration_ms, o.excerpt FROM outcome AS o
)
SELECT event_id FROM recorded;

-- name: throttle_lock
-- The destination's throttle, held to the end of the transaction. A statement
-- of its own: throttle_slot, the next statement, then counts in a snapshot
-- taken after the lock was granted, so it sees every send committed before.
-- params: $1 destination
SELECT pg_advisory_xact_lock(hashtextextended('codex-destination:' || $1, 0));

-- name: throttle_slot
-- Takes a send slot when fewer than $2 slots were taken for the destination
-- in the last $3 seconds, across every worker and replica (a sliding window);
-- true when taken. Runs after throttle_lock, in its transaction. Slots older
-- than the window are deleted on the way: the log holds one window's worth.
-- params: $1 destination, $2 most requests a second, $3 window seconds
WITH pruned AS (
    DELETE FROM destination_sends
    WHERE destination = $1 AND at <= clock_timestamp() - make_interval(secs => $3)
), recent AS (
    SELECT count(*) AS sent FROM destination_sends
    WHERE destination = $1 AND at > clock_timestamp() - make_interval(secs => $3)
), taken AS (
    INSERT INTO destination_sends (destination, at)
    SELECT $1, clock_timestamp() FROM recent WHERE recent.sent < $2
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM taken);

-- name: renew_lease
-- A lease held while its send waits (for a throttle slot), made to last
-- another $4 seconds. No row: the lease was lost (another worker took the
-- delivery, or an operator changed it), and the send must not happen.
-- params: $1 destination, $2 event_id, $3 lease token, $4 lease seconds
UPDATE deliveries SET lease_until = now() + make_interval(secs => $4)
WHERE destination = $1 AND event_id = $2 AND lease_token = $3 AND state = 'pending'
RETURNING event_id;

-- name: set_destination_state
-- params: $1 name, $2 state, $3 reason
UPDATE destination_state SET state = $2, reason = $3, changed_at = now() WHERE name = $1;

-- name: retry_parked
-- Every parked delivery of a destination, due now again. Returns the count.
-- params: $1 destination
WITH requeued AS (
    UPDATE deliveries SET state = 'pending', next_at = now(), attempts = 0, updated_at = now()
    WHERE destination = $1 AND state = 'parked'
    RETURNING 1
)
SELECT count(*) FROM requeued;

-- name: replay_since
-- Every event received since $2 (of tenant $3, NULL: all) that the
-- destination takes, due again with its original webhook-id. A delivery in
-- flight right now (a live lease) is left to its sender: it is being sent
-- again already, and clearing its lease would send it twice at once. Returns
-- how many events the replay covers.
-- params: $1 destination, $2 since, $3 tenant (NULL: every tenant), $4 sources (NULL: all), $5 tenants (NULL: all)
WITH chosen AS (
    SELECT id, tenant_id, xact FROM events
    WHERE received_at >= $2
      AND ($3::text IS NULL OR tenant_id = $3)
      AND ($4::text[] IS NULL OR source = ANY($4::text[]))
      AND ($5::text[] IS NULL OR tenant_id = ANY($5::text[]))
), requeued AS (
    INSERT INTO deliveries AS d (destination, event_id, tenant_id, xact)
    SELECT $1, id, tenant_id, xact FROM chosen
    ON CONFLICT (destination, event_id) DO UPDATE
    SET state = 'pending', next_at = now(), attempts = 0, lease_token = NULL, lease_until = NULL,
        updated_at = now()
    WHERE NOT (d.state = 'pending' AND d.lease_until > now())
    RETURNING 1
)
SELECT count(*) FROM chosen;

-- name: delivery_gauges
-- Each known destination's state for the gauges: (name, state, pending,
-- oldest pending event's age in seconds (0: none), parked). Counts come from
-- the partial indexes on pending and parked rows.
SELECT s.name, s.state,
       (SELECT count(*) FROM deliveries AS d WHERE d.destination = s.name AND d.state = 'pending') AS pending,
       coalesce((SELECT extract(epoch FROM now() - e.received_at)::float8
                 FROM deliveries AS d JOIN events AS e ON e.id = d.event_id
                 WHERE d.destination = s.name AND d.state = 'pending'
                 ORDER BY d.xact, d.event_id LIMIT 1), 0) AS oldest_seconds,
       (SELECT count(*) FROM deliveries AS d WHERE d.destination = s.name AND d.state = 'parked') AS parked
FROM destination_state AS s;
