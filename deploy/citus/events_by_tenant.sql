-- The events schema spread by tenant_id, for the road from one machine to
-- many (docs/scaling.md). On Citus, the same table is distributed with
--     SELECT create_distributed_table('events', 'tenant_id');
--     SELECT create_distributed_table('purge_horizons', 'tenant_id', colocate_with => 'events');
-- Here it is PostgreSQL's native hash partitioning, which shards the same
-- way inside one server: tests/storage/test_partitioned_schema.py runs the
-- service's own write path and cursor read on it unchanged.
--
-- What changes against migrations/0001 to 0006:
-- * Every unique index must contain the distribution column. The dedup key
--   (tenant_id, source, idempotency_key) already does, so ON CONFLICT is
--   decided on one shard. The primary key becomes (tenant_id, id).
-- * id stays an identity column, unique as a number across shards (one
--   sequence; on Citus, a sequence per node with disjoint ranges). It is no
--   longer the order of anything: the cursor is (xact, id) per shard.

CREATE TABLE events (
    id              bigint      GENERATED ALWAYS AS IDENTITY,
    tenant_id       text        NOT NULL,
    source          text        NOT NULL,
    idempotency_key text        NOT NULL,
    body_sha256     bytea       NOT NULL CHECK (octet_length(body_sha256) = 32),
    body            bytea       NOT NULL,
    content_type    text,
    received_at     timestamptz NOT NULL DEFAULT now(),
    xact            xid8        NOT NULL DEFAULT pg_current_xact_id(),
    headers         jsonb,
    PRIMARY KEY (tenant_id, id),
    CONSTRAINT events_dedup_key UNIQUE (tenant_id, source, idempotency_key)
) PARTITION BY HASH (tenant_id);

CREATE TABLE events_shard_0 PARTITION OF events FOR VALUES WITH (MODULUS 4, REMAINDER 0);
CREATE TABLE events_shard_1 PARTITION OF events FOR VALUES WITH (MODULUS 4, REMAINDER 1);
CREATE TABLE events_shard_2 PARTITION OF events FOR VALUES WITH (MODULUS 4, REMAINDER 2);
CREATE TABLE events_shard_3 PARTITION OF events FOR VALUES WITH (MODULUS 4, REMAINDER 3);

CREATE INDEX events_delivery ON events (tenant_id, xact, id);
-- The combined feed's order across tenants (on Citus, read per shard and merged).
CREATE INDEX events_feed ON events (xact, id);

CREATE TABLE purge_horizons (
    tenant_id text   PRIMARY KEY,
    xact      xid8   NOT NULL,
    id        bigint NOT NULL,
    generation xid8  NOT NULL DEFAULT '0'
);

-- Push delivery's tables (migrations/0006_delivery.sql), unchanged: they are not spread by
-- tenant here. The purge (sql/retention.sql) writes them when it deletes events. On Citus they
-- would stay on the coordinator, or be distributed by destination.
CREATE TABLE destination_state (
    name        text        PRIMARY KEY,
    state       text        NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'paused', 'disabled')),
    reason      text,
    changed_at  timestamptz NOT NULL DEFAULT now(),
    -- The scheduler's position in the combined feed, with the read side's purge stamp.
    xact        xid8        NOT NULL DEFAULT '0',
    id          bigint      NOT NULL DEFAULT 0,
    stamp       xid8        NOT NULL DEFAULT '0',
    -- Events retention deleted before they were scheduled here: counted, never skipped silently.
    expired     bigint      NOT NULL DEFAULT 0,
    -- The destination's filters as the sources file declares them (NULL: all), written by each
    -- worker at start: retention needs them to tell which deleted events it had to receive.
    sources     text[],
    tenants     text[]
);

CREATE TABLE deliveries (
    destination  text        NOT NULL,
    event_id     bigint      NOT NULL,
    tenant_id    text        NOT NULL,
    xact         xid8        NOT NULL,  -- the event's place in the delivery order
    state        text        NOT NULL DEFAULT 'pending'
                             CHECK (state IN ('pending', 'delivered', 'parked', 'expired')),
    attempts     integer     NOT NULL DEFAULT 0,
    next_at      timestamptz NOT NULL DEFAULT now(),
    lease_token  uuid,
    lease_until  timestamptz,
    last_status  integer,
    last_error   text,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (destination, event_id)
);
-- What is due, in delivery order, per destination; and each tenant's head in ordered mode.
CREATE INDEX deliveries_due ON deliveries (destination, xact, event_id) WHERE state = 'pending';
CREATE INDEX deliveries_tenant_head ON deliveries (destination, tenant_id, xact, event_id) WHERE state = 'pending';
CREATE INDEX deliveries_parked ON deliveries (destination, event_id) WHERE state = 'parked';
CREATE INDEX deliveries_expired ON deliveries (destination, event_id) WHERE state = 'expired';

CREATE TABLE delivery_attempts (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    destination      text        NOT NULL,
    event_id         bigint      NOT NULL,
    tenant_id        text        NOT NULL,
    attempt          integer     NOT NULL,
    status           integer,              -- NULL: no answer (error says why)
    error            text,
    duration_ms      real        NOT NULL,
    response_excerpt text,                 -- the first 1 KB, untrusted text
    at               timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX delivery_attempts_newest ON delivery_attempts (destination, id DESC);

-- The throttle: one row per request sent in the last second or so, per destination.
CREATE TABLE destination_sends (
    destination text        NOT NULL,
    at          timestamptz NOT NULL
);
CREATE INDEX destination_sends_window ON destination_sends (destination, at);
