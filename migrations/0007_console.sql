-- The console (docs/console.md): operators' sessions, and the audit of
-- what they changed from it.
-- depends: 0006_delivery

-- One row per signed-in browser. The cookie carries 32 random bytes; only
-- their SHA-256 is kept, so the table gives no live session away. token_sha256
-- says which read token signed in: its scope is looked up in the running
-- configuration on each request, so a token removed from CODEX_API_TOKENS
-- ends its sessions.
CREATE TABLE console_sessions (
    id_sha256    bytea       PRIMARY KEY CHECK (octet_length(id_sha256) = 32),
    token_sha256 bytea       NOT NULL CHECK (octet_length(token_sha256) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);

-- Every replay, retry, enable and disable made from the console: who (the
-- first 12 hex digits of the token's SHA-256, never the token), what, when.
CREATE TABLE console_audit (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text        NOT NULL,
    action      text        NOT NULL,
    destination text,
    detail      jsonb
);
CREATE INDEX console_audit_destination ON console_audit (destination, id DESC);

-- An event's delivery attempts, for its page.
CREATE INDEX delivery_attempts_event ON delivery_attempts (event_id, id);

-- Ingest outcomes per minute and source label, added up from every worker and
-- replica every few seconds: the console's overview. Labels are the metrics'
-- (bounded: declared sources, a few verified others, "_other").
CREATE TABLE ingest_minutes (
    minute  timestamptz NOT NULL,
    source  text        NOT NULL,
    outcome text        NOT NULL,
    count   bigint      NOT NULL,
    PRIMARY KEY (minute, source, outcome)
);

-- The newest refused requests: when, the source label, the outcome, and the
-- tenant the request named (a claim, well-formed or NULL). Never a body, a
-- header or a secret; trimmed to the newest 1,000 rows.
CREATE TABLE recent_rejections (
    id      bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      timestamptz NOT NULL,
    source  text        NOT NULL,
    outcome text        NOT NULL,
    tenant  text
);
