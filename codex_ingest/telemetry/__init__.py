"""What the service tells operators: its own Prometheus metrics, the
per-request HTTP series, and JSON log lines."""
