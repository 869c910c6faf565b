"""Running a sweep: build each recipe once, bench it on each dataset condition, skip cached cells."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgeq import __version__
from edgeq.errors import EdgeqError, RecipeError
from edgeq.spec.recipe import Recipe
from edgeq.sweep.plan import BASELINE, Condition, SweepSettings, conditions, recipe_hash, select_recipes
from edgeq.sweep.store import Store, finished_summary, model_key
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


@dataclass
class SweepResult:
    model: str
    model_hash: str
    folder: Path  # the version/model folder the cells live in
    recipes: list[dict]  # one description per recipe (library, scheme, method, ...), baseline first
    conditions: list[dict]  # label, dataset, snr_db, ...
    cells: list[Cell]
    built: list[str] = field(default_factory=list)
    measured: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # one line each, for the user
    files: dict[str, Path] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "edgeq_version": __version__, "model": self.model, "model_hash": self.model_hash,
            "folder": str(self.folder), "recipes": self.recipes, "conditions": self.conditions,
            "cells": [{"recipe": c.recipe, "condition": c.condition, "summary": c.summary, "failed": c.failed}
                      for c in self.cells],
            "baseline": BASELINE,
        }


def run_sweep(settings: SweepSettings, progress: Progress | None = None) -> SweepResult:
    """Build and bench every selected recipe on every dataset condition; write the table, plots and report."""
    progress = progress or (lambda stage, done, total: None)
    recipes = select_recipes(settings.recipes, settings.skip_float16)
    conds = conditions(settings)
    _preflight(recipes, conds, settings)
    progress("hashing model weights", 0, 1)
    name, digest = model_key(settings.model)
    store = Store(settings.out, name, digest)
    result = SweepResult(settings.model, digest, store.root, [describe(r) for r in recipes],
                         [{"label": c.label, **c.key_fields()} for c in conds], [])
    for old in store.other_versions():
        result.notes.append(f"{old}: results of {old.name.replace('-', ' ', 1)}, kept apart (this is edgeq "
                            f"{__version__}; delete the folder to reclaim the space)")
    for recipe in recipes:
        result.cells += _run_recipe(recipe, conds, settings, store, result, progress)
    for info in result.recipes:
        info.update(_bundle_facts(store.bundle(_by_name(recipes, info["name"]))))
    from edgeq.sweep.views import write_views

    result.files = write_views(result, settings.out)
    return result


def _by_name(recipes: list[Recipe], name: str) -> Recipe:
    return next(r for r in recipes if r.name == name)


def _preflight(recipes: list[Recipe], conds: list[Condition], settings: SweepSettings) -> None:
    """Fail in one line before the first build: a missing dataset, calibration, noise source."""
    from edgeq.data.datasets import open_dataset
    from edgeq.spec.catalogue import backend_spec

    for c in {c.dataset for c in conds}:
        open_dataset(c, limit=settings.limit)
    if settings.calibration is None:
        static = [r.name for r in recipes if backend_spec(r.backend).needs_calibration(r.scheme)
                  and not (r.calibration and r.calibration.dataset)]
        if static:
            raise RecipeError(f"recipes {', '.join(static)} calibrate on real audio: pass --calibration DATASET "
                              "(not the test set), or leave them out of --recipes")
    if any(c.snr_db is not None for c in conds):
        from edgeq.bench.noise import check_noise_source

        check_noise_source(settings.noise_source)


def _run_recipe(recipe: Recipe, conds: list[Condition], settings: SweepSettings, store: Store,
                result: SweepResult, progress: Progress) -> list[Cell]:
    from edgeq.format.bundle import is_bundle

    bundle = store.bundle(recipe)
    todo = [c for c in conds if finished_summary(store.bench(recipe, c)) is None]
    cells = {c.label: Cell(recipe.name, c.label, finished_summary(store.bench(recipe, c)), cached=True)
             for c in conds if c not in todo}
    if todo and not is_bundle(bundle):
        from edgeq.builder.pipeline import build

        store.clear_staging(recipe)
        try:
            build(recipe, model=settings.model, out=bundle, calibration=settings.calibration,
                  language=settings.language, force=True, progress=progress)
        except EdgeqError as err:
            # One recipe that cannot be built (a library missing here) must not stop the grid.
            return [Cell(recipe.name, c.label, failed=f"build: {one_line(err)}") for c in conds]
        result.built.append(recipe.name)
    for c in todo:
        cells[c.label] = _bench(recipe, bundle, c, store.bench(recipe, c), progress)
        result.measured.append(f"{recipe.name} on {c.label}")
    return [cells[c.label] for c in conds]


def _bench(recipe: Recipe, bundle: Path, c: Condition, out: Path, progress: Progress) -> Cell:
    from edgeq.bench.runner import BenchSettings, System, run_bench

    noise = {} if c.snr_db is None else {"noise_snr_db": c.snr_db, "noise_source": c.noise_source}
    settings = BenchSettings(dataset=c.dataset, out=out, limit=c.limit, device=c.device, threads=c.threads,
                             warmup=c.warmup, resume=True, language=c.language, **noise)
    label = f"bench {recipe.name} on {c.label}"
    (summary,) = run_bench([System("bundle", str(bundle), recipe.name)], settings,
                           progress=lambda _name, done, total: progress(label, done, total))
    if "failed" in summary:
        return Cell(recipe.name, c.label, failed=summary["failed"])
    return Cell(recipe.name, c.label, summary)


METHODS = {
    # backend -> (weight format -> method); "*" for any format. The study's "method" is how the
    # library turns float weights into integers, which is what separates recipes of equal bits.
    "float": {"*": "none (float)"},
    "torch": {"*": "min-max observers (torch.ao)"},
    "quanto": {"*": "absmax (quanto)"},
    "hqq": {"*": "half-quadratic (HQQ)"},
    "bnb": {"int8": "LLM.int8() outliers", "nf4": "NF4 blockwise", "fp4": "FP4 blockwise"},
    "onnx": {"int4": "block RTN (MatMulNBits)", "*": "min-max (ORT quantizer)"},
}


def describe(recipe: Recipe) -> dict:
    from edgeq.spec.catalogue import BACKENDS

    methods = METHODS[recipe.backend]
    overrides = recipe.modules.overrides
    bits = recipe.weights.bits
    label = f"{bits}" + (f"+{len(overrides)} overrides" if overrides else "")
    return {
        "name": recipe.name, "recipe_hash": recipe_hash(recipe), "library": BACKENDS[recipe.backend].library,
        "backend": recipe.backend, "scheme": recipe.scheme,
        "method": methods.get(recipe.weights.format, methods.get("*", recipe.backend)),
        "granularity": recipe.granularity_label, "format": recipe.weights.format, "bits": bits,
        "bits_label": label, "description": recipe.description, "devices": list(recipe.devices),
        "runtime": recipe.runtime,
    }


def _bundle_facts(bundle: Path) -> dict:
    try:
        size = json.loads((bundle / "manifest.json").read_text())["size"]
    except (OSError, ValueError, KeyError):
        return {"bundle_mb": None, "reduction_pct": None}
    return {"bundle_mb": size["bundle_bytes"] / 1e6, "reduction_pct": size.get("reduction_pct")}
