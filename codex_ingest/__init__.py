"""codex_ingest: verified, deduplicated, durable ingest of POS webhooks."""

__version__ = "0.1.0"
