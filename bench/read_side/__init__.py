"""The read-side bench, ``python -m bench.read_side`` (run.py: its flags, the
run and the JSON), one module per part it measures: read.py (reading back),
long_poll.py (waiting at the head), notify.py (NOTIFY on the write path),
purge.py (ingest while a purge runs), export.py (export's memory); beside them
what the parts share: the service with its read API on (api.py), rows seeded by
SQL (seeding.py), and waiting for a quiet machine (quiet.py)."""
