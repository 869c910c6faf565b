"""The results table: one row per recipe, WER and ΔWER per dataset condition, as rows, CSV and Markdown.

Everything here reads the sweep's `results.json` form (SweepResult.to_dict()), so `recommend` and the
views work the same on a sweep just run and on a results folder from last week.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from edgeq.errors import EdgeqError

RESULTS_JSON = "results.json"


def load_results(folder: str | Path) -> dict:
    path = Path(folder)
    path = path / RESULTS_JSON if path.is_dir() else path
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise EdgeqError(f"{path}: no sweep results here; run `edgeq sweep --out {Path(folder)}` first") from None
    except ValueError as err:
        raise EdgeqError(f"{path}: not a sweep results file ({err})") from None
    if not isinstance(data, dict) or "cells" not in data or "recipes" not in data:
        raise EdgeqError(f"{path}: not a sweep results file (no recipes/cells)")
    return data


def labels(data: dict) -> list[str]:
    return [c["label"] for c in data["conditions"]]


def _wer(summary: dict | None) -> float | None:
    return None if summary is None else summary["wer"]["wer_pct"]


def rows(data: dict) -> list[dict]:
    """One dict per recipe; `wer`/`dwer` map condition label -> value; latency from the first condition."""
    cells = {(c["recipe"], c["condition"]): c for c in data["cells"]}
    conds = labels(data)
    base = {lab: _wer(cells.get((data["baseline"], lab), {}).get("summary")) for lab in conds}
    out = []
    for info in data["recipes"]:
        mine = [cells.get((info["name"], lab), {}) for lab in conds]
        wer = {lab: _wer(c.get("summary")) for lab, c in zip(conds, mine)}
        dwer = {lab: None if wer[lab] is None or base[lab] is None else wer[lab] - base[lab] for lab in conds}
        first = next((c["summary"] for c in mine if c.get("summary")), None)
        failed = "; ".join(sorted({c["failed"] for c in mine if c.get("failed")})) or None
        out.append({
            **{k: info.get(k) for k in ("name", "library", "scheme", "method", "granularity", "bits_label",
                                        "bits", "format", "bundle_mb", "reduction_pct", "devices")},
            "wer": wer, "dwer": dwer,
            "p50_s": first["latency"]["latency_s"]["p50"] if first else None,
            "rtf": first["rtf"] if first else None,
            "peak_rss_mb": (first["memory"].get("peak_rss_os_mb") or first["memory"].get("peak_rss_sampled_mb"))
            if first else None,
            "failed": failed,
        })
    return out


def columns(data: dict) -> list[tuple[str, str, str | None]]:
    """(header, key, format) in table order; per-condition keys are `wer:LABEL` / `dwer:LABEL`."""
    cols = [("recipe", "name", None), ("library", "library", None), ("scheme", "scheme", None),
            ("method", "method", None), ("granularity", "granularity", None), ("bits", "bits_label", None),
            ("bundle MB", "bundle_mb", ".1f"), ("size -%", "reduction_pct", ".1f")]
    for lab in labels(data):
        cols += [(f"WER % {lab}", f"wer:{lab}", ".2f"), (f"ΔWER {lab}", f"dwer:{lab}", "+.2f")]
    cols += [("p50 s", "p50_s", ".2f"), ("RTF", "rtf", ".3f"), ("peak RSS MB", "peak_rss_mb", ".0f")]
    return cols


def value(row: dict, key: str):
    if ":" in key:
        kind, lab = key.split(":", 1)
        return row[kind].get(lab)
    return row.get(key)


def cell_text(row: dict, key: str, fmt: str | None) -> str:
    v = value(row, key)
    if v is None:
        return "-"
    return str(v) if fmt is None else format(v, fmt)


def to_csv(data: dict) -> str:
    """Plain numbers (no rounding) for spreadsheets; a `failed` column says why a row is empty."""
    buf = io.StringIO()
    cols = columns(data)
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([k.replace(":", "_") for _, k, _ in cols] + ["failed"])
    for r in rows(data):
        w.writerow(["" if value(r, k) is None else value(r, k) for _, k, _ in cols] + [r["failed"] or ""])
    return buf.getvalue()


def to_markdown(data: dict) -> str:
    cols = columns(data)
    lines = ["| " + " | ".join(h for h, _, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows(data):
        cells = [cell_text(r, k, f) for _, k, f in cols]
        if r["failed"]:
            cells[-1] += f" (failed: {r['failed']})"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
