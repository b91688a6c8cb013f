"""The README is a user's guide: what the tool does, the two commands, using it on your Redis,
one results table linking to the benchmarks; no commit hashes or development history."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# Text outside code spans and blocks: an example value in backticks may look like a hash.
PROSE = re.sub(r"`[^`]*`", "", re.sub(r"```.*?```", "", README, flags=re.S))


def test_the_readme_starts_with_what_it_does_then_the_two_commands_and_your_redis() -> None:
    headings = re.findall(r"^## (.+)$", README, flags=re.M)
    assert headings[:2] == ["Two commands", "Use it on your Redis"], headings
    intro = README.split("\n## ", 1)[0]
    assert "Redis Streams" in intro and "alert" in intro
    commands = README.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    assert "pip install -e . && detector demo" in commands
    assert "pip install -e '.[test]' && pytest" in commands


def test_the_readme_links_to_the_benchmarks_from_one_results_table() -> None:
    assert README.count("## Results") == 1
    results = README.split("## Results", 1)[1].split("\n## ", 1)[0]
    assert "(benchmarks/README.md)" in results
    rows = [line for line in results.splitlines() if line.startswith("| ")]
    assert len(rows) >= 5  # header and results
    assert all("python -m benchmarks." in r or "detector " in r or "pytest" in r for r in rows[1:])


def test_the_readme_holds_no_commit_hashes_or_development_history() -> None:
    hashes = [
        h
        for h in re.findall(r"\b[0-9a-f]{7,40}\b", PROSE)
        if re.search(r"\d", h) and re.search(r"[a-f]", h)
    ]
    assert hashes == [], hashes
    for diary in ("this session", "this day", "slower VM", "faster VM", "at commit", "issue "):
        assert diary not in README, diary
