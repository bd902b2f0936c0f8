"""python -m tests.mutation: apply each curated mutant (mutants.py) to a copy
of the tree and run the tests named for it there; a mutant is killed when
they fail, and survives when they pass.

    python -m tests.mutation                 # every mutant
    python -m tests.mutation --list          # what each breaks, and which tests must catch it
    python -m tests.mutation --only NAME     # one (repeatable)

The copy holds the checkout's files as they are on disk (tracked, and
untracked unless ignored), so uncommitted work is what is tested; the
checkout itself is never touched. Before any mutant, the named tests run
once on the unmutated copy (a kill means nothing if they fail anyway).
Exit status: 0 every mutant killed, 1 some survived, 2 an error (a mutant
whose snippet no longer occurs exactly once, tests that fail unmutated, a
run that could not start).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.mutation.guard import TREE_VARIABLE
from tests.mutation.mutants import BY_NAME, MUTANTS, Mutant

ROOT = Path(__file__).resolve().parents[2]

KILLED, SURVIVED, TIMEOUT, ERROR = "killed", "survived", "timeout", "error"
# pytest's exit codes: 1 tests failed, 2 interrupted (a collection error: the mutant broke an import).
_KILLING_CODES = {1: KILLED, 2: KILLED}


class StaleMutant(Exception):
    """The mutant's original snippet does not occur exactly once in its file."""


@dataclass
class Result:
    mutant: Mutant
    status: str
    seconds: float
    output: str = ""


def source_files(root: Path) -> list[str]:
    """The checkout's files: tracked, and untracked unless ignored (new work counts too)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root, check=True, capture_output=True,
    ).stdout.decode().split("\0")
    return sorted({name for name in listed if name and (root / name).is_file()})


def copy_tree(root: Path, dest: Path) -> None:
    for name in source_files(root):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target, follow_symlinks=False)


def mutated_text(mutant: Mutant, text: str) -> str:
    count = text.count(mutant.original)
    if count != 1:
        raise StaleMutant(f"{mutant.name}: its original snippet occurs {count} times in {mutant.file}, not once")
    if mutant.replacement == mutant.original:
        raise StaleMutant(f"{mutant.name}: its replacement is its original")
    return text.replace(mutant.original, mutant.replacement)


def check_current(mutants: list[Mutant], tree: Path) -> list[str]:
    problems = []
    for mutant in mutants:
        path = tree / mutant.file
        if not path.is_file():
            problems.append(f"{mutant.name}: {mutant.file} does not exist")
            continue
        try:
            mutated_text(mutant, path.read_text())
        except StaleMutant as exc:
            problems.append(str(exc))
    return problems


def pytest_env(tree: Path) -> dict[str, str]:
    # The copy first on sys.path: it wins over the editable install's finder
    # (appended to sys.meta_path); guard.py checks that it did. No bytecode:
    # a restored file the size of its mutant could otherwise reuse a stale .pyc.
    return {**os.environ, "PYTHONPATH": str(tree), TREE_VARIABLE: str(tree), "PYTHONDONTWRITEBYTECODE": "1"}


def code_under_test(tree: Path) -> Path:
    found = subprocess.run(
        [sys.executable, "-c", "import codex_ingest; print(codex_ingest.__file__)"],
        cwd=tree, env=pytest_env(tree), check=True, capture_output=True, text=True,
    ).stdout.strip()
    where = Path(found).resolve()
    assert where.is_relative_to(tree.resolve()), f"codex_ingest imports from {where}, not from the copy {tree}"
    return where


def run_pytest(tree: Path, args: tuple[str, ...], basetemp: Path, timeout: float) -> tuple[int | None, str]:
    """pytest's exit code (None: timed out) and its output, run inside the copy."""
    command = [
        sys.executable, "-m", "pytest", "-x", "-q", "--no-header", "-p", "no:cacheprovider",
        "-p", "tests.mutation.guard", f"--basetemp={basetemp}", *args,
    ]
    try:
        done = subprocess.run(command, cwd=tree, env=pytest_env(tree), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return None, out
    return done.returncode, done.stdout + done.stderr


def run_mutant(mutant: Mutant, tree: Path, basetemp: Path, timeout: float) -> Result:
    path = tree / mutant.file
    original = path.read_text()
    started = time.monotonic()
    try:
        path.write_text(mutated_text(mutant, original))
        code, output = run_pytest(tree, mutant.tests, basetemp, timeout)
    except StaleMutant as exc:
        return Result(mutant, ERROR, 0.0, str(exc))
    finally:
        path.write_text(original)
    seconds = time.monotonic() - started
    if code is None:
        return Result(mutant, TIMEOUT, seconds, output)
    if code == 0:
        return Result(mutant, SURVIVED, seconds, output)
    return Result(mutant, _KILLING_CODES.get(code, ERROR), seconds, output)


def caught_by(output: str) -> list[str]:
    """The summary lines of the tests that failed (pytest -ra), shortened to one line each."""
    return [line[:200] for line in output.splitlines() if line.startswith(("FAILED tests/", "ERROR tests/"))]


def tail(text: str, lines: int = 30) -> str:
    return "\n".join("    " + line for line in text.rstrip().splitlines()[-lines:])


def describe(mutant: Mutant) -> str:
    tests = "\n".join(f"      {t}" for t in mutant.tests)
    return f"{mutant.name}\n    breaks: {mutant.promise}\n    in:     {mutant.file}\n    caught by:\n{tests}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--only", action="append", metavar="NAME", help="run this mutant only (repeatable)")
    parser.add_argument("--no-baseline", action="store_true", help="skip running the tests on the unmutated copy first")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one mutant's tests may take (default 300)")
    parser.add_argument("--keep", action="store_true", help="keep the copy (its path is printed)")
    args = parser.parse_args(argv)

    if args.list:
        for mutant in MUTANTS:
            print(describe(mutant))
        print(f"{len(MUTANTS)} mutants")
        return 0
    unknown = [name for name in args.only or [] if name not in BY_NAME]
    if unknown:
        print(f"unknown mutant(s): {', '.join(unknown)} (see --list)", file=sys.stderr)
        return 2
    selected = [BY_NAME[name] for name in args.only] if args.only else list(MUTANTS)

    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="codex-mutation-"))
    work.chmod(0o755)  # the embedded PostgreSQL runs as its own user and must reach its data dir
    tree = work / "tree"
    try:
        copy_tree(ROOT, tree)
        problems = check_current(selected, tree)
        if problems:
            print("stale mutants (update tests/mutation/mutants.py):\n  " + "\n  ".join(problems), file=sys.stderr)
            return 2
        print(f"copy: {tree} (code under test: {code_under_test(tree)})", flush=True)
        if not args.no_baseline:
            tests = tuple(dict.fromkeys(t for m in selected for t in m.tests))
            code, output = run_pytest(tree, tests, work / "basetemp", args.timeout * 2)
            if code != 0:
                print(f"the tests fail without any mutant (exit {code}); fix them first:\n{tail(output)}", file=sys.stderr)
                return 2
            print(f"baseline: {len(tests)} test selections pass unmutated ({time.monotonic() - started:.0f} s)", flush=True)
        results = []
        for n, mutant in enumerate(selected, 1):
            result = run_mutant(mutant, tree, work / "basetemp", args.timeout)
            results.append(result)
            print(f"[{n:>2}/{len(selected)}] {result.status:<8} {mutant.name}  ({result.seconds:.1f} s)", flush=True)
            if result.status in (SURVIVED, ERROR):
                print(describe(mutant) + "\n" + tail(result.output, 15), flush=True)
            else:
                for line in caught_by(result.output):
                    print(f"      {line}", flush=True)
    finally:
        if args.keep:
            print(f"kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    killed = sum(r.status in (KILLED, TIMEOUT) for r in results)
    survived = [r.mutant.name for r in results if r.status == SURVIVED]
    errors = [r.mutant.name for r in results if r.status == ERROR]
    judged = killed + len(survived)
    rate = 100.0 * killed / judged if judged else 0.0
    print(f"\nkill rate: {killed}/{judged} ({rate:.0f}%) in {time.monotonic() - started:.0f} s")
    if survived:
        print("survived: " + ", ".join(survived))
    if errors:
        print("errors: " + ", ".join(errors))
        return 2
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
