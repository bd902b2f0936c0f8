ALTER TABLE events DROP COLUMN headers;
