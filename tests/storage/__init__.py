"""Tests of codex_ingest.storage: the write path, batching, the pool, SQL files, migrations, exactly-once under concurrency."""
