-- The events schema spread by tenant_id, for the road from one machine to
-- many (docs/scaling.md). On Citus, the same table is distributed with
--     SELECT create_distributed_table('events', 'tenant_id');
--     SELECT create_distributed_table('purge_horizons', 'tenant_id', colocate_with => 'events');
-- Here it is PostgreSQL's native hash partitioning, which shards the same
-- way inside one server: tests/storage/test_partitioned_schema.py runs the
-- service's own write path and cursor read on it unchanged.
--
-- What changes against migrations/0001 to 0005:
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

-- Push delivery's tables are migrations/0006_delivery.sql's, applied as they are after this
-- file: they are not spread by tenant (on Citus they would stay on the coordinator, or be
-- distributed by destination). The purge (sql/retention.sql) writes them when it deletes events.
