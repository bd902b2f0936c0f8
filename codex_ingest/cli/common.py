"""What every command shares: exit statuses and finding the database."""

from __future__ import annotations

from codex_ingest.settings import Settings, with_database_url
from codex_ingest.storage.embedded import start_embedded
from codex_ingest.storage.queries import load_queries

EXIT_CONFIG = 2   # a bad setting or flag: one line on stderr
EXIT_FAILURE = 1  # the command ran and failed


def resolve_database(settings: Settings) -> Settings:
    """``settings`` with a database URL: DATABASE_URL's, else the embedded server's in --data-dir."""
    if settings.database_url is not None:
        return settings
    return with_database_url(settings, start_embedded(settings.data_dir, load_queries()))
