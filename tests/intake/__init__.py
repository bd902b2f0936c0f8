"""Tests of codex_ingest.intake: checks, signatures, the sources file, every provider scheme, the rate limit."""
