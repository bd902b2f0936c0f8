"""Fault tests: crashes, database outages and graceful shutdown, on real processes (harness.py)."""
