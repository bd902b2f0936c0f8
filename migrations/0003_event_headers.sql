-- The request headers an event came with: each provider's signature,
-- timestamp, topic and event id, User-Agent, Content-Type and the names an
-- operator lists for a source (codex_ingest/intake/headers.py chooses them;
-- never Authorization, Cookie, Proxy-* or one of the service's secrets).
-- A JSON object of lower-case name to value. NULL: the event was stored
-- before this migration, when no header was kept.
-- depends: 0002_delivery_cursor

-- No default: the column is added without rewriting the table.
ALTER TABLE events ADD COLUMN headers jsonb;
