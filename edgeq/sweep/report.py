"""The sweep report (Markdown): setup, the table, the plots and the Pareto set, top to bottom."""

from __future__ import annotations

from pathlib import Path

from edgeq.sweep.pareto import front_for
from edgeq.sweep.table import labels, rows, to_markdown


def _setup(data: dict) -> list[str]:
    first = next((c["summary"] for c in data["cells"] if c.get("summary")), None)
    lines = [f"- model: `{data['model']}` (weights sha256 {data['model_hash'][:12]}…)",
             f"- edgeq {data['edgeq_version']}; {len(data['recipes'])} recipes; ΔWER against `{data['baseline']}`"]
    for c in data["conditions"]:
        noise = f", {c['noise_source']} noise at {c['snr_db']:g} dB SNR" if c.get("snr_db") is not None else ""
        limit = f", first {c['limit']} utterances" if c.get("limit") else ""
        lines.append(f"- dataset **{c['label']}**: `{c['dataset']}`{limit}{noise}")
    if first:
        env = first["env"]
        threads = first["settings"].get("threads_used") or first["settings"].get("threads")
        lines.append(f"- machine: {env['cpu']['model']}, {threads} threads, {first['settings']['device']}; "
                     f"{first['utterances']} utterances ({first['audio_s']:.0f} s of audio) per dataset")
    return lines


def markdown(data: dict, plots: list[Path], folder: Path) -> str:
    table = rows(data)
    out = [f"# edgeq sweep: {data['model']}", "", "## Setup", "", *_setup(data), "",
           "## Results", "", "Latency, RTF and peak RSS are from the first dataset. "
           "`-` means the recipe produced no number there.", "", to_markdown(data), "## Plots", ""]
    for p in plots:
        if p.suffix == ".png":
            out += [f"![{p.stem}]({p.relative_to(folder).as_posix()})", ""]
    out += ["## Pareto set (bundle size against WER)", ""]
    by_name = {r["name"]: r for r in table}
    for label in labels(data):
        names = front_for(table, label)
        out.append(f"- **{label}**: " + (", ".join(
            f"`{n}` ({by_name[n]['bundle_mb']:.1f} MB, WER {by_name[n]['wer'][label]:.2f} %)" for n in names)
            or "no recipe produced a WER"))
    failed = [r for r in table if r["failed"]]
    if failed:
        out += ["", "## Failed", ""] + [f"- `{r['name']}`: {r['failed']}" for r in failed]
    return "\n".join(out) + "\n"
