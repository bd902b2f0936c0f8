-- Statements for setting up the embedded PostgreSQL (codex_ingest/storage/embedded.py).

-- name: database_exists
-- True when a database of that name exists.
-- params: $1 database name
SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1);

-- name: create_service_database
-- Creates the service's own database on the embedded server.
CREATE DATABASE codex_ingest;
