-- Push delivery (docs/delivery.md): each destination's state and its
-- position in the combined feed, one row per (destination, event) to send,
-- the attempt log, and the throttle's one-second log.
-- depends: 0005_purge_generation

CREATE TABLE destination_state (
    name        text        PRIMARY KEY,
    state       text        NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'paused', 'disabled')),
    reason      text,
    changed_at  timestamptz NOT NULL DEFAULT now(),
    -- The scheduler's position in the combined feed, with the read side's purge stamp.
    xact        xid8        NOT NULL DEFAULT '0',
    id          bigint      NOT NULL DEFAULT 0,
    stamp       xid8        NOT NULL DEFAULT '0',
    -- Events retention deleted before they were scheduled here: counted, never skipped silently.
    expired     bigint      NOT NULL DEFAULT 0,
    -- The destination's filters as the sources file declares them (NULL: all), written by each
    -- worker at start: retention needs them to tell which deleted events it had to receive.
    sources     text[],
    tenants     text[]
);

CREATE TABLE deliveries (
    destination  text        NOT NULL,
    event_id     bigint      NOT NULL,
    tenant_id    text        NOT NULL,
    xact         xid8        NOT NULL,  -- the event's place in the delivery order
    state        text        NOT NULL DEFAULT 'pending'
                             CHECK (state IN ('pending', 'delivered', 'parked', 'expired')),
    attempts     integer     NOT NULL DEFAULT 0,
    next_at      timestamptz NOT NULL DEFAULT now(),
    lease_token  uuid,
    lease_until  timestamptz,
    last_status  integer,
    last_error   text,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (destination, event_id)
);
-- What is due, in delivery order, per destination; and each tenant's head in ordered mode.
CREATE INDEX deliveries_due ON deliveries (destination, xact, event_id) WHERE state = 'pending';
CREATE INDEX deliveries_tenant_head ON deliveries (destination, tenant_id, xact, event_id) WHERE state = 'pending';
CREATE INDEX deliveries_parked ON deliveries (destination, event_id) WHERE state = 'parked';
CREATE INDEX deliveries_expired ON deliveries (destination, event_id) WHERE state = 'expired';

CREATE TABLE delivery_attempts (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    destination      text        NOT NULL,
    event_id         bigint      NOT NULL,
    tenant_id        text        NOT NULL,
    attempt          integer     NOT NULL,
    status           integer,              -- NULL: no answer (error says why)
    error            text,
    duration_ms      real        NOT NULL,
    response_excerpt text,                 -- the first 1 KB, untrusted text
    at               timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX delivery_attempts_newest ON delivery_attempts (destination, id DESC);

-- The throttle: one row per request sent in the last second or so, per destination.
CREATE TABLE destination_sends (
    destination text        NOT NULL,
    at          timestamptz NOT NULL
);
CREATE INDEX destination_sends_window ON destination_sends (destination, at);
