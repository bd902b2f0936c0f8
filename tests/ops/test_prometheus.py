"""deploy/prometheus and deploy/grafana, checked for real: promtool on the
rules, their unit tests and the configuration; then a real Prometheus
scraping a real 2-worker ``codex-ingest serve`` every second, which must
count the requests the test sends, and evaluate every alert expression and
every dashboard panel without error, naming only series the service
really exports.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from codex_ingest.telemetry.metrics import OUTCOMES
from tests.helpers import READ_TOKEN, SECRET, sign
from tests.markdown import anchors
from tests.ops import promql
from tests.ops.stack import (
    CONFIG,
    DASHBOARD,
    JOB,
    METRICS_TOKEN,
    PROMETHEUS_DIR,
    ROOT,
    RULES,
    RULES_TEST,
    Prometheus,
    PrometheusError,
    Service,
    binaries,
    credentials_file,
    eventually,
    prometheus_config,
    run_prometheus,
    serve_workers,
    write_token,
)

BINARIES = binaries()
pytestmark = pytest.mark.needs_program("prometheus", "promtool")

RUNBOOK = "docs/operations.md#"
SEVERITIES = {"critical", "warning"}
WORKERS = 2
COUNTED_SOURCE = f"ops-{uuid.uuid4().hex[:10]}"


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    assert BINARIES is not None
    return subprocess.run([BINARIES[1], *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def load_rules(path: Path = RULES) -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in load_rules() if "alert" in rule}


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # a collapsed row keeps its panels inside it
    return out


def panel_exprs(dashboard: dict[str, Any]) -> dict[str, str]:
    """Every panel target's expression, keyed by panel title and refId."""
    return {
        f"panel {panel['title']!r} target {t['refId']}": t["expr"]
        for panel in panels(dashboard)
        for t in panel.get("targets", [])
    }


def dashboard_values(dashboard: dict[str, Any]) -> dict[str, str]:
    """Values for the dashboard's own variables, as Grafana would send them here."""
    values = {}
    for variable in dashboard["templating"]["list"]:
        name = variable["name"]
        if variable["type"] == "datasource":
            values[name] = "prometheus"
        elif name == "job":
            values[name] = JOB
        elif variable.get("includeAll"):
            values[name] = variable.get("allValue") or ".*"
        else:
            raise AssertionError(f"no test value for dashboard variable {name!r}")
    return values


def expressions() -> dict[str, str]:
    """Every PromQL expression shipped: rule expressions and dashboard targets
    (Grafana's variables filled in), keyed by where each comes from."""
    exprs = {f"rule {rule.get('alert') or rule.get('record')}": rule["expr"] for rule in load_rules()}
    dashboard = load_dashboard()
    values = dashboard_values(dashboard)
    for where, expr in panel_exprs(dashboard).items():
        exprs[where] = promql.fill_variables(expr, values)
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        text = query.get("query") if isinstance(query, dict) else None
        if variable["type"] == "query" and text and text.startswith("label_values("):
            # label_values(selector, label) is Grafana's; its selector is PromQL.
            selector = text[len("label_values("):].rsplit(",", 1)[0]
            exprs[f"variable {variable['name']}"] = promql.fill_variables(selector, values)
    return exprs


def name_problems(exprs: dict[str, str], exported: set[str]) -> list[str]:
    """Each expression that names a series the service does not export."""
    problems = []
    for where, expr in exprs.items():
        unknown = promql.unknown_names(expr, exported)
        if unknown:
            problems.append(f"{where} names {sorted(unknown)}, not exported: {expr.strip()}")
    return problems


def exported_names(metrics_text: str) -> set[str]:
    """The series names in a /metrics answer, with their suffixes (_total,
    _bucket, _sum, _count), plus Prometheus's own ``up``."""
    names = {sample.name for family in text_string_to_metric_families(metrics_text) for sample in family.samples}
    return names | {"up"}


# --- promtool ----------------------------------------------------------------


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(load_rules())} rules found" in result.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    result = promtool("test", "rules", RULES_TEST.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_check_config(tmp_path: Path) -> None:
    # As shipped, in a copy of its directory (rules.yml and the token file are resolved next to it) ...
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    for name in (CONFIG.name, RULES.name):
        (shipped / name).write_bytes((PROMETHEUS_DIR / name).read_bytes())
    write_token(yaml.safe_load(CONFIG.read_text()), shipped)
    result = promtool("check", "config", CONFIG.name, cwd=shipped)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout
    # ... and the tests' copy (1 s scrapes, a 127.0.0.1 target, the rules by absolute path).
    config = prometheus_config("127.0.0.1:8080", RULES)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    write_token(config, tmp_path)
    result = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_scrape_sends_metrics_token_from_a_file_never_from_the_config_or_a_url(tmp_path: Path) -> None:
    config = yaml.safe_load(CONFIG.read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == JOB]
    assert job["authorization"] == {"type": "Bearer", "credentials_file": "metrics_token"}
    assert "credentials" not in job["authorization"] and "bearer_token" not in job and "params" not in job
    assert "?" not in job["metrics_path"] and "basic_auth" not in job
    # promtool checks that the file exists: the shipped configuration does name it.
    (tmp_path / CONFIG.name).write_bytes(CONFIG.read_bytes())
    (tmp_path / RULES.name).write_bytes(RULES.read_bytes())
    result = promtool("check", "config", CONFIG.name, cwd=tmp_path)
    assert result.returncode != 0 and credentials_file(config) in result.stdout + result.stderr


def test_every_alert_has_severity_for_annotations_and_a_runbook_anchor() -> None:
    rules = load_rules()
    assert rules and all("alert" in rule for rule in rules), "rules.yml holds alerts only"
    for name, rule in alerts().items():
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert rule.get("for"), f"{name} has no for: duration"
        annotations = rule["annotations"]
        assert annotations["summary"].strip() and annotations["description"].strip(), name
        # docs/operations.md has a heading per alert named as the alert; GitHub's anchor is it in lower case.
        assert annotations["runbook_url"] == RUNBOOK + name.lower(), name
        assert name.lower() in anchors(ROOT / "docs" / "operations.md"), f"docs/operations.md has no heading {name}"
    assert set(alerts()) == {
        "CodexIngestDatabaseUnavailable", "CodexIngestServerErrors", "CodexIngestIngestLatencyHigh",
        "CodexIngestSignatureRejectionsSpike", "CodexIngestDown", "CodexIngestAbsent",
        "CodexIngestReadHorizonLag", "CodexIngestPurgeNotRunning",
        "CodexIngestDestinationFailing", "CodexIngestDestinationDisabled", "CodexIngestDeliveryParkedGrowing",
        "CodexIngestDeliveryLagNearRetention",
    }


def test_every_alert_both_fires_and_stays_silent_in_the_unit_tests() -> None:
    fires: set[str] = set()
    silent: set[str] = set()
    for test in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for check in test.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    assert fires == set(alerts()), f"alerts never expected to fire: {set(alerts()) - fires}"
    assert silent == set(alerts()), f"alerts never expected to stay silent: {set(alerts()) - silent}"


# Per alert, a change to its expression that the unit tests must catch: the
# threshold (or the selector that stands for it) gone.
BROKEN_EXPRESSIONS = {
    "CodexIngestDatabaseUnavailable": ("> 0.05", "> 0"),
    "CodexIngestServerErrors": (', status_code!="503"', ""),
    "CodexIngestIngestLatencyHigh": ('{outcome=~"accepted|duplicate|conflict"}', ""),
    "CodexIngestSignatureRejectionsSpike": ("> 0.1", "> 0"),
    "CodexIngestDown": ('up{job="codex-ingest"}', "up"),
    "CodexIngestAbsent": ('job="codex-ingest"', 'job="codex-ingest-renamed"'),
    "CodexIngestReadHorizonLag": ("> 300", "> 200"),
    "CodexIngestPurgeNotRunning": ("7 * 86400 + 3600", "7 * 86400"),
    "CodexIngestDestinationFailing": ("> 0.5", "> 0.9"),
    "CodexIngestDestinationDisabled": ("== 1", "== 2"),
    "CodexIngestDeliveryParkedGrowing": ("> 0", "> 100"),
    "CodexIngestDeliveryLagNearRetention": ("0.8 * 7 * 86400", "7 * 86400"),
}


def _mutated(tmp_path: Path, name: str, change: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    doc = yaml.safe_load(RULES.read_text())
    (rule,) = [r for g in doc["groups"] for r in g["rules"] if r.get("alert") == name]
    rule.update(change)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    # Only the unit tests of that alert: the others cannot catch it, and cost time.
    tests = yaml.safe_load(RULES_TEST.read_text())
    tests["tests"] = [t for t in tests["tests"] if any(c["alertname"] == name for c in t["alert_rule_test"])]
    (tmp_path / "rules_test.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    return promtool("test", "rules", "rules_test.yml", cwd=tmp_path)


@pytest.mark.parametrize("name", sorted(BROKEN_EXPRESSIONS))
def test_the_unit_tests_catch_a_broken_threshold_or_duration(tmp_path: Path, name: str) -> None:
    rule = alerts()[name]
    old, new = BROKEN_EXPRESSIONS[name]
    assert old in rule["expr"], f"update BROKEN_EXPRESSIONS[{name!r}] to match rules.yml"
    result = _mutated(tmp_path, name, {"expr": rule["expr"].replace(old, new)})
    assert result.returncode != 0, f"{name} with {old!r} -> {new!r} still passes rules_test.yml"
    assert name in result.stdout + result.stderr
    result = _mutated(tmp_path, name, {"for": "0s"})
    assert result.returncode != 0, f"{name} without its for: duration still passes rules_test.yml"
    assert name in result.stdout + result.stderr


def test_every_alert_has_a_broken_expression_above() -> None:
    assert set(BROKEN_EXPRESSIONS) == set(alerts())


# --- the dashboard -------------------------------------------------------------


def test_the_dashboard_is_a_grafana_dashboard_on_a_prometheus_datasource_variable() -> None:
    dashboard = load_dashboard()
    assert 36 <= dashboard["schemaVersion"] <= 39
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    source = {"type": "prometheus", "uid": "${datasource}"}
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == source, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == source, panel["title"]
            # Every variable a query uses is defined, by the dashboard or by Grafana.
            assert promql.grafana_variables(target["expr"]) <= set(variables) | set(promql.GRAFANA_BUILTINS)
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == source, variable["name"]


def test_the_dashboard_has_the_panels_asked_for() -> None:
    dashboard = load_dashboard()
    by_panel = {p["title"]: " ".join(t["expr"] for t in p.get("targets", [])) for p in panels(dashboard)}

    def panel_with(*needles: str) -> str:
        found = [title for title, exprs in by_panel.items() if all(n in exprs for n in needles)]
        assert found, f"no panel queries all of {needles}"
        return found[0]

    panel_with("sum by (outcome)", "codex_ingest_events_total")
    panel_with(*(f"histogram_quantile({q}, " for q in ("0.5", "0.9", "0.99")), "codex_ingest_ingest_duration_seconds_bucket")
    panel_with("codex_ingest_db_pool_size", "codex_ingest_db_pool_in_use")
    panel_with("sum by (class)", "codex_ingest_db_errors_total")
    panel_with("codex_ingest_readers_waiting")
    panel_with("codex_ingest_read_horizon_lag_seconds")
    panel_with("codex_ingest_oldest_event_age_seconds")
    panel_with("rate(codex_ingest_events_served_total", "rate(codex_ingest_events_purged_total")


# --- the name check itself -----------------------------------------------------


def test_the_name_check_flags_series_that_do_not_exist() -> None:
    exported = {
        "codex_ingest_events_total", "codex_ingest_ingest_duration_seconds_bucket",
        "codex_ingest_db_pool_size", "codex_ingest_db_pool_in_use", "up",
    }
    fine = {
        "labels and functions": 'sum by (outcome, le) (rate(codex_ingest_events_total{outcome="accepted", source=~"a|b"}[5m] offset 1h))',
        "a histogram": "histogram_quantile(0.99, sum(rate(codex_ingest_ingest_duration_seconds_bucket[5m])) by (le))",
        "a join": "codex_ingest_db_pool_in_use / on(instance) group_left(version) codex_ingest_db_pool_size > bool 1e3",
        "a subquery": 'max_over_time(absent(up{job="x"})[1h:5m]) and time() > 0',
    }
    assert name_problems(fine, exported) == []
    wrong = {
        "a typo": "rate(codex_ingest_event_total[5m])",
        "a histogram without _bucket": "histogram_quantile(0.99, rate(codex_ingest_ingest_duration_seconds[5m]))",
        "a counter without _total": "rate(codex_ingest_events[5m])",
        "the right side of a join": "codex_ingest_db_pool_in_use / on(instance) codex_ingest_db_pool_sise",
        "a __name__ matcher": '{__name__="codex_ingest_nope", job="x"}',
        "an exporter's name the service does not use": "aiohttp_request_duration_seconds_bucket",
    }
    problems = name_problems(wrong, exported)
    assert len(problems) == len(wrong), problems
    # And on the shipped files: a rule renamed to a series that does not exist is caught.
    exprs = expressions()
    exprs["rule CodexIngestDatabaseUnavailable"] = exprs["rule CodexIngestDatabaseUnavailable"].replace(
        "codex_ingest_events_total", "codex_ingest_event_total"
    )
    problems = name_problems(exprs, {n for e in expressions().values() for n in promql.metric_names(e)})
    assert problems == [f"rule CodexIngestDatabaseUnavailable names ['codex_ingest_event_total'], not exported: "
                        f"{exprs['rule CodexIngestDatabaseUnavailable'].strip()}"]


# --- a real Prometheus on a real service ---------------------------------------------


@dataclass(frozen=True)
class Stack:
    service: Service
    prometheus: Prometheus
    exported: set[str]


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 10) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def ingest(service: Service, source: str, body: bytes, signature: str | None = None) -> int:
    headers = {"Content-Type": "application/json", "X-Tenant-Id": "ops-prometheus",
               "X-Signature": signature or sign(body)}
    return http("POST", f"{service.url}/pos/{source}/ingest", body, headers)[0]


def provoke_a_database_timeout(service: Service, database_url: str) -> None:
    """One ingest whose key another transaction holds uncommitted: its INSERT
    waits on the lock past DB_COMMAND_TIMEOUT, and it is answered 503, so the
    error series (codex_ingest_db_errors_total{class="timeout"}, outcome
    unavailable, a 503 response) exist. (A request cut off by DB_WRITE_TIMEOUT
    instead is answered 503 but not counted as a database error.)"""
    source = f"ops-lock-{uuid.uuid4().hex[:8]}"
    body = b'{"type":"lock.held"}'
    key = hashlib.sha256(body).hexdigest()  # no Idempotency-Key: the body's digest is the key
    with psycopg.connect(database_url) as conn:
        try:
            conn.execute(
                "INSERT INTO events (tenant_id, source, idempotency_key, body_sha256, body, content_type)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                ("ops-prometheus", source, key, hashlib.sha256(body).digest(), body, "application/json"),
            )
            status = ingest(service, source, body)
        finally:
            conn.rollback()
    assert status == 503, f"the held key was answered {status}, not 503"

    def counted() -> bool:  # /metrics is rendered at most once a second (METRICS_CACHE_SECONDS)
        timeouts = [s.value for f in text_string_to_metric_families(scrape(service)) for s in f.samples
                    if s.name == "codex_ingest_db_errors_total" and s.labels == {"class": "timeout"}]
        assert timeouts and timeouts[0] >= 1, service.log()
        return True

    eventually(counted, timeout=20)


def scrape(service: Service) -> str:
    status, body = http("GET", f"{service.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert status == 200, body
    return body.decode()


@pytest.fixture(scope="module")
def stack(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    assert BINARIES is not None
    directory = tmp_path_factory.mktemp("prometheus")
    sources_file = directory / "sources.toml"
    # A destination too, so that push delivery's series exist (its receiver need not: nothing listens there).
    sources_file.write_text(f'[sources.{COUNTED_SOURCE}]\nscheme = "hmac-sha256-body"\nsecrets = ["{SECRET}"]\n'
                            '[destinations.ops-backend]\nurl = "http://127.0.0.1:9/hook"\n'
                            'secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]\nallow_private_network = true\n')
    with serve_workers(
        database_url, directory, WORKERS,
        CODEX_API_TOKENS=f"{READ_TOKEN}=*",  # the read side's gauges
        RETENTION="3650d",                   # retention's gauge and counter; deletes nothing of the session's
        CODEX_SOURCES=str(sources_file),
        METRICS_TOKEN=METRICS_TOKEN,         # Prometheus must send it, from its credentials file
        DB_COMMAND_TIMEOUT="2", DB_WRITE_TIMEOUT="6", SHUTDOWN_GRACE_SECONDS="2", LOG_LEVEL="WARNING",
    ) as service:
        provoke_a_database_timeout(service, database_url)
        # Connections are spread over the workers by the kernel (SO_REUSEPORT);
        # 40 of them reach both with near certainty (all on one: 2**-39).
        for _ in range(40):
            assert http("GET", f"{service.url}/healthz")[0] == 200
        status, body = http("GET", f"{service.url}/events?tenant=ops-prometheus&limit=1",
                            headers={"Authorization": f"Bearer {READ_TOKEN}"})
        assert status == 200, body
        # The read-side gauges are refreshed every 5 s (web/background.py).
        def scraped() -> set[str]:
            names = exported_names(scrape(service))
            assert "codex_ingest_read_horizon_lag_seconds" in names, sorted(names)
            return names

        exported: set[str] = eventually(scraped, timeout=20)
        config = prometheus_config(f"127.0.0.1:{service.port}", RULES)
        with run_prometheus(BINARIES[0], config, directory / "server") as prometheus:
            eventually(lambda: [s for s in prometheus.query(f'up{{job="{JOB}"}} == 1')], timeout=30)
            yield Stack(service, prometheus, exported)


def test_prometheus_scrapes_every_worker_as_one_target(stack: Stack) -> None:
    (target,) = [t for t in stack.prometheus.api("targets")["activeTargets"] if t["labels"]["job"] == JOB]
    assert target["health"] == "up", target
    assert target["labels"]["instance"] == f"127.0.0.1:{stack.service.port}"
    # aiohttp_requests_in_progress keeps one series per worker pid: both workers' values are in the one scrape.
    pids = eventually(lambda: stack.prometheus.query(
        f'count(count by (pid) (aiohttp_requests_in_progress{{job="{JOB}"}})) == {WORKERS}'))
    assert pids[0]["value"][1] == str(WORKERS)
    # Counters are summed across the workers: one series per label set, no pid label.
    assert all("pid" not in s["metric"] for s in stack.prometheus.query(f'codex_ingest_events_total{{job="{JOB}"}}'))


def test_prometheus_scrapes_with_the_token_and_metrics_is_closed_without_it(stack: Stack) -> None:
    (target,) = [t for t in stack.prometheus.api("targets")["activeTargets"] if t["labels"]["job"] == JOB]
    assert target["health"] == "up" and target["lastError"] == "", target
    assert METRICS_TOKEN not in target["scrapeUrl"]
    assert METRICS_TOKEN not in stack.prometheus.api("status/config")["yaml"]
    status, body = http("GET", f"{stack.service.url}/metrics")
    assert status == 401 and json.loads(body)["error"] == "unauthorized"
    status, _ = http("GET", f"{stack.service.url}/metrics", headers={"Authorization": "Bearer not-the-metrics-token"})
    assert status == 401


def test_prometheus_counts_exactly_the_ingests_sent(stack: Stack) -> None:
    # A declared source: every worker labels it from start-up. An undeclared one takes a label in a
    # worker only once that worker has verified a request for it (telemetry/metrics.py), so a forged
    # request the kernel hands to the other worker is rightly counted as "_other".
    source = COUNTED_SOURCE
    bodies = [json.dumps({"type": "order.paid", "id": f"evt_{n}"}).encode() for n in range(3)]
    sent = [ingest(stack.service, source, body) for body in bodies]
    sent.append(ingest(stack.service, source, bodies[0]))
    sent += [ingest(stack.service, source, b'{"type":"forged","id":%d}' % n, signature="sha256=" + "0" * 64)
             for n in range(2)]
    assert sent == [201, 201, 201, 200, 401, 401]
    # A source's every outcome is exported from its first request on: the ones not sent, at 0.
    expected = {**dict.fromkeys(OUTCOMES, "0"), "accepted": "3", "duplicate": "1", "rejected_signature": "2"}

    def counted() -> bool:
        series = stack.prometheus.query(f'codex_ingest_events_total{{job="{JOB}", source="{source}"}}')
        got = {s["metric"]["outcome"]: s["value"][1] for s in series}
        assert got == expected, f"Prometheus has {got}"
        assert len(series) == len(expected)
        return True

    eventually(counted, timeout=30)


def test_every_rule_and_panel_evaluates_and_names_only_exported_series(stack: Stack) -> None:
    exprs = expressions()
    assert len(exprs) >= len(alerts()) + 10
    errors = {}
    for where, expr in exprs.items():
        try:
            stack.prometheus.query(expr)
        except PrometheusError as exc:
            errors[where] = f"{exc}: {expr}"
    assert errors == {}
    assert name_problems(exprs, stack.exported) == []
    # Every name they use has series in Prometheus itself, not only in one /metrics answer.
    used = {name for expr in exprs.values() for name in promql.metric_names(expr)}
    missing = [name for name in sorted(used) if not stack.prometheus.query(f'count({{__name__="{name}", job="{JOB}"}})')]
    assert missing == []


def test_prometheus_loads_and_evaluates_every_rule(stack: Stack) -> None:
    def evaluated() -> dict[str, dict[str, Any]]:
        groups = stack.prometheus.api("rules")["groups"]
        rules = {r["name"]: r for g in groups for r in g["rules"]}
        assert all(not r["lastEvaluation"].startswith("0001-") for r in rules.values()), "not evaluated yet"
        return rules

    rules = eventually(evaluated, timeout=30)
    assert set(rules) == set(alerts())
    assert {name: (r["health"], r.get("lastError", "")) for name, r in rules.items()} == {
        name: ("ok", "") for name in alerts()
    }


def test_the_live_checks_catch_a_bad_expression(stack: Stack) -> None:
    # Prometheus answers a misspelled series with an empty result, not an error: hence the name check.
    assert stack.prometheus.query("rate(codex_ingest_event_total[1m])") == []
    assert name_problems({"typo": "rate(codex_ingest_event_total[1m])"}, stack.exported)
    # An expression Prometheus cannot parse is an error.
    with pytest.raises(PrometheusError, match="bad_data"):
        stack.prometheus.query("sum by (outcome (rate(codex_ingest_events_total[1m]))")
