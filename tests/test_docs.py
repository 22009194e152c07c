"""Every ``dropbench`` command in the README and docs/ is one the command line takes as written, and the cheap ones
(``schedule``, ``compare``, a suite's ``--dry-run``) run to exit code 0."""

import re
import shlex
from pathlib import Path

import pytest

from dropbench.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROGRAMS = ("dropbench", ".venv/bin/dropbench")


def commands(page: Path) -> list[list[str]]:
    """The arguments of each ``dropbench`` command in the page's bash blocks (continuations joined, comments cut)."""
    found = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", page.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] in PROGRAMS:
                found.append(words[1:])
    return found


DOCUMENTED = [(page.relative_to(ROOT), args) for page in PAGES for args in commands(page)]


def cheap(args: list[str]) -> bool:
    """A command that runs in seconds on what a checkout has: a schedule, the table of the shipped records, a plan."""
    if args[0] == "compare":
        return args[args.index("--results") + 1] == "results" if "--results" in args else True
    return args[0] == "schedule" or (args[0] == "suite" and "--dry-run" in args)


def test_the_pages_document_every_command():
    documented = {args[0] for _, args in DOCUMENTED}
    assert {"pretrain", "transfer", "import", "eval", "suite", "compare", "schedule", "plot"} <= documented
    assert sum(cheap(args) for _, args in DOCUMENTED) >= 6


@pytest.mark.parametrize(("page", "args"), DOCUMENTED, ids=[f"{p}:{' '.join(a)[:60]}" for p, a in DOCUMENTED])
def test_a_documented_command_is_taken_as_written(page, args, cli, tmp_path, monkeypatch):
    try:
        build_parser().parse_args(args)
    except SystemExit as exit:
        pytest.fail(f"{page}: 'dropbench {shlex.join(args)}' is refused by the command line (exit {exit.code})")
    if not cheap(args):
        return
    # From a folder with the checkout's configs and shipped records, so that output files land in tmp_path.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "paper").symlink_to(ROOT / "results" / "paper")
    code, out, err = cli(*args)
    assert code == 0, f"{page}: dropbench {shlex.join(args)}\n{err}"
