"""docs/quickstart.md, kept true: its ```sh blocks run with bash, in order,
against a real ``codex-ingest serve`` on the test database.

The blocks marked ``<!-- not run by tests: starts the server -->`` are not
run: the test starts the service itself, with the environment and
``--sources`` those blocks give (so the doc's secrets and token are the
ones served), on a free port. The only rewrite of a block is
``127.0.0.1:8080`` to that port. A block that posts (curl to an ingest URL) runs
twice: 201, then 200 duplicate, as a provider's retry would be. A ```text or
```json block after a block is the answer it shows, checked against the
runs in order (``…`` stands for anything). Then the database must hold each
event under the tenant and key the doc says, with the exact body posted.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bench.local import free_port
from codex_ingest.storage import migrations
from tests.cli import BASE_ENV, wait_healthy

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "quickstart.md"
NOT_RUN = "<!-- not run by tests: starts the server -->"
DOC_ADDRESS = "127.0.0.1:8080"
# Values that differ on every run: checked for presence, not compared.
VARIABLE = {"received_at", "next_cursor", "user-agent"}  # user-agent: the curl of the machine
# (tenant, source, key) of every event the doc posts, in order.
EXPECTED_ROWS = [
    ("shop-1", "orders", "evt_1"),
    ("ML8M1AQ1GQG2K", "square", "5e8c6b2e-63ad-4b4c-9a51-0a8c3f7e2b11"),
    ("shop-1.myshopify.com", "shopify", "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"),
    ("acct_1Nv0FGQ9RKHgCVdK", "stripe", "evt_1QaZ2bLkdIwHu7ix"),
]


@dataclass(frozen=True)
class Block:
    heading: str
    lang: str
    text: str
    starts_server: bool
    line: int


def parse(markdown: str) -> list[Block]:
    """Every fenced block, with the heading it sits under and whether it is marked NOT_RUN."""
    blocks: list[Block] = []
    body: list[str] = []
    heading, previous, fence, start = "", "", None, 0
    for number, line in enumerate(markdown.splitlines(), 1):
        if fence is not None:
            if line.startswith("```"):
                blocks.append(Block(heading, fence, "\n".join(body) + "\n", previous == NOT_RUN, start))
                fence, previous = None, ""
            else:
                body.append(line)
            continue
        if line.startswith("```"):
            fence, body, start = line[3:].strip(), [], number
        elif line.startswith("#"):
            heading = line.lstrip("#").strip()
        if line.strip() and not line.startswith("```"):
            previous = line.strip()
    assert fence is None, "an unclosed ``` fence in docs/quickstart.md"
    return blocks


def serve_environment(block: Block, workdir: Path) -> dict[str, str]:
    """The environment a server block starts the service with; --sources becomes CODEX_SOURCES."""
    words = shlex.split(block.text.replace("\\\n", " "))
    env: dict[str, str] = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    assert words[:2] == [".venv/bin/codex-ingest", "serve"], f"line {block.line}: not a serve command: {block.text}"
    arguments = words[2:]
    while arguments:
        flag = arguments.pop(0)
        assert flag == "--sources" and arguments, f"line {block.line}: teach this test the serve argument {flag!r}"
        env["CODEX_SOURCES"] = arguments.pop(0)
    if "CODEX_SOURCES" in env:
        env["CODEX_SOURCES"] = str(workdir / env["CODEX_SOURCES"])
    return env


@contextlib.contextmanager
def serving(port: int, database_url: str, env: dict[str, str]) -> Iterator[None]:
    """`codex-ingest serve` as the doc starts it, but on the test database and ``port``."""
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "codex_ingest", "serve", "--no-migrate", "--workers", "1", "--port", str(port)],
            env={**BASE_ENV, "DATABASE_URL": database_url, "DB_POOL_MAX": "4", **env},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )

        def output() -> str:
            log.seek(0)
            return log.read().decode(errors="replace")

        try:
            wait_healthy(port, proc, output=output)
            yield
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_block(block: Block, workdir: Path, port: int) -> str:
    assert "codex-ingest serve" not in block.text, f"line {block.line}: a server block must be marked {NOT_RUN}"
    script = block.text.replace(DOC_ADDRESS, f"127.0.0.1:{port}")
    env = {k: v for k, v in BASE_ENV.items() if not k.startswith("CODEX_")}
    # A session of its own, so that whatever a block starts is stopped with it.
    proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", script], cwd=workdir, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError(f"line {block.line}: still running after 60 s\n{stdout}\n{stderr}") from None
    assert proc.returncode == 0, f"line {block.line}: exit {proc.returncode}\n{stdout}\n{stderr}"
    return stdout.replace("\r\n", "\n")


def statuses(output: str) -> list[str]:
    return re.findall(r"^HTTP/1\.1 (\d{3})", output, re.M)


def shows(shown: str, actual: str) -> bool:
    """Whether ``actual`` has the lines of ``shown`` in order; a line ``…`` is any
    lines, and ``…`` inside a line is any text."""
    pattern = []
    for line in shown.strip("\n").split("\n"):
        if line.strip() == "…":
            pattern.append(r"(?:[^\n]*\n)*?")
        else:
            pattern.append("[^\n]*?".join(map(re.escape, line.split("…"))) + r"\n")
    return re.search("^" + "".join(pattern), actual + "\n", re.M) is not None


def same_answer(shown: Any, actual: Any, where: str = "") -> None:
    """The shown JSON and the real one agree, but for VARIABLE values."""
    assert type(shown) is type(actual), f"{where}: shown {shown!r}, got {actual!r}"
    if isinstance(shown, dict):
        assert shown.keys() == actual.keys(), f"{where}: keys {sorted(shown)} shown, {sorted(actual)} answered"
        for key in shown:
            if key in VARIABLE:
                assert isinstance(actual[key], str) and actual[key], f"{where}.{key}"
            else:
                same_answer(shown[key], actual[key], f"{where}.{key}")
    elif isinstance(shown, list):
        assert len(shown) == len(actual), f"{where}: {len(shown)} items shown, {len(actual)} answered"
        for index, (a, b) in enumerate(zip(shown, actual, strict=True)):
            same_answer(a, b, f"{where}[{index}]")
    else:
        assert shown == actual, f"{where}: shown {shown!r}, answered {actual!r}"


@pytest.fixture
def quickstart_db(new_database: Callable[[], str]) -> str:
    """An empty migrated database of the test's own: event ids start at 1, as the doc shows."""
    url = new_database()
    migrations.apply_all(url)
    return url


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A clone's root as the doc sees it (.venv/, examples/), where the doc's files get written."""
    venv = Path(sys.prefix) if sys.prefix != sys.base_prefix else ROOT / ".venv"
    (tmp_path / ".venv").symlink_to(venv, target_is_directory=True)
    (tmp_path / "examples").symlink_to(ROOT / "examples", target_is_directory=True)
    return tmp_path


def test_only_server_blocks_are_marked_not_run() -> None:
    for block in parse(DOC.read_text(encoding="utf-8")):
        if block.lang == "sh":
            assert block.starts_server == ("codex-ingest serve" in block.text), f"line {block.line}"


def test_the_headings_other_pages_link_to_exist() -> None:
    """README and docs/ link to #providers and #a-consumer (tests/test_docs.py checks the links themselves)."""
    text = DOC.read_text(encoding="utf-8")
    headings = {line.lstrip("#").strip() for line in text.splitlines() if line.startswith("## ")}
    assert {"Serve", "First webhook", "Read it back", "Providers", "A consumer", "Where next"} <= headings


@pytest.mark.needs_program("curl", "openssl")
def test_quickstart_runs_as_written(quickstart_db: str, workdir: Path) -> None:
    blocks = parse(DOC.read_text(encoding="utf-8"))
    port = free_port()
    outputs: dict[str, list[str]] = {}  # heading: stdout of each run of its blocks
    posted: dict[str, bytes] = {}  # source: the body its block posted
    with contextlib.ExitStack() as server:
        for index, block in enumerate(blocks):
            if block.lang != "sh":
                continue
            if block.starts_server:
                server.close()  # the doc stops the first server before starting the second
                server.enter_context(serving(port, quickstart_db, serve_environment(block, workdir)))
                continue
            shown = []
            for after in blocks[index + 1:]:
                if after.lang == "sh":
                    break
                if after.lang in ("text", "json"):
                    shown.append(after)
            posts = "curl" in block.text and "/ingest" in block.text
            runs = [run_block(block, workdir, port) for _ in range(max(len(shown), 2 if posts else 1))]
            outputs.setdefault(block.heading, []).extend(runs)
            for expected, output in zip(shown, runs, strict=False):
                if expected.lang == "json":
                    same_answer(json.loads(expected.text), json.loads(output), f"line {expected.line}")
                else:
                    assert shows(expected.text, output), f"line {expected.line} shows\n{expected.text}\nbut got\n{output}"
            if posts:
                assert [statuses(r) for r in runs[:2]] == [["201"], ["200"]], f"line {block.line}:\n" + "\n".join(runs)
                assert '"status":"duplicate"' in runs[1]
                source = re.search(r"/pos/([a-z0-9_-]+)/ingest", block.text)
                body = re.search(r"^body='(.*)'$", block.text, re.M)
                assert source and body, f"line {block.line}: a post with no body='...' or no /pos/<source>/ingest"
                posted[source.group(1)] = body.group(1).encode()

    # What the doc says is stored: each event once, under its tenant and key, with the bytes posted.
    with psycopg.connect(quickstart_db) as conn:
        rows = conn.execute("SELECT tenant_id, source, idempotency_key, body FROM events ORDER BY id").fetchall()
    assert [tuple(r[:3]) for r in rows] == EXPECTED_ROWS
    assert {source: bytes(body) for _, source, _, body in rows} == posted

    # The read prints the first webhook's event, key evt_1; the consumer reads the combined feed:
    # every tenant's event once, in the order posted, each under its topic (from the body's "type"
    # or X-Shopify-Topic).
    read = json.loads(outputs["Read it back"][0])
    assert [(e["tenant_id"], e["idempotency_key"]) for e in read["events"]] == [("shop-1", "evt_1")]
    assert outputs["Read it back"][1] == posted["orders"].decode() + "\n"  # body_base64 decoded: the bytes sent
    printed = [json.loads(line) for line in outputs["A consumer"][0].splitlines()]
    assert [(e["tenant_id"], e["source"], e["idempotency_key"]) for e in printed] == EXPECTED_ROWS
    # Each under its topic: the body's "type", or, for Shopify, the X-Shopify-Topic header the page sends.
    assert [e["topic"] for e in printed] == [
        "orders/create" if e["source"] == "shopify" else json.loads(posted[e["source"]])["type"] for e in printed]
    assert (workdir / "feed.cursor").read_text().split()[0] == "feed"
    assert not (set(os.listdir(workdir)) - {".venv", "examples", "sources.toml", "feed.cursor"})
