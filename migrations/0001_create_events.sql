-- Events received from POS providers: one row per (tenant_id, source,
-- idempotency_key), holding the exact bytes received so that a consumer can
-- re-verify a provider's signature later. The body is bytea, not jsonb:
-- jsonb rejects the valid JSON escape \u0000 and does not keep bytes as sent.
CREATE TABLE events (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       text        NOT NULL,
    source          text        NOT NULL,
    idempotency_key text        NOT NULL,
    body_sha256     bytea       NOT NULL CHECK (octet_length(body_sha256) = 32),
    body            bytea       NOT NULL,
    content_type    text,
    received_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_dedup_key UNIQUE (tenant_id, source, idempotency_key)
);
