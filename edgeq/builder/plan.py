"""Which Linear layers a recipe quantizes, and with which weight spec.

Every torch-side backend asks this one function, so include/exclude patterns, encoder/decoder
switches and per-module overrides mean the same thing whatever the library.
"""

from __future__ import annotations

import logging
import re
from fnmatch import fnmatchcase

from torch import nn

from edgeq.errors import RecipeError
from edgeq.schema import convert, to_dict
from edgeq.spec.recipe import Recipe, WeightSpec

log = logging.getLogger(__name__)

# proj_out is tied to the token embedding; `modules.embeddings` decides its format, never the plan.
LM_HEAD = "proj_out"
# "model.decoder.layers.-1.fc*": a layer counted from the end of its stack, so that one recipe
# means the same layer in every Whisper size (the last decoder layer is 3 in tiny, 5 in base, 11 in small).
_FROM_END = re.compile(r"^(?P<stack>.*?\.layers)\.-(?P<k>[0-9]+)(?=\.|$)")
_LAYER = re.compile(r"^(?P<stack>.*?\.layers)\.(?P<i>[0-9]+)\.")


def resolve_from_end(pattern: str, names: list[str]) -> str:
    """`pattern` with a negative layer index (`...layers.-1...`) replaced by the index it names in
    `names`; unchanged when it has none, or when the stack has fewer layers (it then matches nothing,
    which quantization_plan warns about)."""
    found = _FROM_END.match(pattern)
    if not found:
        return pattern
    stack, k = found["stack"], int(found["k"])
    indices = [int(m["i"]) for m in map(_LAYER.match, names) if m and fnmatchcase(m["stack"], stack)]
    if not k or not indices or k > max(indices) + 1:
        return pattern
    return f"{stack}.{max(indices) + 1 - k}{pattern[found.end():]}"


def linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != LM_HEAD]


def quantization_plan(model: nn.Module, recipe: Recipe) -> dict[str, WeightSpec]:
    """Module name -> the weight spec it gets; modules left out stay float."""
    spec = recipe.modules
    names = linear_names(model)
    include = [resolve_from_end(p, names) for p in spec.include]
    exclude = [resolve_from_end(p, names) for p in spec.exclude]
    # Pairs, not a dict: "layers.-1.fc1" and "layers.5.fc1" resolve alike on whisper-base, and the
    # first of them must still win.
    overrides = [(resolve_from_end(p, names), o) for p, o in spec.overrides.items()]
    for kind, patterns in (("include", include), ("exclude", exclude), ("overrides", [p for p, _ in overrides])):
        for pattern in patterns:
            if not any(fnmatchcase(n, pattern) for n in names):
                log.warning("recipe %s: %s pattern %r matches no Linear layer", recipe.name, kind, pattern)
    plan: dict[str, WeightSpec] = {}
    for name in names:
        if name.startswith("model.encoder.") and not spec.encoder:
            continue
        if name.startswith("model.decoder.") and not spec.decoder:
            continue
        if not any(fnmatchcase(name, p) for p in include):
            continue
        if any(fnmatchcase(name, p) for p in exclude):
            continue
        weights = recipe.weights
        for pattern, override in overrides:  # first matching pattern wins
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
