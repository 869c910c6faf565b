"""Where a sweep keeps its cells: one folder per edgeq version, model, recipe and dataset condition.

    OUT/edgeq-0.1.0/whisper-base-3f2a.../onnx-int4-9c1b.../bundle/           the built bundle
    OUT/edgeq-0.1.0/whisper-base-3f2a.../onnx-int4-9c1b.../bench/KEY/        `edgeq bench` output

The path is the cache key: (edgeq version, model weights hash, resolved recipe hash, condition hash).
Results of another edgeq version live under their own `edgeq-X` folder and are never read.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from edgeq import __version__
from edgeq.spec.recipe import Recipe
from edgeq.sweep.plan import Condition, recipe_hash, short_hash

VERSION_PREFIX = "edgeq-"


class Store:
    def __init__(self, out: Path, model_name: str, model_hash: str, version: str = __version__):
        self.out = out
        self.version = version
        self.root = out / f"{VERSION_PREFIX}{version}" / f"{model_name}-{model_hash[:12]}"

    def cell(self, recipe: Recipe) -> Path:
        return self.root / f"{recipe.name}-{recipe_hash(recipe)}"

    def bundle(self, recipe: Recipe) -> Path:
        return self.cell(recipe) / "bundle"

    def bench(self, recipe: Recipe, condition: Condition) -> Path:
        return self.cell(recipe) / "bench" / condition.key

    def other_versions(self) -> list[Path]:
        if not self.out.is_dir():
            return []
        return sorted(p for p in self.out.glob(f"{VERSION_PREFIX}*")
                      if p.is_dir() and p.name != f"{VERSION_PREFIX}{self.version}")


def clear_staging(cell: Path) -> None:
    """A build killed with SIGKILL leaves its staging folder (write_bundle cleans up on exceptions
    only); it is ours, half-written, and only wastes disk."""
    for stale in cell.glob(".bundle.edgeq-*"):
        shutil.rmtree(stale, ignore_errors=True)


def finished_summary(bench_dir: Path) -> dict | None:
    """The bench summary of a finished cell, or None when it is missing, failed or was cut short."""
    try:
        (summary,) = json.loads((bench_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if "failed" in summary or not summary.get("complete"):
        return None
    return summary


def model_key(model: str) -> tuple[str, str]:
    """(readable name, sha256 of the weights): a fine-tuned checkpoint in the same folder is a new key."""
    from edgeq.builder.source import resolve_source

    source = resolve_source(model)
    name = Path(source.id.rstrip("/")).name or "model"
    return name, source.weights_sha256() or short_hash(source.config)
