"""Every page under docs/ is reachable: linked from docs/index.md and listed in mkdocs.yml's nav."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def _pages() -> set[str]:
    return {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")} - {"index.md"}


def test_every_page_is_linked_from_the_index() -> None:
    links = set(re.findall(r"\]\(([^)#\s]+\.md)", (DOCS / "index.md").read_text()))
    missing = sorted(_pages() - links)
    assert not missing, f"docs/index.md does not link {missing}"
    dangling = sorted(link for link in links if not (DOCS / link).is_file())
    assert not dangling, f"docs/index.md links missing pages {dangling}"


def test_every_page_is_in_the_mkdocs_nav() -> None:
    nav = set(re.findall(r":\s*(\S+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.MULTILINE))
    assert _pages() | {"index.md"} == nav, (
        f"not in nav: {sorted(_pages() - nav)}; in nav but missing: {sorted(nav - _pages() - {'index.md'})}"
    )
