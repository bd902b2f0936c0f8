"""A sources file declaring one source per provider scheme, each with a
known secret, and the fixed clock the service reads for them: served by the
hostile-input table (tests/web/test_hostile_input.py) and built into the
schemes the property tests fuzz (tests/intake/test_properties.py)."""

from __future__ import annotations

import base64

NOW = 1_764_000_000  # the service's clock for these sources
SQUARE_URL = "https://ingest.example/pos/square/ingest"
SW_KEY = b"standard-webhooks-hostile-key-32"
SOURCES_TOML = f"""
[sources.square]
scheme = "square"
secrets = ["sq-key"]
notification_url = "{SQUARE_URL}"
[sources.shopify]
scheme = "shopify"
secrets = ["shop-secret"]
[sources.stripe]
scheme = "stripe"
secrets = ["whsec_stripe"]
[sources.billing]
scheme = "standard-webhooks"
secrets = ["whsec_{base64.b64encode(SW_KEY).decode()}"]
[sources.toast]
scheme = "toast"
secrets = ["toast-secret"]
[sources.clover]
scheme = "clover"
secrets = ["clover-auth"]
"""
