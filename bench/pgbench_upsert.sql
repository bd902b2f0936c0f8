-- pgbench script: the service's dedup statement, one row per transaction,
-- with the same mix as the HTTP plan (about half duplicates). The body is a
-- 2 KB bytea, close to the provider-shaped payloads the service is sent.
\set new random(0, 1)
\set k random(1, 2000000000)
\if :new
INSERT INTO events (tenant_id, source, idempotency_key, body_sha256, body, content_type)
VALUES ('pgbench', 'pgbench', :client_id || '-' || :k || '-' || random(), sha256(decode(md5(:k::text), 'hex')),
        decode(repeat('7b22', 512), 'hex'), 'application/json')
ON CONFLICT (tenant_id, source, idempotency_key) DO NOTHING
RETURNING id, received_at;
\else
INSERT INTO events (tenant_id, source, idempotency_key, body_sha256, body, content_type)
VALUES ('pgbench', 'pgbench', 'always-present', sha256(decode(md5('0'), 'hex')),
        decode(repeat('7b22', 512), 'hex'), 'application/json')
ON CONFLICT (tenant_id, source, idempotency_key) DO NOTHING
RETURNING id, received_at;
\endif
