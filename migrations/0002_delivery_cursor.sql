-- The read side's delivery order. Identity values are taken when a row is
-- inserted, not when it commits, so "id > last" skips a row whose
-- transaction commits after a later id's. Each row records the transaction
-- that wrote it (xid8, never wraps); readers are served only rows whose
-- transaction is older than every transaction still running, in (xact, id)
-- order, and that pair is the cursor (sql/read.sql).
-- depends: 0001_create_events

-- Rows stored before this migration all committed long ago: transaction 0
-- puts them first, in id order. A constant default adds the column without
-- rewriting the table; new rows then take their transaction's id.
ALTER TABLE events ADD COLUMN xact xid8 NOT NULL DEFAULT '0';
ALTER TABLE events ALTER COLUMN xact SET DEFAULT pg_current_xact_id();

-- Serves a tenant's read in delivery order (the source filter is applied on it).
CREATE INDEX events_delivery ON events (tenant_id, xact, id);

-- Per tenant, the last (xact, id) retention deleted: a cursor before it may
-- have missed deleted events, and is answered 410 instead of skipping them.
CREATE TABLE purge_horizons (
    tenant_id text   PRIMARY KEY,
    xact      xid8   NOT NULL,
    id        bigint NOT NULL
);
