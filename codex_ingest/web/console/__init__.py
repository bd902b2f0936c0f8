"""The console: an operator's pages, server-rendered by the service under
/console/ (docs/console.md). On only when CODEX_API_TOKENS names a
token, like the read API: sign in with a read token, browse and search
events of the tenants it may read, open one, see its deliveries.

``sessions.py`` keeps sign-ins in PostgreSQL (digests only); ``guard.py``
puts the security headers on every answer and refuses a cross-site POST;
``pages.py`` renders the templates in ``templates/`` (Jinja2, autoescape on:
stored payloads are hostile text)."""
