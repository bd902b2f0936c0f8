-- The PostgreSQL roles of a production deployment (docs/operations.md,
-- "Database roles"):
--
--   codex_migrator  owns the schema; `codex-ingest migrate apply` logs in as it.
--   codex_ingest    the runtime role: `codex-ingest serve --no-migrate` on every
--                   replica, and `purge` and `export`. It reads and writes
--                   events and cannot change the schema.
--
-- Run it as a superuser, connected to the service's database (create that
-- first: CREATE DATABASE codex_ingest), BEFORE the first `migrate apply`:
--
--   psql "postgresql://postgres@db.internal:5432/codex_ingest" \
--        -v migrator_password="$MIGRATOR_PASSWORD" -v runtime_password="$RUNTIME_PASSWORD" \
--        -f deploy/postgres/roles.sql
--
-- Without the two password variables the roles get none: set them afterwards
-- in psql with `\password codex_migrator` and `\password codex_ingest`, which
-- also keeps them out of `ps` and out of a server log that logs DDL. The
-- role names can be changed with -v migrator=... -v runtime=...
--
-- Every step is idempotent: running it again changes nothing (and sets the
-- passwords given). It is all one transaction: on an error nothing is kept.
-- tests/storage/test_roles.py runs this file with psql, migrates as the
-- migration role and runs the whole service as the runtime role.

\set ON_ERROR_STOP on
\if :{?migrator}
\else
\set migrator codex_migrator
\endif
\if :{?runtime}
\else
\set runtime codex_ingest
\endif

BEGIN;

-- The two roles: they log in and nothing else (no superuser, CREATEDB,
-- CREATEROLE, REPLICATION or BYPASSRLS). INHERIT: the runtime role uses the
-- privileges of pg_read_all_stats (below) without SET ROLE.
SELECT format('CREATE ROLE %I', :'migrator')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'migrator') \gexec
SELECT format('CREATE ROLE %I', :'runtime')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'runtime') \gexec
ALTER ROLE :"migrator" LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
ALTER ROLE :"runtime" LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;

\if :{?migrator_password}
ALTER ROLE :"migrator" PASSWORD :'migrator_password';
\else
\echo 'no migrator_password given: set it with \\password' :migrator
\endif
\if :{?runtime_password}
ALTER ROLE :"runtime" PASSWORD :'runtime_password';
\else
\echo 'no runtime_password given: set it with \\password' :runtime
\endif

-- The database. Every new database lets PUBLIC (every role) connect and
-- create temporary tables: here only these two roles connect, and neither
-- needs temporary tables. Another role that must connect (a monitoring
-- agent) needs its own GRANT CONNECT.
REVOKE ALL ON DATABASE :"DBNAME" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"DBNAME" TO :"migrator", :"runtime";

-- The schema. PostgreSQL 14 and older (and databases upgraded from them)
-- let PUBLIC create tables in public: nobody but the migration role may.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
-- migrations/*.sql (CREATE TABLE, CREATE INDEX, ALTER TABLE) and yoyo's own
-- tables (_yoyo_migration, _yoyo_log, _yoyo_version, yoyo_lock): the
-- migration role creates them, so it owns them and may alter and drop them.
-- No CREATE on the database: no migration creates a schema or an extension.
GRANT USAGE, CREATE ON SCHEMA public TO :"migrator";
-- The runtime role reaches the tables; it creates nothing.
GRANT USAGE ON SCHEMA public TO :"runtime";

-- The runtime role's table privileges, on every table the migration role
-- creates in public from now on: the tables do not exist yet (the first
-- `migrate apply` creates them), and a table a later migration adds gets
-- them too without running this file again. What each is for:
--   SELECT  sql/events.sql find_event and find_events (the stored original
--           of a duplicate), RETURNING of insert_event/insert_events;
--           sql/read.sql read_events, purge_horizon, export_events,
--           oldest_event_age; the WHERE and RETURNING of purge_chunk.
--   INSERT  sql/events.sql insert_event, insert_events (ON CONFLICT ... DO
--           NOTHING needs no more); sql/retention.sql purge_chunk's upsert
--           into purge_horizons.
--   UPDATE  sql/retention.sql purge_chunk: its ON CONFLICT DO UPDATE of
--           purge_horizons, and its SELECT ... FOR UPDATE SKIP LOCKED on
--           events, which PostgreSQL allows only with UPDATE privilege
--           (without it, every purge fails: permission denied).
--   DELETE  sql/retention.sql purge_chunk (retention, `codex-ingest purge`).
-- No TRUNCATE, REFERENCES or TRIGGER. No sequence grant: events.id is an
-- identity column, whose sequence INSERT uses without one (a later
-- migration using serial or nextval() would need USAGE ON SEQUENCES too).
-- The same four privileges reach yoyo's tables: the runtime role can read
-- which migrations are applied (`serve` without --no-migrate then starts on
-- a current schema and refuses a stale one, and `migrate apply` fails at
-- once with "must be owner of table events"), and could rewrite that
-- record, which is no more than its DELETE on events already allows.
ALTER DEFAULT PRIVILEGES FOR ROLE :"migrator" IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"runtime";
-- The same on tables that already exist: none on a new database; on a
-- database migrated before this file existed, its tables (whose owner
-- must then become the migration role: docs/operations.md).
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO :"runtime";

-- sql/read.sql horizon_lag (the codex_ingest_read_horizon_lag_seconds
-- gauge) reads pg_stat_activity.xact_start of every session holding an xid.
-- PostgreSQL shows any role backend_xid, but xact_start only of its own
-- role's sessions unless it has pg_read_all_stats: without it, a long
-- transaction of another role (a migration, an operator's open BEGIN) is
-- invisible and the gauge reads 0 while delivery stalls. This also shows
-- the runtime role other sessions' query text; pg_monitor would add more.
GRANT pg_read_all_stats TO :"runtime";

-- Not a grant: the service sends synchronous_commit=on with every
-- connection, but PgBouncer drops that parameter. On the role, a 2xx still
-- means committed whatever the server's default (docs/scaling.md).
ALTER ROLE :"runtime" SET synchronous_commit = on;

-- Nothing for LISTEN/NOTIFY (sql/read.sql notify_readers, the read side's
-- listener), /readyz (sql/health.sql ping) or pg_current_snapshot()
-- (read_events, delivery_horizon): PostgreSQL requires no privilege for them.

COMMIT;
