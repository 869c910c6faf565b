"""The documentation's tables are generated (benchmarks/tables.py), never edited by hand."""

from __future__ import annotations

import re
import sys

from helpers import REPO


def _tables():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import tables
    finally:
        sys.path.pop(0)
    return tables


def test_doc_tables_are_what_the_renderers_return():
    tables = _tables()
    docs = tables.read_docs()
    for key in tables.TABLES:
        holders = tables.marker_holders(docs, key)
        assert len(holders) == 1, f"<!-- {key} --> stands in {holders or 'no document'}, expected one"
    rendered = tables.docs_with_tables(docs)
    for name in docs:
        assert rendered[name] == docs[name], f"{name}: tables are stale: run python benchmarks/tables.py --readme"


def test_readme_links_to_docs_that_exist():
    doc = (REPO / "README.md").read_text(encoding="utf-8")
    linked = set(re.findall(r"\]\((docs/[^)#]+)", doc))
    assert {"docs/performance.md", "docs/design.md"} <= linked
    for path in linked:
        assert (REPO / path).is_file(), f"README.md links to {path}, which is missing"


def test_readme_test_command_is_what_ci_runs():
    ci = (REPO / ".ci" / "run").read_text()
    doc = (REPO / "README.md").read_text(encoding="utf-8")
    assert "python -m pytest -q" in doc and "python -m pytest -q" in ci
