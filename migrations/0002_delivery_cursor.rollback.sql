DROP TABLE purge_horizons;
DROP INDEX events_delivery;
ALTER TABLE events DROP COLUMN xact;
