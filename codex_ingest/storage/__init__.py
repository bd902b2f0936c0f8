"""PostgreSQL: the pool, the named SQL loaded from sql/, the write path (the
one dedup INSERT, and micro-batching in front of it), driver errors
translated once, migrations, and the embedded server. It speaks in events
(codex_ingest.events), never in HTTP."""
