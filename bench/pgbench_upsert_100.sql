-- pgbench script: the batch endpoint's work without HTTP. One transaction
-- stores 100 new events of about 300 bytes through the service's own dedup
-- statement shape (INSERT ... SELECT ... ON CONFLICT DO NOTHING RETURNING).
-- tps x 100 is events/s, the ceiling bench/batch_load.py is compared with.
\set k random(1, 2000000000)
INSERT INTO events (tenant_id, source, idempotency_key, body_sha256, body, content_type)
SELECT 'pgbench', 'pgbench-batch', :client_id || '-' || :k || '-' || g || '-' || random(),
       sha256(convert_to(:k || '-' || g, 'UTF8')),
       convert_to(rpad('{"event_id":"' || :k || '-' || g || '","type":"sale.completed","pad":"', 296, 'x') || '"}', 'UTF8'),
       'application/json'
FROM generate_series(1, 100) AS g
ON CONFLICT (tenant_id, source, idempotency_key) DO NOTHING
RETURNING id, received_at;
