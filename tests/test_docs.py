"""The documentation a user reads: a short landing README whose links resolve, a docs site
that builds with strict link checking, and no history of our own work in either."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(((?!https?://)[^)#\s]+)(#[^)]*)?\)")
# what a page must not carry: our own sessions and commit hashes (git keeps history)
HISTORY = re.compile(r"\bsession \d+|\bcommit [0-9a-f]{7,}\b")


def test_the_readme_is_a_landing_page_whose_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    missing = [target for target, _ in LINK.findall(readme) if not (ROOT / target).exists()]
    assert missing == []


def test_no_page_carries_our_work_history() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    found = {page.name: HISTORY.findall(page.read_text()) for page in pages}
    assert {name: hits for name, hits in found.items() if hits} == {}


def test_the_docs_site_builds_with_strict_link_checking(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "configuration" / "index.html").is_file()
