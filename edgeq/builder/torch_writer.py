"""Writing a torch-runtime bundle: quantize the float model in place with the recipe's backend,
then save it (safetensors + quantization.json, see `edgeq.torch_runtime`)."""

from __future__ import annotations

from pathlib import Path

import torch

from edgeq.backends.base import DTYPES
from edgeq.backends.embedding import quantize_tied_embedding
from edgeq.builder.plan import quantization_plan
from edgeq.errors import RecipeError
from edgeq.spec.catalogue import backend_spec, load_backend
from edgeq.spec.recipe import Recipe, as_recipe
from edgeq.torch_runtime import save_model


def quantize(model, recipe: Recipe | str | Path, calibration=None):
    """Quantize a float transformers Whisper model in place (torch runtime recipes) and return it."""
    recipe = as_recipe(recipe)
    if backend_spec(recipe.backend).runtime != "torch":
        raise RecipeError(f"recipe {recipe.name} exports to ONNX; use edgeq.build for it")
    backend = load_backend(recipe.backend)
    if recipe.scheme == "static" and calibration is None:
        raise RecipeError(f"recipe {recipe.name} is static: it needs calibration audio")
    plan = quantization_plan(model, recipe)
    if recipe.backend != "float":
        model.to(DTYPES[recipe.dtype])
    with torch.no_grad():
        backend.quantize(model, recipe, plan, calibration)
        if recipe.modules.embeddings == "int8":
            quantize_tied_embedding(model, DTYPES[recipe.dtype])
    model.eval()
    return model




def write(model, recipe: Recipe, calibration, folder: Path, progress) -> None:
    """The `BundleWriter` of the torch runtime (catalogue.RUNTIMES["torch"].writer)."""
    progress("quantizing", 0, 1)
    quantize(model, recipe, calibration)
    progress("writing", 0, 1)
    save_model(model, recipe, folder)
