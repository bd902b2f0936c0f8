"""What ships around the package and cannot run here (no Docker engine, no
GitHub Actions runner): the Dockerfile passes hadolint, both workflows and
docker-compose.yml pass their published JSON schemas (check-jsonschema's
vendored copies, no network), and each says what it must."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
PROMETHEUS_MOUNTS = {
    "./deploy/prometheus/prometheus.yml": "/etc/prometheus/prometheus.yml",
    "./deploy/prometheus/rules.yml": "/etc/prometheus/rules.yml",
}
README_TEST_COMMAND = "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest"


def tool(name: str) -> str:
    """A command the test extra installs, from this interpreter's environment first."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert found, f"{name} is not installed: pip install -e '.[test]'"
    return found


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)


def load(path: Path) -> Any:
    # BaseLoader: every scalar a string, so the key `on:` stays "on" (YAML 1.1 reads it as True).
    return yaml.load(path.read_text(), Loader=yaml.BaseLoader)


# -- Dockerfile -------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    result = run(tool("hadolint"), "--no-color", "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


# -- workflows --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ci.yml", "release.yml"])
def test_workflow_passes_the_github_workflow_schema(name: str) -> None:
    result = run(tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(WORKFLOWS / name))
    assert result.returncode == 0, result.stdout + result.stderr


def run_lines(job: dict[str, Any]) -> list[str]:
    return [line.strip() for step in job["steps"] for line in step.get("run", "").splitlines()]


def test_ci_runs_the_readme_test_command_with_the_debian_programs_on_python_3_11() -> None:
    ci = load(WORKFLOWS / "ci.yml")
    assert set(ci["on"]) == {"push", "pull_request"}
    (job,) = ci["jobs"].values()
    assert job["runs-on"] == "ubuntu-latest"
    python = [s for s in job["steps"] if s.get("uses", "").startswith("actions/setup-python@")]
    assert [s["with"]["python-version"] for s in python] == ["3.11"]
    installs = [line for line in run_lines(job) if "apt-get install" in line]
    assert installs and {"prometheus", "nginx", "pgbouncer", "wrk"} <= set(installs[0].split())
    assert README_TEST_COMMAND in (ROOT / "README.md").read_text()  # the command is still the README's
    assert run_lines(job)[-1] == README_TEST_COMMAND
    assert job["steps"][0]["uses"].startswith("actions/checkout@")


def test_release_pushes_the_tagged_image_to_ghcr_with_the_workflow_token() -> None:
    release = load(WORKFLOWS / "release.yml")
    assert release["on"] == {"push": {"tags": ["v*"]}}
    assert release["permissions"] == {"contents": "read", "packages": "write"}
    (job,) = release["jobs"].values()
    steps = {s["uses"].split("@")[0]: s for s in job["steps"] if "uses" in s}
    login = steps["docker/login-action"]["with"]
    assert login == {"registry": "ghcr.io", "username": "${{ github.actor }}", "password": "${{ secrets.GITHUB_TOKEN }}"}
    meta = steps["docker/metadata-action"]["with"]
    assert meta["images"] == "ghcr.io/${{ github.repository }}" and meta["tags"] == "type=ref,event=tag"
    build = steps["docker/build-push-action"]["with"]
    assert build["push"] == "true" and build["context"] == "."
    assert build["tags"] == "${{ steps.meta.outputs.tags }}"
    assert list(steps).index("docker/login-action") < list(steps).index("docker/build-push-action")


# -- docker-compose.yml -----------------------------------------------------------


def test_compose_passes_the_compose_schema() -> None:
    result = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "docker-compose.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_runs_the_service_on_a_healthy_postgres_with_prometheus() -> None:
    services = load(ROOT / "docker-compose.yml")["services"]
    assert set(services) == {"codex-ingest", "postgres", "prometheus"}

    app, db, prom = services["codex-ingest"], services["postgres"], services["prometheus"]
    assert app["build"] == "."
    assert app["environment"]["DATABASE_URL"].startswith("postgresql://")
    assert "@postgres:5432/" in app["environment"]["DATABASE_URL"]
    assert app["environment"]["WEBHOOK_SECRET"].startswith("${WEBHOOK_SECRET")  # from the caller's environment
    assert app["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert "8080:8080" in app["ports"]

    assert db["image"].startswith("postgres:")
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in db["volumes"])
    assert db["volumes"][0].split(":")[0] in load(ROOT / "docker-compose.yml")["volumes"]

    assert prom["image"].startswith("prom/prometheus:")
    mounts = {v.split(":")[0]: v.split(":")[1] for v in prom["volumes"] if v.startswith("./")}
    assert mounts == PROMETHEUS_MOUNTS


def test_compose_prometheus_mounts_exist_and_scrape_the_service_by_its_compose_name() -> None:
    # A bind mount of a missing file gives Prometheus a directory instead; and
    # inside the compose network the service is codex-ingest:8080, not localhost.
    for source in PROMETHEUS_MOUNTS:
        assert (ROOT / source).is_file(), f"{source} is mounted by docker-compose.yml but missing"
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]}
    assert "codex-ingest:8080" in targets, targets
    assert "rules.yml" in {Path(f).name for f in config.get("rule_files", [])}


def test_compose_gives_the_service_and_prometheus_one_metrics_token_never_in_a_url() -> None:
    compose = load(ROOT / "docker-compose.yml")
    app, prom = compose["services"]["codex-ingest"], compose["services"]["prometheus"]
    # Required, from the caller's environment, like WEBHOOK_SECRET: /metrics is never left open.
    assert app["environment"]["METRICS_TOKEN"].startswith("${METRICS_TOKEN:?")
    # Prometheus gets the same value as a file (a secret), where prometheus.yml's credentials_file points
    # (relative to the configuration, mounted at /etc/prometheus/prometheus.yml).
    assert compose["secrets"] == {"metrics_token": {"environment": "METRICS_TOKEN"}}
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "codex-ingest"]
    assert job["authorization"]["type"] == "Bearer" and "credentials" not in job["authorization"]
    token_file = PurePosixPath(PROMETHEUS_MOUNTS["./deploy/prometheus/prometheus.yml"]).parent / job["authorization"]["credentials_file"]
    assert prom["secrets"] == [{"source": "metrics_token", "target": str(token_file)}]
    # Never in a URL: no query parameters, no token-looking path.
    assert "params" not in job and "?" not in job["metrics_path"] and "bearer_token" not in job
