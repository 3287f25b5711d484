"""The documented commands work on the present code and default.

Convention: every line of a fenced ```sh block in the pages of ``DOCUMENTED`` is a command
this test runs (a trailing ``\\`` joins lines; ``# ...`` is a comment; leading ``VAR=value``
words are its environment). How each command is run depends on its program:

- ``make TARGET``: ``make -n TARGET`` (the target exists and its recipe expands); what the
  targets do is run elsewhere (``make smoke``'s CI preset by tests/test_workflow.py).
- ``snakemake ...``: a dry run (``-n`` added), in an empty working directory with the
  repository's Snakefile, so every job the command would run is planned from scratch: a
  target the default does not produce (``-f results/.../b3.json`` where the default evaluates
  other budgets) fails here. ``--unlock`` and ``--lint`` run as they are.
- ``coalora ...``: parsed by the command's own parser (every sub-command and flag exists);
  what the sub-commands do is tested in their own test files.

Any other program fails the test: a new kind of documented command needs its rule here.
Other fences (```yaml, ```bibtex, an indented block) are not commands. Beside the commands:
the README stays within ``README_MAX_LINES`` lines, every relative link of the README and
docs/ resolves (the reference run's files once it exists), and the README's rendered blocks
are the reference run's (``coalora headline results/reference --readme README.md --check``).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from coalora.cli import build_parser
from coalora.verdicts import reference

REPO = Path(__file__).resolve().parents[1]
DOCUMENTED = ["README.md", "docs/usage.md"]
README_MAX_LINES = 200
REFERENCE = REPO / "results" / reference.NAME
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
ENV_WORD = re.compile(r"^[A-Z_][A-Z0-9_]*=")
FENCE = re.compile(r"^```(\S*)\s*$")


def shell_commands(text: str) -> list[str]:
    """The commands of a page's ```sh blocks, comments dropped, continuations joined."""
    commands, block, pending = [], None, ""
    for line in text.splitlines():
        fence = FENCE.match(line)
        if fence:
            block = fence[1] if block is None else None
            continue
        if block != "sh":
            continue
        line = pending + line
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1] + " "
            continue
        pending = ""
        command = line.split(" #")[0].strip() if not line.lstrip().startswith("#") else ""
        if command:
            commands.append(command)
    return commands


def documented() -> list[tuple[str, str]]:
    return [(page, c) for page in DOCUMENTED for c in shell_commands((REPO / page).read_text())]


def split(command: str) -> tuple[dict[str, str], list[str]]:
    words = shlex.split(command)
    env = {}
    while words and ENV_WORD.match(words[0]):
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    return env, words


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, cwd=cwd, env={**ENV, **env}, capture_output=True, text=True, timeout=600
    )


def check_make(words, env, tmp_path):
    proc = run(["make", "-n", *words[1:]], REPO, env)
    assert proc.returncode == 0, proc.stderr[-2000:]


def check_snakemake(words, env, tmp_path):
    as_is = {"--unlock", "--lint"} & set(words)
    dry = [] if as_is else ["-n"]
    argv = [
        sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
        *dry, *words[1:],
    ]  # fmt: skip
    proc = run(argv, REPO, env)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    if dry:
        assert "Job stats:" in proc.stdout or "Nothing to be done" in proc.stdout, proc.stdout


def check_coalora(words, env, tmp_path):
    try:
        build_parser().parse_args(words[1:])
    except SystemExit as exit:
        raise AssertionError(f"the coalora command refuses {shlex.join(words)}") from exit


CHECKS = {"make": check_make, "snakemake": check_snakemake, "coalora": check_coalora}


def test_the_documented_pages_have_commands():
    pages = {page for page, _ in documented()}
    assert pages == set(DOCUMENTED)


@pytest.mark.parametrize(("page", "command"), documented(), ids=lambda v: v[:80])
def test_documented_command_works(page, command, tmp_path):
    env, words = split(command)
    assert words[0] in CHECKS, (
        f"{page}: {command!r}: no rule to test a {words[0]!r} command (tests/test_docs.py)"
    )
    CHECKS[words[0]](words, env, tmp_path)


def test_a_rerun_example_of_an_output_the_default_does_not_make_fails(tmp_path):
    # The issue that started this file: the README named an output (MiniLM's b3.json) that
    # the default no longer made; the dry run must refuse such an example.
    words = shlex.split("snakemake --cores 1 -f results/smollm2-bible/qlora/s1/eval/b9.json")
    with pytest.raises(AssertionError, match="MissingInput|Missing input|No rule to produce"):
        check_snakemake(words, {}, tmp_path)


def test_shell_blocks_are_read_as_documented():
    text = "```sh\nA=1 make run   # comment\n# only a comment\nsnakemake \\\n  -n\n```\n```yaml\nx: 1\n```\n"
    assert shell_commands(text) == ["A=1 make run", "snakemake    -n"]
    assert split("A=1 make run") == ({"A": "1"}, ["make", "run"])


def test_the_readme_is_short():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"


LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize(
    "page", ["README.md", "CHANGELOG.md", "benchmarks/README.md", *sorted(
        str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]
)  # fmt: skip
def test_relative_links_resolve(page):
    path = REPO / page
    missing = []
    for target in LINK.findall(path.read_text()):
        if "://" in target:
            continue
        resolved = (path.parent / target).resolve()
        if not REFERENCE.exists() and resolved.is_relative_to(REFERENCE):
            continue  # the reference run's files, before the reference exists
        if not resolved.exists():
            missing.append(target)
    assert not missing, f"{page}: links to missing files: {missing}"


def test_the_readme_shows_the_reference_run():
    readme = (REPO / "README.md").read_text()
    for name in reference.BLOCKS:
        assert readme.count(reference.BEGIN.format(name)) == 1
        assert readme.count(reference.END.format(name)) == 1
    if not (REFERENCE / "claims.csv").is_file():
        pytest.skip(f"no reference run in {REFERENCE} yet (make run && make reference)")
    wanted = reference.readme_with(readme, reference.rendered(REFERENCE))
    assert readme == wanted, (
        "README.md's blocks differ from results/reference/: "
        "coalora headline results/reference --readme README.md"
    )
