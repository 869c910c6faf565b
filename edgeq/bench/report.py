"""Views of bench summaries: a terminal table, `--compare` of saved results, and a plot."""

from __future__ import annotations

from pathlib import Path

from edgeq.bench.records import check_summary
from edgeq.bench.summary import load_records, summarize
from edgeq.errors import EdgeqError
from edgeq.util import read_json


def load_summaries(paths: list[str | Path]) -> list[dict]:
    """Summaries from .summary.json / summary.json files or raw .jsonl results files."""
    out: list[dict] = []
    for p in map(Path, paths):
        if p.suffix == ".jsonl":
            out.append(summarize(load_records(p), str(p)))
            continue
        data = read_json(p, EdgeqError, "results file")
        items = data if isinstance(data, list) else [data]
        if not items:
            raise EdgeqError(f"{p}: holds no bench summary")
        out.extend(check_summary(item, str(p)) for item in items)
    return out


def _f(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def rows(summaries: list[dict]) -> list[dict]:
    table = []
    for s in summaries:
        if "failed" in s:
            table.append({"system": s["system"], "failed": s["failed"]})
            continue
        lat = s["latency"]
        table.append({
            "system": s["system"],
            "recipe": s["system_info"].get("recipe"),
            "size_mb": s.get("size_mb"),
            "wer_pct": s["wer"]["wer_pct"],
            "sdi": f"{s['wer']['substitutions']}/{s['wer']['deletions']}/{s['wer']['insertions']}",
            "p50_s": lat["latency_s"]["p50"],
            "p90_s": lat["latency_s"]["p90"],
            "rtf": s["rtf"],
            "encoder_p50_s": lat["encoder_s"]["p50"],
            "ms_per_token": None if lat["per_token_s"]["p50"] is None else 1000 * lat["per_token_s"]["p50"],
            "tokens_per_s": s.get("tokens_per_s"),
            "load_s": s["load"]["seconds"],
            "first_load": s["load"].get("prepared_copy") == "made",
            "peak_rss_mb": s["memory"].get("peak_rss_os_mb") or s["memory"].get("peak_rss_sampled_mb"),
            "utts": s["utterances"],
            "errors": s["errors"],
            "cpu": s["env"]["cpu"]["model"],
            "threads": s["settings"].get("threads"),
        })
    return table


def render_table(summaries: list[dict], title: str = "edgeq bench"):
    from rich.markup import escape
    from rich.table import Table

    data = rows(summaries)
    machines = {(r.get("cpu"), r.get("threads")) for r in data if "failed" not in r}
    caption = "; ".join(f"{cpu}, {t or 'default'} threads" for cpu, t in machines)
    if any(r.get("first_load") for r in data):
        caption += ("\n* this load made the bundle's prepared copy for this device (its first load here); later "
                    "loads reuse it: less load time, and the peak may be lower")
    table = Table(title=title, caption=escape(caption))
    cols = [("system", None), ("recipe", None), ("size MB", ".1f"), ("WER %", ".2f"), ("S/D/I", None),
            ("p50 s", ".2f"), ("p90 s", ".2f"), ("RTF", ".3f"), ("enc p50 s", ".3f"), ("ms/token", ".1f"),
            ("tok/s", ".1f"), ("load s", ".2f"), ("peak RSS MB", ".0f"), ("utts", None), ("errors", None)]
    keys = ["system", "recipe", "size_mb", "wer_pct", "sdi", "p50_s", "p90_s", "rtf", "encoder_p50_s",
            "ms_per_token", "tokens_per_s", "load_s", "peak_rss_mb", "utts", "errors"]
    for name, _ in cols:
        table.add_column(name, justify="left" if name in ("system", "recipe", "S/D/I") else "right")
    for r in data:
        # Names and messages come from files and users: shown literally, never read as rich markup.
        if "failed" in r:
            table.add_row(escape(str(r["system"])), f"[red]failed: {escape(str(r['failed']))}[/]",
                          *[""] * (len(cols) - 2))
            continue
        cells = [escape(str(r[k])) if fmt is None else _f(r[k], fmt) for k, (_, fmt) in zip(keys, cols)]
        if r.get("first_load"):
            cells[keys.index("load_s")] += "*"
        table.add_row(*cells)
    return table


def plot(summaries: list[dict], path: str | Path) -> Path:
    """WER against bundle size, and RTF, one point per system (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise EdgeqError("plots need matplotlib: pip install 'edgeq[plot]'") from None
    data = [r for r in rows(summaries) if "failed" not in r and r["wer_pct"] is not None]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 5))
    # Broken systems (2-bit recipes reach WER 100-460 %) would squash every useful point onto
    # the axis: the scale stops at 25 % and they are listed in the title instead.
    ceiling = 25.0
    off = [r for r in data if r["wer_pct"] > ceiling]
    for r in (r for r in data if r["wer_pct"] <= ceiling):
        a.scatter(r["size_mb"], r["wer_pct"])
        a.annotate(r["system"], (r["size_mb"], r["wer_pct"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if off:
        a.set_ylim(0, ceiling)
    a.set_xlabel("bundle size (MB)")
    a.set_ylabel("WER (%)")
    title = "accuracy vs size"
    if off:
        title += "\noff scale: " + ", ".join(f"{r['system']} {r['wer_pct']:.0f} %" for r in off)
    a.set_title(title, fontsize=9 if off else None)
    a.grid(alpha=0.3)
    names = [r["system"] for r in data]
    b.barh(names, [r["rtf"] for r in data])
    b.set_xlabel("real-time factor (lower is faster)")
    b.set_title("speed")
    b.invert_yaxis()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def target_fit(summaries: list[dict], target) -> list[tuple[bool, str]]:
    """(fits, line) per measured system: its measured peak RSS against `target`'s memory."""
    from edgeq.errors import TargetError
    from edgeq.spec.targets import MEASURED, check_memory

    out = []
    for s in summaries:
        if "failed" in s:
            continue
        peak = s["memory"].get("peak_rss_os_mb") or s["memory"].get("peak_rss_sampled_mb")
        if peak is None:
            continue
        try:
            out.append((True, check_memory(target, s["system"], peak, MEASURED)))
        except TargetError as err:
            out.append((False, str(err)))
    return out
