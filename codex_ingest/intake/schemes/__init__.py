"""Signature schemes, one module each behind one interface (base.Scheme):
the service's own X-Signature scheme (generic.py) and each provider's.
registry.py picks the scheme that reads each source."""
