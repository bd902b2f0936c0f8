"""Tests of codex_ingest.delivery: push delivery to the team's own endpoints."""
