"""The two kinds of work a sweep does, whoever runs them: build a recipe's bundle, bench it on a condition."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgeq.errors import EdgeqError
from edgeq.spec.recipe import Recipe
from edgeq.sweep.plan import Condition, SweepSettings
from edgeq.sweep.store import clear_staging
from edgeq.util import one_line

Progress = Callable[[str, int, int], None]


@dataclass
class Cell:
    """One recipe on one condition: its bench summary, or why there is none."""

    recipe: str
    condition: str
    summary: dict | None = None
    failed: str | None = None
    cached: bool = False


@dataclass(frozen=True)
class RecipeWork:
    """What is missing for one recipe: its bundle (build) and the conditions not yet in the cache."""

    recipe: Recipe
    bundle: Path
    build: bool
    benches: tuple[tuple[Condition, Path], ...]  # (condition, its bench folder)


@dataclass
class RecipeOutcome:
    built: bool = False
    build_failed: str | None = None  # one line; then no cell of the recipe was measured
    cells: dict[str, Cell] = field(default_factory=dict)  # condition label -> measured cell


def build_bundle(recipe: Recipe, bundle: Path, settings: SweepSettings, progress: Progress | None = None) -> str | None:
    """Build `recipe` into `bundle`; a recipe that cannot be built (a library missing there) is a
    failure line, not an exception: it must not stop the grid."""
    from edgeq.builder.pipeline import build

    clear_staging(bundle.parent)
    try:
        build(recipe, model=settings.model, out=bundle, calibration=settings.calibration,
              language=settings.language, force=True, progress=progress or (lambda *_: None))
    except EdgeqError as err:
        return f"build: {one_line(err)}"
    return None


def bench_condition(recipe: str, bundle: Path, c: Condition, out: Path, progress: Progress | None = None,
                    shard: tuple[int, int] | None = None) -> Cell:
    """`edgeq bench` of one bundle on one condition (or one shard of it), resuming what `out` holds."""
    from edgeq.bench.runner import System, run_bench

    settings = bench_settings(c, out, shard)
    label = f"bench {recipe} on {c.label}"
    (summary,) = run_bench([System("bundle", str(bundle), recipe)], settings,
                           progress=progress and (lambda _name, done, total: progress(label, done, total)))
    if "failed" in summary:
        return Cell(recipe, c.label, failed=summary["failed"])
    return Cell(recipe, c.label, summary)


def bench_settings(c: Condition, out: Path, shard: tuple[int, int] | None = None):
    """The `edgeq bench` settings that measure condition `c` into `out`, resuming what is there."""
    from edgeq.bench.runner import BenchSettings

    noise = {} if c.snr_db is None else {"noise_snr_db": c.snr_db, "noise_source": c.noise_source}
    return BenchSettings(dataset=c.dataset, out=out, limit=c.limit, device=c.device, threads=c.threads,
                         warmup=c.warmup, resume=True, language=c.language, shard=shard, **noise)
