"""Plots of a sweep (matplotlib): WER vs bundle size per condition with the Pareto front, latency vs size."""

from __future__ import annotations

from pathlib import Path

from edgeq.errors import MissingDependencyError
from edgeq.sweep.pareto import front_for
from edgeq.sweep.table import labels, rows

FORMATS = ("png", "svg")
# Broken recipes (2-bit: WER 98-462 % on whisper-base) would squash the useful points onto the
# axis; the scale stops at the larger of 25 % and 3x the front's worst WER, and they are listed.
MIN_CEILING = 25.0


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError("sweep plots need matplotlib: pip install 'edgeq[sweep]'") from None
    return plt


def _colours(table: list[dict]) -> dict[str, str]:
    libs = sorted({r["library"] for r in table})
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray"]
    return {lib: palette[i % len(palette)] for i, lib in enumerate(libs)}


def _save(fig, folder: Path, stem: str) -> list[Path]:
    out = []
    for ext in FORMATS:
        path = folder / f"{stem}.{ext}"
        fig.savefig(path, dpi=120)
        out.append(path)
    return out


def wer_vs_size(data: dict, label: str, folder: Path) -> list[Path]:
    plt = _pyplot()
    table = [r for r in rows(data) if r["bundle_mb"] is not None and r["wer"].get(label) is not None]
    on_front = front_for(table, label)
    worst = max((r["wer"][label] for r in table if r["name"] in on_front), default=0.0)
    ceiling = max(MIN_CEILING, 3 * worst)
    colours = _colours(table)
    fig, ax = plt.subplots(figsize=(9, 6))
    for lib, colour in colours.items():
        for mixed in (False, True):  # mixed precision (per-module overrides, e.g. --recipe auto): a star
            mine = [r for r in table if r["library"] == lib and r["wer"][label] <= ceiling and _mixed(r) == mixed]
            if mine:
                ax.scatter([r["bundle_mb"] for r in mine], [r["wer"][label] for r in mine], color=colour,
                           label=f"{lib} mixed precision" if mixed else lib, marker="*" if mixed else "o",
                           edgecolors=["black" if r["name"] in on_front else colour for r in mine],
                           s=160 if mixed else 40, zorder=3)
    pts = sorted((r["bundle_mb"], r["wer"][label], r["name"]) for r in table if r["name"] in on_front)
    ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", color="black", lw=1, ls="--",
            label="Pareto front", zorder=2)
    for size, wer, name in pts:
        ax.annotate(name, (size, wer), fontsize=8, xytext=(4, 4), textcoords="offset points", weight="bold")
    for r in table:
        if r["name"] not in on_front and r["wer"][label] <= ceiling:
            ax.annotate(r["name"], (r["bundle_mb"], r["wer"][label]), fontsize=6, xytext=(3, -8),
                        textcoords="offset points", color="dimgray")
    off = [r for r in table if r["wer"][label] > ceiling]
    title = f"WER vs bundle size: {_model_name(data)} on {label}"
    if off:
        ax.set_ylim(bottom=0, top=ceiling)
        title += "\noff scale: " + ", ".join(f"{r['name']} {r['wer'][label]:.0f} %" for r in off)
    ax.set_title(title, fontsize=9 if off else 11)
    ax.set_xlabel("bundle size (MB)")
    ax.set_ylabel("WER (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths = _save(fig, folder, f"wer_vs_size_{_file_label(label)}")
    plt.close(fig)
    return paths


def latency_vs_size(data: dict, folder: Path) -> list[Path]:
    plt = _pyplot()
    table = [r for r in rows(data) if r["bundle_mb"] is not None and r["p50_s"] is not None]
    fig, ax = plt.subplots(figsize=(9, 6))
    for lib, colour in _colours(table).items():
        mine = [r for r in table if r["library"] == lib]
        ax.scatter([r["bundle_mb"] for r in mine], [r["p50_s"] for r in mine], color=colour, label=lib, zorder=3)
        for r in mine:
            ax.annotate(r["name"], (r["bundle_mb"], r["p50_s"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_title(f"p50 latency per utterance vs bundle size: {_model_name(data)} on {labels(data)[0]}")
    ax.set_xlabel("bundle size (MB)")
    ax.set_ylabel("p50 latency (s)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths = _save(fig, folder, "latency_vs_size")
    plt.close(fig)
    return paths


def _model_name(data: dict) -> str:
    return data["model"].rstrip("/").rsplit("/", 1)[-1]


def _mixed(row: dict) -> bool:
    return "overrides" in str(row.get("bits_label"))


def _file_label(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def all_plots(data: dict, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for label in labels(data):
        out += wer_vs_size(data, label, folder)
    return out + latency_vs_size(data, folder)
