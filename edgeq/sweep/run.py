"""Running a sweep: build each recipe once, bench it on each dataset condition, skip cached cells."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from edgeq import __version__
from edgeq.errors import RecipeError
from edgeq.spec.recipe import Recipe
from edgeq.sweep.executors import Executor, LocalExecutor
from edgeq.sweep.plan import BASELINE, Condition, SweepSettings, conditions, recipe_hash, select_recipes
from edgeq.sweep.store import Store, finished_summary, model_key
from edgeq.sweep.work import Cell, Progress, RecipeOutcome, RecipeWork

__all__ = ["Cell", "SweepResult", "run_sweep", "describe"]


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


def run_sweep(settings: SweepSettings, progress: Progress | None = None,
              executor: Executor | None = None) -> SweepResult:
    """Build and bench every selected recipe on every dataset condition (what the cache lacks, run
    by `executor`: this process by default); write the table, plots and report."""
    progress = progress or (lambda stage, done, total: None)
    executor = executor or LocalExecutor()
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
    work = [_missing(r, conds, store) for r in recipes]
    todo = [w for w in work if w.benches]
    outcomes = dict(zip((w.recipe.name for w in todo), executor.run(todo, settings, progress)))
    for recipe in recipes:
        result.cells += _cells(recipe, conds, store, outcomes.get(recipe.name, RecipeOutcome()), result)
    result.notes += executor.notes
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


def _missing(recipe: Recipe, conds: list[Condition], store: Store) -> RecipeWork:
    """What the cache lacks for `recipe`: the conditions without a finished bench, and the bundle if
    one of them needs it."""
    from edgeq.format.bundle import is_bundle

    todo = tuple((c, store.bench(recipe, c)) for c in conds if finished_summary(store.bench(recipe, c)) is None)
    bundle = store.bundle(recipe)
    return RecipeWork(recipe, bundle, bool(todo) and not is_bundle(bundle), todo)


def _cells(recipe: Recipe, conds: list[Condition], store: Store, outcome: RecipeOutcome,
           result: SweepResult) -> list[Cell]:
    if outcome.build_failed:
        return [Cell(recipe.name, c.label, failed=outcome.build_failed) for c in conds]
    if outcome.built:
        result.built.append(recipe.name)
    cells = []
    for c in conds:
        if c.label in outcome.cells:
            cells.append(outcome.cells[c.label])
            result.measured.append(f"{recipe.name} on {c.label}")
        else:
            cells.append(Cell(recipe.name, c.label, finished_summary(store.bench(recipe, c)), cached=True))
    return cells


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
