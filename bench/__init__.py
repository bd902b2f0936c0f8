"""Benchmarks: load generators and result checks, run outside the test suite."""
