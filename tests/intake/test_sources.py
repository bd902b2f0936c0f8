"""The sources file: parsing, every way it can be wrong (one line, no secret
echoed), and what `serve` does with it (exit 2 before anything starts)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bench.local import free_port
from codex_ingest.intake.sources import SourcesError, parse_sources
from codex_ingest.settings import SERVE_OPTIONS, ConfigError, load_settings
from tests.cli import BASE_ENV, run_cli, stop, wait_healthy
from tests.provider_helpers import shopify_signature

SECRET_VALUE = "hunter2-super-secret"
ROOT = Path(__file__).resolve().parents[2]


def test_a_full_file_parses_with_env_secrets_resolved() -> None:
    config = parse_sources(
        """
        strict_sources = true
        [sources.square]
        scheme = "square"
        secrets = ["env:SQ_NEW", "literal-old"]
        notification_url = "https://ingest.example.com/pos/square/ingest"
        [sources.stripe]
        scheme = "stripe"
        secrets = ["env:STRIPE"]
        tolerance_seconds = 60
        """,
        {"SQ_NEW": "sq-new", "STRIPE": "whsec_x"},
    )
    assert config.strict is True
    square, stripe = config.sources["square"], config.sources["stripe"]
    assert square.secrets == ("sq-new", "literal-old")
    assert square.notification_url == "https://ingest.example.com/pos/square/ingest"
    assert (stripe.scheme, stripe.tolerance_seconds, stripe.secrets) == ("stripe", 60, ("whsec_x",))
    assert config.sources["square"].tolerance_seconds == 300
    assert "sq-new" not in repr(config)


def test_build_limits_which_sources_are_built_and_their_secrets_resolved() -> None:
    text = """
    [sources.smoke]
    scheme = "hmac-sha256"
    secrets = ["env:SMOKE"]
    [sources.square]
    scheme = "square"
    secrets = ["env:UNSET_HERE"]
    """
    config = parse_sources(text, {"SMOKE": "s"}, build=lambda name, scheme: scheme == "hmac-sha256")
    assert list(config.sources) == ["smoke"] and config.sources["smoke"].secrets == ("s",)
    # Not built: not read beyond its name and scheme (no notification_url, no variable needed) ...
    assert config.schemes == {"smoke": "hmac-sha256", "square": "square"}
    # ... but those are still checked.
    with pytest.raises(SourcesError, match="scheme must be one of"):
        parse_sources(text.replace('"square"', '"paypal"', 1), {"SMOKE": "s"}, build=lambda name, scheme: False)
    # Without build, every source is built: the unset variable is an error, as for serve.
    with pytest.raises(SourcesError, match="UNSET_HERE"):
        parse_sources(text, {"SMOKE": "s"})


def test_the_example_file_is_valid(tmp_path: Path) -> None:
    text = (ROOT / "sources.example.toml").read_text()
    names = set(re.findall(r'"env:([A-Z0-9_]+)"', text))
    env = {name: "whsec_" + "a2V5LWZvci1leGFtcGxlLWZpbGU=" for name in names}
    config = parse_sources(text, env)
    assert set(config.sources) >= {"square", "shopify", "stripe", "billing", "toast", "clover"}
    assert all(not s.startswith("env:") for spec in config.sources.values() for s in spec.secrets)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("strict_sources = ", "not valid TOML"),
        ("strict_sources = 'yes'", "strict_sources must be true or false"),
        ("strict = true", "unknown top-level key(s) strict"),
        ("sources = 3", "sources must be tables"),
        ('[sources.Bad_Name]\nscheme = "stripe"\nsecrets = ["x"]', "source name must match"),
        ('[sources.a]\nscheme = "paypal"\nsecrets = ["x"]', "scheme must be one of"),
        ('[sources.a]\nscheme = "hmac-sha256-v2"\nsecrets = ["x"]', "(none: hmac-sha256-bound)"),
        ('[sources.a]\nsecrets = ["x"]\n[sources.a.tenants]\nshop-1 = ["y"]', "secrets and tenants cannot both be set"),
        ('[sources.a]\nscheme = "stripe"\nsecrets = ["x"]\n[sources.a.tenants]\nshop-1 = ["y"]', "tenants not allowed"),
        ('[sources.a]\ntenants = {}', "tenants must be a table of tenant = [secrets]"),
        ('[sources.a]\ntenants = ["shop-1"]', "tenants must be a table of tenant = [secrets]"),
        ('[sources.a.tenants]\n"shop 1" = ["y"]', "tenants: 'shop 1' is not a tenant name"),
        ('[sources.a.tenants]\nshop-1 = []', "[sources.a]: tenants.shop-1: secrets must be a non-empty list"),
        ('[sources.a.tenants]\nshop-1 = ["env:EMPTY"]', "tenants.shop-1: secrets[0] names the environment variable EMPTY"),
        ('[sources.a]\nscheme = "hmac-sha256-body"\nsecrets = ["x"]\ntolerance_seconds = 60', "tolerance_seconds not allowed"),
        ('[sources.a]\nscheme = "stripe"', "secrets must be a non-empty list"),
        ('[sources.a]\nscheme = "stripe"\nsecrets = []', "secrets must be a non-empty list"),
        ('[sources.a]\nscheme = "stripe"\nsecrets = "whsec_x"', "secrets must be a non-empty list"),
        ('[sources.a]\nscheme = "stripe"\nsecrets = [""]', "secrets[0] must be a non-empty string"),
        ('[sources.a]\nscheme = "stripe"\nsecrets = ["env:NOT_SET_ANYWHERE"]', "NOT_SET_ANYWHERE, which is unset or empty"),
        ('[sources.a]\nscheme = "stripe"\nsecrets = ["env:EMPTY"]', "EMPTY, which is unset or empty"),
        ('[sources.a]\nscheme = "square"\nsecrets = ["x"]', "needs notification_url"),
        ('[sources.a]\nscheme = "square"\nsecrets = ["x"]\nnotification_url = "ingest.example.com"', "needs notification_url"),
        ('[sources.a]\nscheme = "stripe"\nsecrets = ["x"]\nnotification_url = "https://x"', "notification_url not allowed"),
        ('[sources.a]\nscheme = "clover"\nsecrets = ["x"]\ntolerance_seconds = 10', "tolerance_seconds not allowed"),
        ('[sources.a]\nscheme = "stripe"\nsecrets = ["x"]\ntolerance_seconds = 0', "tolerance_seconds must be"),
        ('[sources.a]\nscheme = "stripe"\nsecrets = ["x"]\ntolerance_seconds = "300"', "tolerance_seconds must be"),
        ('[sources.a]\nscheme = "stripe"\nsecrets = ["x"]\nsecret = "y"', "secret not allowed"),
        (f'[sources.a]\nscheme = "standard-webhooks"\nsecrets = ["{SECRET_VALUE}"]', "secrets[0] must start with whsec_"),
        ('[sources.a]\nscheme = "standard-webhooks"\nsecrets = ["whsec_%%%"]', "must be whsec_ followed by base64"),
        ('[sources.a]\nscheme = "standard-webhooks"\nsecrets = ["whsec_"]', "must not be empty"),
    ],
)
def test_each_problem_is_one_line_naming_it(text: str, expected: str) -> None:
    with pytest.raises(SourcesError) as caught:
        parse_sources(text, {"EMPTY": ""}, origin="sources.toml")
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message
    assert message.startswith("sources.toml")
    assert SECRET_VALUE not in message


def test_webhook_secret_is_required_unless_sources_are_strict(tmp_path: Path) -> None:
    loose = tmp_path / "loose.toml"
    loose.write_text('[sources.a]\nscheme = "shopify"\nsecrets = ["s"]\n')
    strict = tmp_path / "strict.toml"
    strict.write_text('strict_sources = true\n[sources.a]\nscheme = "shopify"\nsecrets = ["s"]\n')
    with pytest.raises(ConfigError, match="WEBHOOK_SECRET is required"):
        load_settings(SERVE_OPTIONS, {}, {"CODEX_SOURCES": str(loose)})
    settings = load_settings(SERVE_OPTIONS, {"sources": str(strict)}, {})
    assert settings.source_table is not None and settings.source_table.strict
    assert settings.sources == strict
    assert "source_table" not in repr(settings)


def test_flag_wins_over_environment_and_is_named_in_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[sources.a]\nscheme = "shopify"\nsecrets = ["s"]\n')
    with pytest.raises(ConfigError, match=r"^--sources cannot read .*missing\.toml"):
        load_settings(SERVE_OPTIONS, {"sources": str(tmp_path / "missing.toml")}, {"WEBHOOK_SECRET": "w", "CODEX_SOURCES": str(good)})
    with pytest.raises(ConfigError, match=r"^CODEX_SOURCES cannot read"):
        load_settings(SERVE_OPTIONS, {}, {"WEBHOOK_SECRET": "w", "CODEX_SOURCES": str(tmp_path / "missing.toml")})


BAD_FILES = {
    "unreadable": None,
    "bad-toml": "[sources.a\nscheme = 1",
    "unknown-scheme": '[sources.a]\nscheme = "paypal"\nsecrets = ["x"]\n',
    "env-unset": '[sources.a]\nscheme = "stripe"\nsecrets = ["env:CODEX_TEST_UNSET_SECRET"]\n',
    "no-secrets": '[sources.a]\nscheme = "stripe"\n',
    "square-no-url": f'[sources.a]\nscheme = "square"\nsecrets = ["{SECRET_VALUE}"]\n',
    "bad-whsec": '[sources.a]\nscheme = "standard-webhooks"\nsecrets = ["env:SW"]\n',
    "not-utf8": b"\xff\xfe[sources]".decode("latin-1"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_serve_with_a_bad_sources_file_exits_2_in_one_line(tmp_path: Path, case: str) -> None:
    path = tmp_path / "sources.toml"
    text = BAD_FILES[case]
    if text is not None:
        path.write_bytes(text.encode("latin-1") if case == "not-utf8" else text.encode())
    result = run_cli("serve", "--sources", str(path), env={"WEBHOOK_SECRET": "w", "SW": SECRET_VALUE})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("codex-ingest serve: error: --sources ")
    assert str(path) in lines[0]
    assert "Traceback" not in result.stderr
    assert SECRET_VALUE not in result.stderr


def test_serve_with_strict_sources_needs_no_webhook_secret_but_loose_does(tmp_path: Path) -> None:
    loose = tmp_path / "loose.toml"
    loose.write_text('[sources.a]\nscheme = "shopify"\nsecrets = ["s"]\n')
    result = run_cli("serve", "--sources", str(loose), "--port", "x")
    assert result.returncode == 2
    assert "--port" in result.stderr  # the file itself was fine; a bad flag is reported first
    result = run_cli("serve", env={"CODEX_SOURCES": str(loose)})
    assert result.returncode == 2
    assert "WEBHOOK_SECRET is required" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_serve_with_a_strict_sources_file_and_two_workers(tmp_path: Path) -> None:
    sources = tmp_path / "sources.toml"
    sources.write_text('strict_sources = true\n[sources.shop]\nscheme = "shopify"\nsecrets = ["env:SHOP_SECRET"]\n')
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "codex_ingest", "serve", "--data-dir", str(tmp_path / "pgdata"),
         "--port", str(port), "--workers", "2", "--sources", str(sources)],
        env={**BASE_ENV, "SHOP_SECRET": SECRET_VALUE},  # no WEBHOOK_SECRET: strict sources need none
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )

    def post(source: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/pos/{source}/ingest", data=body, method="POST",
                                         headers={"Content-Type": "application/json", **headers})
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    body = b'{"id": 1, "total_price": "9.50"}'
    shop = {"X-Shopify-Hmac-Sha256": shopify_signature(SECRET_VALUE, body),
            "X-Shopify-Shop-Domain": "a.myshopify.com", "X-Shopify-Webhook-Id": "w-1"}
    try:
        wait_healthy(port, proc)
        # Several posts, so both workers (each with verifiers built from the pickled settings) answer.
        answers = [post("shop", body, shop)[0] for _ in range(6)]
        unknown = post("square", body, {})
    finally:
        code, log = stop(proc)
    assert answers[0] == 201 and answers[1:] == [200] * 5
    assert unknown[0] == 404 and unknown[1]["error"] == "unknown_source"
    assert code == 0
    assert SECRET_VALUE not in log
