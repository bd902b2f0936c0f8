DROP TABLE recent_rejections;
DROP TABLE ingest_minutes;
DROP INDEX delivery_attempts_event;
DROP TABLE console_audit;
DROP TABLE console_sessions;
