DROP INDEX delivery_attempts_event;
DROP TABLE console_audit;
DROP TABLE console_sessions;
