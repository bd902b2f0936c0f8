"""The docs are kept true: links and anchors resolve, every command line they
show parses, the settings reference is what the code renders, and the
README stays a front door whose shell commands the quick start runs."""

from __future__ import annotations

import argparse
import functools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from codex_ingest.cli import build_parser
from codex_ingest.cli import reference
from tests.markdown import FENCE, LINK, anchors, code, prose, slug

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "examples").glob("*.md")])
README_MAX_LINES = 150


def _page_id(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def broken_links(path: Path) -> list[str]:
    problems = []
    for target in LINK.findall(prose(path.read_text())):
        if re.match(r"^[a-z]+:", target):  # https:, mailto: — not ours to check offline
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            problems.append(f"{_page_id(path)}: {target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"{_page_id(path)}: {target}: no heading #{anchor} in {_page_id(linked)}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_the_link_check_catches_a_missing_file_and_a_missing_anchor(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other\n\n## A section\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#a-section) [gone](missing.md) [bad](other.md#no-such) `[code](x.md)`\n")
    problems = broken_links(page)
    assert len(problems) == 2 and "missing.md" in problems[0] and "#no-such" in problems[1]


def test_slugs_follow_github() -> None:
    assert slug("Scaling out: replicas behind nginx, PgBouncer") == "scaling-out-replicas-behind-nginx-pgbouncer"
    assert slug("The database is down when `serve` starts") == "the-database-is-down-when-serve-starts"
    assert slug("Throughput against PostgreSQL's ceiling") == "throughput-against-postgresqls-ceiling"


# -- command lines ------------------------------------------------------------

CODEX_INGEST = re.compile(r"(?<![\w./-])codex-ingest((?:\s+[^\s|;&#`]+)*)")
PYTHON_MODULE = re.compile(r"python3? -m ((?:bench|codex_ingest)(?:\.\w+)+)((?:\s+[^\s|;&#`]+)*)")


def _flags(tokens: list[str]) -> list[str]:
    return [t.split("=", 1)[0] for t in tokens if t.startswith("--") and len(t) > 2]


def _words(args: str) -> list[str]:
    # Placeholders such as [--source S] and on|off are shown, not typed.
    return [w.strip("[]") for w in args.replace("|", " ").split()]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps them nowhere public
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


def codex_ingest_problems(line: str) -> list[str]:
    """What in one shown `codex-ingest …` command line the real parser does not have."""
    problems = []
    for match in CODEX_INGEST.finditer(line):
        words = _words(match.group(1))
        parser, path = build_parser(), ["codex-ingest"]
        while words and not words[0].startswith("-") and _subparsers(parser):
            commands = _subparsers(parser)
            if words[0] not in commands:
                break
            path.append(words.pop(0))
            parser = commands[path[-1]]
        if len(path) == 1 and words and not words[0].startswith("-"):
            if re.fullmatch(r"[a-z]+", words[0]):  # looks like a subcommand, but is none
                problems.append(f"{' '.join(path)} has no command {words[0]!r}: {line.strip()}")
            continue
        problems += [f"{' '.join(path)} has no {flag}: {line.strip()}"
                     for flag in _flags(words) if flag not in _options(parser)]
    return problems


@functools.cache
def module_help(module: str) -> str:
    done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"python -m {module} --help failed: {done.stderr[-500:]}"
    return done.stdout


def module_problems(line: str) -> list[str]:
    problems = []
    for match in PYTHON_MODULE.finditer(line):
        module, words = match.group(1), _words(match.group(2))
        if module == "codex_ingest.cli":
            continue  # the codex-ingest command itself: checked above
        known = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", module_help(module)))
        problems += [f"python -m {module} has no {flag}: {line.strip()}" for flag in _flags(words) if flag not in known]
    return problems


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_command_and_flag_shown_exists(page: Path) -> None:
    problems = []
    for line in code(page.read_text()):
        problems += codex_ingest_problems(line) + module_problems(line)
    assert problems == []


def test_the_command_check_catches_a_made_up_command_or_flag() -> None:
    assert codex_ingest_problems("codex-ingest serve --workers 2 --no-migrate") == []
    assert codex_ingest_problems("codex-ingest migrate rollback --all") == []
    assert codex_ingest_problems("codex-ingest export --tenant T [--source S] [--since TIME]") == []
    assert codex_ingest_problems("codex-ingest serve --wrokers 2") != []
    assert codex_ingest_problems("codex-ingest migrate rollback --everything") != []
    assert codex_ingest_problems("codex-ingest replay --tenant T") != []
    assert module_problems("python -m bench.throughput --duration 8 --png x.png") == []
    assert module_problems("python -m bench.throughput --durations 8") != []


def test_shell_quoting_of_shown_commands_is_whole() -> None:
    """A shown shell block must at least split into words (an unbalanced quote is a broken copy-paste)."""
    for page in PAGES:
        for block in FENCE.findall(page.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                if line.lstrip().startswith(("codex-ingest", ".venv/bin/", "python", "WEBHOOK_SECRET=", "curl")):
                    shlex.split(line, comments=True)


# -- the settings reference -----------------------------------------------------

def test_env_example_and_configuration_page_are_what_the_settings_table_renders() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert reference.replace_between_markers(page, reference.configuration_table()) == page, \
        "docs/configuration.md is stale: run python -m codex_ingest.cli.reference"
    assert (ROOT / ".env.example").read_text() == reference.env_example(), \
        ".env.example is stale: run python -m codex_ingest.cli.reference"


def test_the_rendered_reference_carries_every_setting_and_its_real_default() -> None:
    from codex_ingest.settings import SERVE_OPTIONS, Settings

    table = reference.configuration_table()
    env = reference.env_example()
    for option in SERVE_OPTIONS:
        assert f"| `{option.env}` | `{option.flag} " in table
        assert f"{option.env}=" in env
    # Defaults come from Settings itself: a changed default changes the page.
    assert f"`{Settings.__dataclass_fields__['db_pool_max'].default}`" in table
    assert f"\nDB_POOL_MAX={Settings.__dataclass_fields__['db_pool_max'].default}\n" in env


def test_serve_help_shows_each_default() -> None:
    serve = _subparsers(build_parser())["serve"]
    text = " ".join(serve.format_help().split())
    assert "(default: 8) [env DB_POOL_MAX]" in text
    assert "(default: required) [env WEBHOOK_SECRET]" in text


# -- the README as the front door ----------------------------------------------

def test_readme_is_a_front_door() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; detail belongs in docs/"


def test_every_docs_page_is_in_the_readme_table() -> None:
    readme = (ROOT / "README.md").read_text()
    for page in (ROOT / "docs").glob("*.md"):
        assert f"(docs/{page.name})" in readme, f"docs/{page.name} is not linked from the README"


def test_readme_shell_blocks_are_the_quick_starts_which_its_test_runs() -> None:
    readme, quickstart = (ROOT / "README.md").read_text(), (ROOT / "docs" / "quickstart.md").read_text()
    blocks = [b for b in re.findall(r"^```sh\n(.*?)^```", readme, re.M | re.S) if "pip install" not in b]
    assert blocks, "the README shows no first webhook"
    for block in blocks:
        assert block in quickstart, f"README block not in docs/quickstart.md (so not run by its test):\n{block}"
