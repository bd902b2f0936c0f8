"""Tests of codex_ingest.web: the ingest contract over HTTP, hostile and slow clients, probes, metrics, OpenAPI."""
