-- Operating push delivery (codex_ingest/delivery/admin.py): each
-- destination's state and backlog, its attempt log by keyset (never
-- OFFSET), and the operator's state changes. Replaying and retrying use
-- sql/delivery.sql's replay_since and retry_parked. Parameters are
-- positional; admin.py names each one where it binds them.

-- name: destination_overview
-- One row per name of $1, in its order, whether or not the destination has a
-- destination_state row yet (none: active, nothing counted). pending,
-- in_flight (a live lease) and failing (at least one attempt done without a
-- 2xx: attempts, less the one a live lease is making now) count its pending
-- rows through the partial index deliveries_due; parked through
-- deliveries_parked; expired adds the events retention deleted before they
-- were scheduled (destination_state.expired) to the rows found deleted
-- when claimed. oldest_pending_at: when the event of the first pending
-- delivery in delivery order was received (NULL: nothing pending).
-- scheduler_behind: an event below the delivery horizon lies past the
-- destination's position (the scheduler has not looked at it yet, whether
-- or not the destination takes it; a disabled destination is scheduled too).
-- last_success_at and last_failure_at come from the newest attempts
-- (delivery_attempts_newest).
-- params: $1 destination names (text[])
SELECT n.name,
       coalesce(s.state, 'active') AS state,
       s.reason,
       p.pending, p.in_flight, p.failing,
       (SELECT count(*) FROM deliveries AS d WHERE d.destination = n.name AND d.state = 'parked') AS parked,
       coalesce(s.expired, 0)
         + (SELECT count(*) FROM deliveries AS d WHERE d.destination = n.name AND d.state = 'expired') AS expired,
       (SELECT e.received_at
        FROM deliveries AS d JOIN events AS e ON e.id = d.event_id
        WHERE d.destination = n.name AND d.state = 'pending'
        ORDER BY d.xact, d.event_id
        LIMIT 1) AS oldest_pending_at,
       now() AS now,
       EXISTS (SELECT 1 FROM events AS e
               WHERE (e.xact, e.id) > (coalesce(s.xact, '0'::xid8), coalesce(s.id, 0))
                 AND e.xact < (SELECT pg_snapshot_xmin(pg_current_snapshot()))) AS scheduler_behind,
       (SELECT a.at FROM delivery_attempts AS a
        WHERE a.destination = n.name AND a.status BETWEEN 200 AND 299
        ORDER BY a.id DESC LIMIT 1) AS last_success_at,
       (SELECT a.at FROM delivery_attempts AS a
        WHERE a.destination = n.name AND (a.status IS NULL OR a.status NOT BETWEEN 200 AND 299)
        ORDER BY a.id DESC LIMIT 1) AS last_failure_at
FROM unnest($1::text[]) WITH ORDINALITY AS n(name, ord)
LEFT JOIN destination_state AS s ON s.name = n.name
CROSS JOIN LATERAL (
    SELECT count(*) AS pending,
           count(*) FILTER (WHERE d.lease_until > now()) AS in_flight,
           count(*) FILTER (WHERE d.attempts > CASE WHEN d.lease_until > now() THEN 1 ELSE 0 END) AS failing
    FROM deliveries AS d
    WHERE d.destination = n.name AND d.state = 'pending'
) AS p
ORDER BY n.ord;

-- name: destination_attempts
-- A page of a destination's attempt log, newest first, by keyset on the
-- attempt's id (delivery_attempts_newest: the scan starts at $2 and stops
-- at the LIMIT; filtered rows are skipped on the way). $3 'delivered': a
-- 2xx; 'failed': anything else, no answer included; NULL: both. $4 an
-- exact HTTP status. The caller asks for one row more than the page to know
-- whether another page follows. Returns (id, event_id, tenant_id, attempt,
-- status, error, duration_ms, response_excerpt, at).
-- params: $1 destination, $2 ids below this (9223372036854775807: from the newest), $3 outcome
--         ('delivered', 'failed' or NULL), $4 status (NULL: any), $5 tenant (NULL: any), $6 limit
SELECT id, event_id, tenant_id, attempt, status, error, duration_ms, response_excerpt, at
FROM delivery_attempts
WHERE destination = $1
  AND id < $2::bigint
  AND ($3::text IS NULL
       OR ($3::text = 'delivered') = coalesce(status BETWEEN 200 AND 299, false))
  AND ($4::integer IS NULL OR status = $4::integer)
  AND ($5::text IS NULL OR tenant_id = $5::text)
ORDER BY id DESC
LIMIT $6;

-- name: change_destination_state
-- An operator's enable or disable: the destination's state and reason,
-- its row created when no worker has made it yet (its position then at the
-- start of the feed, as ensure_destination makes it). Returns the state.
-- params: $1 name, $2 state ('active' or 'disabled'), $3 reason (NULL: none)
INSERT INTO destination_state AS s (name, state, reason) VALUES ($1, $2, $3)
ON CONFLICT (name) DO UPDATE SET state = EXCLUDED.state, reason = EXCLUDED.reason, changed_at = now()
RETURNING s.state;

-- name: pending_due_now
-- Every pending delivery of a destination waiting for a later attempt, due
-- now (enable: what a disabled destination held back goes out at once, not
-- at its retry's time). Attempts already made still count toward parking.
-- Returns the count.
-- params: $1 destination
WITH due AS (
    UPDATE deliveries SET next_at = now(), updated_at = now()
    WHERE destination = $1 AND state = 'pending' AND next_at > now()
    RETURNING 1
)
SELECT count(*) FROM due;
