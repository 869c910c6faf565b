"""Everything a sweep writes next to its cache: results.json/.csv/.md, plots and report.md."""

from __future__ import annotations

import json
from pathlib import Path

from edgeq.errors import MissingDependencyError
from edgeq.sweep.table import RESULTS_JSON, to_csv, to_markdown


def write_views(result, out: Path) -> dict[str, Path]:
    from edgeq.sweep.plots import all_plots
    from edgeq.sweep.report import markdown

    data = result.to_dict()
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / RESULTS_JSON, "csv": out / "results.csv", "markdown": out / "results.md",
             "report": out / "report.md"}
    files["json"].write_text(json.dumps(data, indent=1) + "\n")
    files["csv"].write_text(to_csv(data))
    files["markdown"].write_text(to_markdown(data))
    try:
        plots = all_plots(data, out / "plots")
    except MissingDependencyError as err:
        result.notes.append(f"no plots: {err}")
        plots = []
    files["report"].write_text(markdown(data, plots, out))
    files.update({p.name: p for p in plots})
    return files
