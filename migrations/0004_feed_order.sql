-- The combined feed: every tenant's events in one delivery order, (xact,
-- id), for a reader whose token is scoped to every tenant (GET /events
-- without tenant, sql/read.sql read_feed). events_delivery serves one
-- tenant's read; this index serves all of them at once.
-- Built CONCURRENTLY, outside a transaction, so ingest keeps writing while
-- it builds on a large table. If the build fails it leaves an INVALID index:
-- drop it (DROP INDEX CONCURRENTLY events_feed) and apply again.
-- depends: 0003_event_headers
-- transactional: false

CREATE INDEX CONCURRENTLY IF NOT EXISTS events_feed ON events (xact, id);
