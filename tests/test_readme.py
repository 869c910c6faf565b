"""The README's tables are generated (benchmarks/tables.py), never edited by hand."""

from __future__ import annotations

import sys

from helpers import REPO


def test_readme_tables_are_what_the_renderers_return():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import tables
    finally:
        sys.path.pop(0)
    doc = (REPO / "README.md").read_text(encoding="utf-8")
    for key in tables.TABLES:
        assert f"<!-- {key} -->" in doc, f"README.md lost its {key} markers"
    assert tables.readme_with_tables(doc) == doc, "README tables are stale: run python benchmarks/tables.py --readme"


def test_readme_test_command_is_what_ci_runs():
    ci = (REPO / ".ci" / "run").read_text()
    doc = (REPO / "README.md").read_text(encoding="utf-8")
    assert "python -m pytest -q" in doc and "python -m pytest -q" in ci
