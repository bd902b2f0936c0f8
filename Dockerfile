# codex-ingest image. Needs an external PostgreSQL: DATABASE_URL is required
# (the embedded PostgreSQL is for development, not for containers).
#
#   docker build -t codex-ingest .
#   docker run -e DATABASE_URL=postgresql://... -e WEBHOOK_SECRET=... -p 8080:8080 codex-ingest

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY codex_ingest ./codex_ingest
COPY sql ./sql
COPY migrations ./migrations
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
    && /opt/venv/bin/pip install --no-cache-dir .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /app --create-home codex
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8080
USER 10001
WORKDIR /app
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=2)"]
# Refuse to start without DATABASE_URL instead of starting an embedded server.
CMD ["sh", "-c", "if [ -z \"${DATABASE_URL:-}\" ]; then echo 'codex-ingest: DATABASE_URL is required in the container' >&2; exit 2; fi; exec codex-ingest serve"]
