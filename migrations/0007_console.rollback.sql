DROP TABLE console_audit;
DROP TABLE console_sessions;
