-- name: ping
-- Readiness probe: one round trip to the server. Returns 1.
SELECT 1;
