"""Which Linear layers a recipe quantizes, and with which weight spec.

Every torch-side backend asks this one function, so include/exclude patterns, encoder/decoder
switches and per-module overrides mean the same thing whatever the library.
"""

from __future__ import annotations

import logging
from fnmatch import fnmatchcase

from torch import nn

from edgeq.errors import RecipeError
from edgeq.schema import convert, to_dict
from edgeq.spec.recipe import Recipe, WeightSpec

log = logging.getLogger(__name__)

# proj_out is tied to the token embedding; `modules.embeddings` decides its format, never the plan.
LM_HEAD = "proj_out"


def linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != LM_HEAD]


def quantization_plan(model: nn.Module, recipe: Recipe) -> dict[str, WeightSpec]:
    """Module name -> the weight spec it gets; modules left out stay float."""
    spec = recipe.modules
    names = linear_names(model)
    for kind, patterns in (("include", spec.include), ("exclude", spec.exclude), ("overrides", spec.overrides)):
        for pattern in patterns:
            if not any(fnmatchcase(n, pattern) for n in names):
                log.warning("recipe %s: %s pattern %r matches no Linear layer", recipe.name, kind, pattern)
    plan: dict[str, WeightSpec] = {}
    for name in names:
        if name.startswith("model.encoder.") and not spec.encoder:
            continue
        if name.startswith("model.decoder.") and not spec.decoder:
            continue
        if not any(fnmatchcase(name, p) for p in spec.include):
            continue
        if any(fnmatchcase(name, p) for p in spec.exclude):
            continue
        weights = recipe.weights
        for pattern, override in spec.overrides.items():  # first matching pattern wins
            if fnmatchcase(name, pattern):
                if override.format == "float":
                    weights = None
                else:
                    changes = {k: v for k, v in to_dict(override).items() if v is not None}
                    weights = convert(WeightSpec, {**to_dict(weights), **changes})
                break
        if weights is not None:
            if weights.group_size and model.get_submodule(name).in_features % weights.group_size:
                raise RecipeError(
                    f"recipe {recipe.name}: group size {weights.group_size} does not divide the "
                    f"{model.get_submodule(name).in_features} inputs of {name}"
                )
            plan[name] = weights
    return plan



def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)
