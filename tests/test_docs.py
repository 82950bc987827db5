"""README.md and docs/*.md: every measured table equals what its results file gives, and every
relative link points at a file that exists. Reads files only (no training, no data)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchmarks import docs_tables

ROOT = Path(__file__).resolve().parent.parent
PAGES = docs_tables.pages()
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def test_pages_found() -> None:
    assert Path("README.md") in PAGES and len(PAGES) > 5


@pytest.mark.parametrize("page", PAGES, ids=str)
def test_tables_match_their_results_files(page: Path) -> None:
    _, changed = docs_tables.update(page)
    assert not changed, (f"{page}: these tables differ from their results files: {changed}; "
                         "run `python -m benchmarks.docs_tables`")


def test_a_changed_figure_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the check must see a retyped number: copy a page with a table, change one figure in it
    page = Path("docs/time-budget.md")
    text = (ROOT / page).read_text()
    assert "| 93.25 % |" in text
    (tmp_path / "docs").mkdir()
    (tmp_path / page).write_text(text.replace("| 93.25 % |", "| 93.52 % |"))
    monkeypatch.setattr(docs_tables, "ROOT", tmp_path)
    (tmp_path / "benchmarks").symlink_to(ROOT / "benchmarks")
    new, changed = docs_tables.update(page)
    assert changed == ["benchmarks/results/2026-11-27-amd-epyc-2c-budget-avx512.json"]
    assert new == text


def test_every_block_is_closed() -> None:
    for page in PAGES:
        text = (ROOT / page).read_text()
        opened = len(re.findall(r"^<!-- table: ", text, re.M))
        closed = len(re.findall(r"^<!-- end table -->$", text, re.M))
        assert opened == len(docs_tables.BLOCK.findall(text)) == closed, page


@pytest.mark.parametrize("page", PAGES, ids=str)
def test_relative_links_exist(page: Path) -> None:
    text = (ROOT / page).read_text()
    missing = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a web address or an anchor in the same page
        path = (ROOT / page).parent / target.split("#")[0]
        if not path.exists():
            missing.append(target)
    assert not missing, f"{page} links to missing files: {missing}"


def test_readme_is_a_front_page() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 160
