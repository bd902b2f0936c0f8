"""Push delivery's configuration: the [destinations.NAME] tables of the
sources file (every key's default, every way each can be wrong, in one line
naming the file, the destination and the key, never a secret's value), which
events a destination takes, and ``serve --check-config``."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from codex_ingest.cli.smoke import signer_for
from codex_ingest.delivery.config import DEFAULT_RETRY_SCHEDULE, KEYS, DestinationSpec, parse_destinations
from codex_ingest.intake.sources import SourcesConfig, SourcesError, parse_sources
from codex_ingest.settings import SERVE_OPTIONS, load_settings
from tests.cli import run_cli

# Standard Webhooks secrets (whsec_<base64>): the values no output may show.
SECRET = "whsec_ZGVzdGluYXRpb24tc2VjcmV0LWtleS0wMQ=="  # "destination-secret-key-01"
OTHER = "whsec_c2Vjb25kLWRlc3RpbmF0aW9uLWtleQ=="  # "second-destination-key"
# A value that is not a Standard Webhooks secret, put where one is expected.
NOT_WHSEC = "hunter2-not-a-whsec-secret"
ORIGIN = "sources.toml"
BASE = f'url = "https://hooks.example.com/codex"\nsecrets = ["{SECRET}"]\n'


def parse(text: str, environ: dict[str, str] | None = None, origin: str = ORIGIN) -> SourcesConfig:
    """A sources file as serve reads it: settings.load_settings hands its destinations to delivery's parser."""
    return parse_sources(text, environ or {}, origin=origin, destinations=parse_destinations)


def destination(body: str = "", environ: dict[str, str] | None = None, name: str = "warehouse") -> DestinationSpec:
    """The one destination of a sources file holding ``[destinations.NAME]`` with ``body``."""
    config = parse(f"[destinations.{name}]\n{body}", environ)
    return config.destinations[name]


def error(text: str, environ: dict[str, str] | None = None) -> str:
    """The SourcesError a whole sources file ``text`` gives, checked to be one line naming the file."""
    with pytest.raises(SourcesError) as caught:
        parse(text, environ)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{ORIGIN}: "), message
    return message


# -- defaults, and what a whole table gives ----------------------------------------

def test_a_table_with_url_and_secrets_alone_has_every_default() -> None:
    spec = destination(BASE)
    assert spec.name == "warehouse"
    assert spec.url == "https://hooks.example.com/codex"
    assert spec.secrets == (SECRET,)
    assert spec.sources == ("*",)
    assert spec.tenants == ("*",)
    assert spec.ordered is False
    assert spec.max_in_flight == 16
    assert spec.max_per_second is None
    assert spec.timeout_seconds == 10
    assert spec.retry_schedule == (5, 300, 1800, 7200, 18000, 36000, 36000) == DEFAULT_RETRY_SCHEDULE
    assert spec.allow_private_network is False


def test_every_key_set_is_read_as_given() -> None:
    spec = destination(
        'url = "http://10.0.0.5:8080/in?x=1"\n'
        f'secrets = ["env:WH_NEW", "{OTHER}"]\n'
        'sources = ["square", "orders"]\n'
        'tenants = ["shop-1", "Shop.2:eu"]\n'
        "ordered = true\n"
        "max_in_flight = 1000\n"
        "max_per_second = 2.5\n"
        "timeout_seconds = 300\n"
        "retry_schedule = [0.5, 60]\n"
        "allow_private_network = true\n",
        {"WH_NEW": SECRET},
    )
    assert spec.url == "http://10.0.0.5:8080/in?x=1"
    assert spec.secrets == (SECRET, OTHER)
    assert spec.keys == (b"destination-secret-key-01", b"second-destination-key")
    assert spec.sources == ("square", "orders") and spec.tenants == ("shop-1", "Shop.2:eu")
    assert (spec.ordered, spec.max_in_flight, spec.max_per_second) == (True, 1000, 2.5)
    assert (spec.timeout_seconds, spec.retry_schedule, spec.allow_private_network) == (300, (0.5, 60), True)
    assert spec.url_origin == "http://10.0.0.5:8080"


def test_the_smallest_values_are_accepted() -> None:
    spec = destination(BASE + "max_in_flight = 1\nmax_per_second = 0.1\ntimeout_seconds = 0.5\nretry_schedule = [1]\n")
    assert (spec.max_in_flight, spec.max_per_second, spec.timeout_seconds, spec.retry_schedule) == (1, 0.1, 0.5, (1,))


def test_destinations_sit_beside_sources_and_are_empty_without_any() -> None:
    text = f'strict_sources = true\n[sources.orders]\nsecrets = ["s"]\n[destinations.a]\n{BASE}[destinations.b-2]\n{BASE}'
    config = parse(text)
    assert list(config.destinations) == ["a", "b-2"]
    assert config.sources["orders"].secrets == ("s",) and config.strict
    assert parse('[sources.orders]\nsecrets = ["s"]\n').destinations == {}
    assert parse("").destinations == {}


def test_the_spec_pickles_and_never_shows_its_secrets() -> None:
    config = parse(f"[destinations.a]\n{BASE}")
    spec: DestinationSpec = config.destinations["a"]
    assert pickle.loads(pickle.dumps(config)) == config
    assert SECRET not in repr(spec) and SECRET not in repr(config)
    with pytest.raises(AttributeError):
        spec.url = "https://elsewhere.example"  # type: ignore[misc]


def test_url_origin_is_scheme_and_host_without_path_query_or_default_port() -> None:
    assert destination(BASE).url_origin == "https://hooks.example.com"
    assert destination('url = "HTTPS://Hooks.Example.COM:8443/p?token=t"\n' f'secrets = ["{SECRET}"]\n').url_origin \
        == "https://hooks.example.com:8443"
    assert destination(f'url = "http://[::1]:9000/"\nsecrets = ["{SECRET}"]\n').url_origin == "http://[::1]:9000"


# -- secrets: literal or env:NAME, whsec_<base64> ----------------------------------

def test_env_secrets_resolve_like_sources_secrets() -> None:
    spec = destination('url = "https://h.example"\nsecrets = ["env:WH_NEW", "env:WH_OLD"]\n',
                       {"WH_NEW": SECRET, "WH_OLD": OTHER})
    assert spec.secrets == (SECRET, OTHER)
    message = error(f'[destinations.a]\nurl = "https://h.example"\nsecrets = ["{SECRET}", "env:WH_UNSET"]\n')
    assert "[destinations.a]: secrets[1] names the environment variable WH_UNSET, which is unset or empty" in message
    message = error('[destinations.a]\nurl = "https://h.example"\nsecrets = ["env:WH_EMPTY"]\n', {"WH_EMPTY": ""})
    assert "secrets[0] names the environment variable WH_EMPTY, which is unset or empty" in message


def test_a_secret_from_the_environment_must_be_whsec_too_and_is_never_shown() -> None:
    message = error('[destinations.a]\nurl = "https://h.example"\nsecrets = ["env:WH"]\n', {"WH": NOT_WHSEC})
    assert "[destinations.a]: secrets[0] must start with whsec_" in message
    assert NOT_WHSEC not in message


# -- every key's bad values: one line naming the file, the destination, the key ----

BAD = [
    # the table and its name
    ("destinations = 3", "destinations must be tables, [destinations.NAME]", "destinations"),
    ('destinations = "x"', "destinations must be tables", "destinations"),
    (f"[destinations.Bad_Name]\n{BASE}", "[destinations.Bad_Name]: the destination name must match", "name"),
    (f'[destinations."a b"]\n{BASE}', "[destinations.a b]: the destination name must match", "name"),
    (f'[destinations."a\\nb"]\n{BASE}', "[destinations.'a\\nb']: the destination name must match", "name"),
    (f"[destinations.{'x' * 65}]\n{BASE}", "the destination name must match", "name"),
    ("[destinations]\na = 3", "[destinations.a] must be a table", "table"),
    # unknown keys
    (f"[destinations.a]\n{BASE}secret = 'y'", "[destinations.a]: secret not allowed (allowed: " + ", ".join(sorted(KEYS)) + ")", "unknown"),
    (f"[destinations.a]\n{BASE}scheme = 'stripe'\nheaders = []", "[destinations.a]: headers, scheme not allowed", "unknown"),
    # url
    (f'[destinations.a]\nsecrets = ["{SECRET}"]', "[destinations.a]: url is required", "url"),
    (f'[destinations.a]\nurl = 3\nsecrets = ["{SECRET}"]', "[destinations.a]: url must be a string", "url"),
    (f'[destinations.a]\nurl = ""\nsecrets = ["{SECRET}"]', "[destinations.a]: url must start with http:// or https://", "url"),
    (f'[destinations.a]\nurl = "ftp://h.example/x"\nsecrets = ["{SECRET}"]', "[destinations.a]: url must start with http:// or https://", "url"),
    (f'[destinations.a]\nurl = "hooks.example.com/x"\nsecrets = ["{SECRET}"]', "url must start with http:// or https://", "url"),
    (f'[destinations.a]\nurl = "https:/h.example"\nsecrets = ["{SECRET}"]', "url must start with http:// or https://", "url"),
    (f'[destinations.a]\nurl = "https:///path"\nsecrets = ["{SECRET}"]', "[destinations.a]: url must name a host", "url"),
    (f'[destinations.a]\nurl = "https://:443/"\nsecrets = ["{SECRET}"]', "url must name a host", "url"),
    (f'[destinations.a]\nurl = "https://user:pw@h.example/"\nsecrets = ["{SECRET}"]', "[destinations.a]: url must not carry a user name or password", "url"),
    (f'[destinations.a]\nurl = "https://token@h.example/"\nsecrets = ["{SECRET}"]', "url must not carry a user name or password", "url"),
    (f'[destinations.a]\nurl = "https://h.example/x#part"\nsecrets = ["{SECRET}"]', "[destinations.a]: url must not have a #fragment", "url"),
    (f'[destinations.a]\nurl = "https://h.example/#"\nsecrets = ["{SECRET}"]', "url must not have a #fragment", "url"),
    (f'[destinations.a]\nurl = "https://h.example/a b"\nsecrets = ["{SECRET}"]', "[destinations.a]: url must be printable ASCII without spaces", "url"),
    (f'[destinations.a]\nurl = "https://h.exam\\nple/"\nsecrets = ["{SECRET}"]', "url must be printable ASCII without spaces", "url"),
    (f'[destinations.a]\nurl = "https://bücher.example/"\nsecrets = ["{SECRET}"]', "url must be printable ASCII", "url"),
    (f'[destinations.a]\nurl = "https://h.example:99999/"\nsecrets = ["{SECRET}"]', "[destinations.a]: url is not a valid URL", "url"),
    (f'[destinations.a]\nurl = "https://h.example:x/"\nsecrets = ["{SECRET}"]', "url is not a valid URL", "url"),
    (f'[destinations.a]\nurl = "https://[::1/"\nsecrets = ["{SECRET}"]', "url is not a valid URL", "url"),
    (f'[destinations.a]\nurl = "https://h.example:0/"\nsecrets = ["{SECRET}"]', "[destinations.a]: url's port must be between 1 and 65535", "url"),
    (f'[destinations.a]\nurl = "https://h!.example/"\nsecrets = ["{SECRET}"]', "[destinations.a]: url's host must be a host name or an IP address", "url"),
    (f'[destinations.a]\nurl = "https://999.1.1.1/"\nsecrets = ["{SECRET}"]', "url's host must be a host name or an IP address", "url"),
    # secrets
    ('[destinations.a]\nurl = "https://h.example"', "[destinations.a]: secrets must be a non-empty list of strings", "secrets"),
    ('[destinations.a]\nurl = "https://h.example"\nsecrets = []', "[destinations.a]: secrets must be a non-empty list", "secrets"),
    (f'[destinations.a]\nurl = "https://h.example"\nsecrets = "{SECRET}"', "[destinations.a]: secrets must be a non-empty list", "secrets"),
    ('[destinations.a]\nurl = "https://h.example"\nsecrets = [""]', "[destinations.a]: secrets[0] must be a non-empty string", "secrets"),
    ('[destinations.a]\nurl = "https://h.example"\nsecrets = [3]', "[destinations.a]: secrets[0] must be a non-empty string", "secrets"),
    (f'[destinations.a]\nurl = "https://h.example"\nsecrets = ["{SECRET}", "{NOT_WHSEC}"]', "[destinations.a]: secrets[1] must start with whsec_", "secrets"),
    ('[destinations.a]\nurl = "https://h.example"\nsecrets = ["whsec_%%%"]', "[destinations.a]: secrets[0] must be whsec_ followed by base64", "secrets"),
    ('[destinations.a]\nurl = "https://h.example"\nsecrets = ["whsec_"]', "[destinations.a]: secrets[0] must not be empty after whsec_", "secrets"),
    # sources, tenants
    (f"[destinations.a]\n{BASE}sources = []", '[destinations.a]: sources must be a non-empty list of source names, or ["*"]', "sources"),
    (f"[destinations.a]\n{BASE}sources = '*'", "[destinations.a]: sources must be a non-empty list", "sources"),
    (f"[destinations.a]\n{BASE}sources = ['*', 'square']", '[destinations.a]: sources: "*" means every source, and must be the only entry', "sources"),
    (f"[destinations.a]\n{BASE}sources = ['square', 'Square']", "[destinations.a]: sources[1] 'Square' is not a source name (^[a-z0-9]", "sources"),
    (f"[destinations.a]\n{BASE}sources = [3]", "[destinations.a]: sources[0] is not a source name", "sources"),
    (f"[destinations.a]\n{BASE}sources = ['square', 'square']", "[destinations.a]: sources lists a source twice", "sources"),
    (f"[destinations.a]\n{BASE}tenants = []", '[destinations.a]: tenants must be a non-empty list of tenant names, or ["*"]', "tenants"),
    (f"[destinations.a]\n{BASE}tenants = {{ shop-1 = true }}", "[destinations.a]: tenants must be a non-empty list", "tenants"),
    (f"[destinations.a]\n{BASE}tenants = ['shop-1', '*']", '[destinations.a]: tenants: "*" means every tenant, and must be the only entry', "tenants"),
    (f"[destinations.a]\n{BASE}tenants = ['shop 1']", "[destinations.a]: tenants[0] 'shop 1' is not a tenant name (^[A-Za-z0-9]", "tenants"),
    (f"[destinations.a]\n{BASE}tenants = ['shop-1', 'shop-1']", "[destinations.a]: tenants lists a tenant twice", "tenants"),
    # ordered, allow_private_network
    (f"[destinations.a]\n{BASE}ordered = 'true'", "[destinations.a]: ordered must be true or false", "ordered"),
    (f"[destinations.a]\n{BASE}ordered = 1", "[destinations.a]: ordered must be true or false", "ordered"),
    (f"[destinations.a]\n{BASE}allow_private_network = 'yes'", "[destinations.a]: allow_private_network must be true or false", "allow_private_network"),
    (f"[destinations.a]\n{BASE}allow_private_network = 0", "[destinations.a]: allow_private_network must be true or false", "allow_private_network"),
    # max_in_flight
    (f"[destinations.a]\n{BASE}max_in_flight = 0", "[destinations.a]: max_in_flight must be a whole number from 1 to 1000", "max_in_flight"),
    (f"[destinations.a]\n{BASE}max_in_flight = 1001", "[destinations.a]: max_in_flight must be a whole number from 1 to 1000", "max_in_flight"),
    (f"[destinations.a]\n{BASE}max_in_flight = -1", "max_in_flight must be a whole number from 1 to 1000", "max_in_flight"),
    (f"[destinations.a]\n{BASE}max_in_flight = 4.0", "max_in_flight must be a whole number from 1 to 1000", "max_in_flight"),
    (f"[destinations.a]\n{BASE}max_in_flight = '4'", "max_in_flight must be a whole number from 1 to 1000", "max_in_flight"),
    (f"[destinations.a]\n{BASE}max_in_flight = true", "max_in_flight must be a whole number from 1 to 1000", "max_in_flight"),
    # max_per_second
    (f"[destinations.a]\n{BASE}max_per_second = 0", "[destinations.a]: max_per_second must be a positive number", "max_per_second"),
    (f"[destinations.a]\n{BASE}max_per_second = -5", "[destinations.a]: max_per_second must be a positive number", "max_per_second"),
    (f"[destinations.a]\n{BASE}max_per_second = inf", "[destinations.a]: max_per_second must be a positive number", "max_per_second"),
    (f"[destinations.a]\n{BASE}max_per_second = nan", "[destinations.a]: max_per_second must be a positive number", "max_per_second"),
    (f"[destinations.a]\n{BASE}max_per_second = '50'", "[destinations.a]: max_per_second must be a positive number", "max_per_second"),
    (f"[destinations.a]\n{BASE}max_per_second = true", "[destinations.a]: max_per_second must be a positive number", "max_per_second"),
    # timeout_seconds
    (f"[destinations.a]\n{BASE}timeout_seconds = 0", "[destinations.a]: timeout_seconds must be a positive number of seconds, at most 300", "timeout_seconds"),
    (f"[destinations.a]\n{BASE}timeout_seconds = -1.5", "[destinations.a]: timeout_seconds must be a positive number", "timeout_seconds"),
    (f"[destinations.a]\n{BASE}timeout_seconds = 300.5", "[destinations.a]: timeout_seconds must be a positive number of seconds, at most 300", "timeout_seconds"),
    (f"[destinations.a]\n{BASE}timeout_seconds = nan", "[destinations.a]: timeout_seconds must be", "timeout_seconds"),
    (f"[destinations.a]\n{BASE}timeout_seconds = '10'", "[destinations.a]: timeout_seconds must be", "timeout_seconds"),
    (f"[destinations.a]\n{BASE}timeout_seconds = false", "[destinations.a]: timeout_seconds must be", "timeout_seconds"),
    # retry_schedule
    (f"[destinations.a]\n{BASE}retry_schedule = []", "[destinations.a]: retry_schedule must be a non-empty list of seconds", "retry_schedule"),
    (f"[destinations.a]\n{BASE}retry_schedule = 5", "[destinations.a]: retry_schedule must be a non-empty list of seconds", "retry_schedule"),
    (f"[destinations.a]\n{BASE}retry_schedule = [5, 0]", "[destinations.a]: retry_schedule[1] must be a positive number of seconds", "retry_schedule"),
    (f"[destinations.a]\n{BASE}retry_schedule = [-5]", "[destinations.a]: retry_schedule[0] must be a positive number of seconds", "retry_schedule"),
    (f"[destinations.a]\n{BASE}retry_schedule = [5, '300']", "[destinations.a]: retry_schedule[1] must be a positive number", "retry_schedule"),
    (f"[destinations.a]\n{BASE}retry_schedule = [5, inf]", "[destinations.a]: retry_schedule[1] must be a positive number", "retry_schedule"),
    (f"[destinations.a]\n{BASE}retry_schedule = [true]", "[destinations.a]: retry_schedule[0] must be a positive number", "retry_schedule"),
    (f"[destinations.a]\n{BASE}retry_schedule = [2592001]", "[destinations.a]: retry_schedule[0] must be a positive number of seconds, at most 2592000 (30 days)", "retry_schedule"),
]


@pytest.mark.parametrize("text, expected, key", BAD, ids=[f"{key}-{i}" for i, (_, _, key) in enumerate(BAD)])
def test_each_problem_is_one_line_naming_the_file_the_destination_and_the_key(text: str, expected: str, key: str) -> None:
    message = error(text)
    assert expected in message, message
    assert SECRET not in message and NOT_WHSEC not in message


def test_every_key_has_bad_values_above() -> None:
    assert set(KEYS) <= {key for _, _, key in BAD}


def test_no_error_shows_a_secret_value_or_the_url() -> None:
    """Whatever is wrong, the message names where, never what a secret (or the url) holds."""
    env = {"WH": SECRET, "BAD": NOT_WHSEC}
    token = "tok3n-in-the-query"
    cases = [
        f'url = "https://h.example/?t={token}"\nsecrets = ["env:BAD"]\n',
        f'url = "https://h.example/?t={token}"\nsecrets = ["{NOT_WHSEC}"]\n',
        f'url = "https://h.example/?t={token}"\nsecrets = ["{SECRET}", "{NOT_WHSEC}"]\n',
        f'url = "https://h.example/?t={token}"\nsecrets = ["env:WH", "whsec_{NOT_WHSEC}%"]\n',
        f'url = "https://h.example/?t={token}#x"\nsecrets = ["env:WH"]\n',
        f'url = "ftp://h.example/?t={token}"\nsecrets = ["env:WH"]\n',
        f'url = "https://u:{token}@h.example/"\nsecrets = ["env:WH"]\n',
        f'url = "https://h.example:{token}/"\nsecrets = ["env:WH"]\n',
        f'url = "https://h.example/?t={token}"\nsecrets = ["env:WH"]\nmax_in_flight = 0\n',
        f'url = "https://h.example/?t={token}"\nsecrets = ["env:WH"]\nbogus = "{SECRET}"\n',
    ]
    for body in cases:
        message = error(f"[destinations.a]\n{body}", env)
        assert "[destinations.a]" in message
        for value in (SECRET, NOT_WHSEC, token):
            assert value not in message, message


def test_a_bad_destination_does_not_change_what_sources_errors_say() -> None:
    # Sources are checked first, with their own messages; then destinations.
    message = error('[sources.a]\nscheme = "paypal"\nsecrets = ["x"]\n[destinations.a]\nurl = 3\n')
    assert message.startswith(f"{ORIGIN}: [sources.a]: scheme must be one of")
    message = error("strict = true\n[destinations.a]\nurl = 3\n")
    assert "unknown top-level key(s) strict (expected strict_sources, [sources.NAME], [destinations.NAME])" in message


def test_smoke_reads_no_destination(tmp_path: Path) -> None:
    # smoke signs for one source of the service's sources file: it needs no destination's variable.
    path = tmp_path / "sources.toml"
    path.write_text('[sources.smoke]\nscheme = "hmac-sha256"\nsecrets = ["s"]\n'
                    '[destinations.a]\nurl = "https://h.example"\nsecrets = ["env:UNSET_HERE"]\n')
    assert signer_for("smoke", "t", "", path, environ={}).secret == b"s"
    # Without a destinations parser (intake alone), the tables are accepted unread; serve's reading refuses it.
    assert parse_sources(path.read_text(), {}).destinations == {}
    assert "[destinations.a]: secrets[0] names the environment variable UNSET_HERE" in error(path.read_text())


def test_settings_carry_the_destinations_of_the_sources_file(tmp_path: Path) -> None:
    path = tmp_path / "sources.toml"
    path.write_text(f"strict_sources = true\n[destinations.a]\n{BASE}")
    settings = load_settings(SERVE_OPTIONS, {"sources": str(path)}, {})
    assert settings.source_table is not None
    assert settings.source_table.destinations["a"].secrets == (SECRET,)
    assert SECRET not in repr(settings)


# -- which events a destination takes ------------------------------------------------

def test_matches_every_source_and_tenant_by_default() -> None:
    spec = destination(BASE)
    assert spec.matches("square", "shop-1") and spec.matches("orders", "Other.Tenant")


def test_matches_listed_sources_and_tenants_only() -> None:
    spec = destination(BASE + 'sources = ["square", "orders"]\ntenants = ["shop-1"]\n')
    assert spec.matches("square", "shop-1") and spec.matches("orders", "shop-1")
    assert not spec.matches("stripe", "shop-1")
    assert not spec.matches("square", "shop-2")
    assert not spec.matches("stripe", "shop-2")
    assert not spec.matches("*", "shop-1")  # "*" is the table's word for every one, not a name that matches


def test_matches_with_one_side_listed() -> None:
    by_source = destination(BASE + 'sources = ["square"]\n')
    assert by_source.matches("square", "anyone") and not by_source.matches("orders", "anyone")
    by_tenant = destination(BASE + 'tenants = ["shop-1"]\n')
    assert by_tenant.matches("anything", "shop-1") and not by_tenant.matches("anything", "shop-10")
    # A spec built by hand follows the same rule.
    spec = DestinationSpec(name="x", url="https://h.example", secrets=(SECRET,), tenants=("a", "b"))
    assert spec.matches("s", "b") and not spec.matches("s", "c")


# -- serve --check-config --------------------------------------------------------------

GOOD_FILE = f"""
strict_sources = true
[sources.square]
scheme = "square"
secrets = ["env:SQUARE_KEY"]
notification_url = "https://ingest.example.com/pos/square/ingest"
[sources.orders]
[sources.orders.tenants]
shop-1 = ["env:ORDERS_SHOP1"]
[destinations.warehouse]
url = "https://Hooks.Example.com:8443/codex?token=query-token-value"
secrets = ["env:WAREHOUSE_WHSEC", "{OTHER}"]
sources = ["square"]
ordered = true
[destinations.audit]
url = "http://audit.internal/in"
secrets = ["env:AUDIT_WHSEC"]
tenants = ["shop-1", "shop-2"]
"""
GOOD_ENV = {"SQUARE_KEY": "square-key-value", "ORDERS_SHOP1": "orders-shop1-value",
            "WAREHOUSE_WHSEC": SECRET, "AUDIT_WHSEC": SECRET}


def test_check_config_prints_a_summary_without_secrets_and_exits_0(tmp_path: Path) -> None:
    path = tmp_path / "sources.toml"
    path.write_text(GOOD_FILE)
    data_dir = tmp_path / "pgdata"
    result = run_cli("serve", "--check-config", "--sources", str(path), "--data-dir", str(data_dir),
                     "--workers", "2", env=GOOD_ENV)
    assert result.returncode == 0, result.stderr
    summary = result.stdout.strip()
    assert len(summary.splitlines()) == 1, summary
    assert summary.startswith("codex-ingest serve: configuration OK")
    for shown in (str(path), "square (square)", "orders (hmac-sha256-bound)", "2 destinations",
                  "warehouse (https://hooks.example.com:8443", "audit (http://audit.internal",
                  "tenants shop-1, shop-2", "ordered", "2 workers"):
        assert shown in summary, shown
    for hidden in (*GOOD_ENV.values(), OTHER, "query-token-value", "8443/codex"):
        assert hidden not in result.stdout + result.stderr, hidden
    assert not data_dir.exists()  # no database was started


def test_check_config_without_a_sources_file_says_so(tmp_path: Path) -> None:
    url = "postgresql://ingest:db-password-value@127.0.0.1:1/codex"
    result = run_cli("serve", "--check-config", env={"WEBHOOK_SECRET": "webhook-secret-value", "DATABASE_URL": url})
    assert result.returncode == 0, result.stderr
    assert "No sources file" in result.stdout and "no destinations" in result.stdout
    assert "DATABASE_URL (not contacted)" in result.stdout  # nothing listens on port 1: it was not tried
    assert "webhook-secret-value" not in result.stdout and "db-password-value" not in result.stdout


def test_check_config_with_a_bad_destination_prints_the_one_line_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "sources.toml"
    path.write_text(GOOD_FILE.replace("ordered = true", "ordered = true\nmax_in_flight = 0"))
    data_dir = tmp_path / "pgdata"
    result = run_cli("serve", "--check-config", "--sources", str(path), "--data-dir", str(data_dir), env=GOOD_ENV)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines == [f"codex-ingest serve: error: --sources {path}: [destinations.warehouse]: "
                     "max_in_flight must be a whole number from 1 to 1000"], result.stderr
    assert not data_dir.exists()


def test_check_config_never_shows_a_bad_secret(tmp_path: Path) -> None:
    path = tmp_path / "sources.toml"
    path.write_text(GOOD_FILE)
    result = run_cli("serve", "--check-config", env={**GOOD_ENV, "CODEX_SOURCES": str(path), "AUDIT_WHSEC": NOT_WHSEC})
    assert result.returncode == 2
    assert result.stderr.strip() == (f"codex-ingest serve: error: CODEX_SOURCES {path}: [destinations.audit]: "
                                     "secrets[0] must start with whsec_ (a Standard Webhooks signing secret, "
                                     "whsec_<base64>)")
    assert NOT_WHSEC not in result.stderr + result.stdout


def test_check_config_refuses_what_serve_refuses(tmp_path: Path) -> None:
    # The settings are checked as serve checks them: a loose sources file needs WEBHOOK_SECRET.
    path = tmp_path / "sources.toml"
    path.write_text(f"[destinations.a]\n{BASE}")
    result = run_cli("serve", "--check-config", "--sources", str(path))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "WEBHOOK_SECRET is required" in result.stderr
    result = run_cli("serve", "--check-config", "--port", "x", env={"WEBHOOK_SECRET": "w"})
    assert result.returncode == 2 and "--port" in result.stderr


def test_serve_help_lists_check_config() -> None:
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    assert "--check-config" in result.stdout
