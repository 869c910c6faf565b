"""Saving a quantized PyTorch Whisper into a bundle and rebuilding it from the bundle alone.

The weights go into one safetensors file (never pickle) and the backend's rebuild metadata into
quantization.json. Loading builds the model from config.json on the meta device (no memory, no
random init), lets the backend rebuild its quantized modules, then assigns every remaining
tensor; a tensor the model expects but the file lacks is an error, not a silent random weight.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from edgeq.backends import load_backend
from edgeq.backends.base import DTYPES, state_tensors
from edgeq.backends.embedding import int8_embedding_skeleton
from edgeq.bundle import CONFIG, QUANTIZATION, WEIGHTS, Bundle
from edgeq.errors import BundleError
from edgeq.recipe import Recipe

TIES = {"proj_out.weight": "model.decoder.embed_tokens.weight"}


def save_model(model: torch.nn.Module, recipe: Recipe, folder: Path) -> None:
    backend = load_backend(recipe.backend)
    tensors, meta = backend.export(model, recipe)
    tensors = state_tensors(model, tensors, handled=list(meta.get("layers", {})))
    for alias, target in TIES.items():
        if alias in tensors and target in tensors and tensors[alias].data_ptr() == tensors[target].data_ptr():
            del tensors[alias]
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": "pt", "producer": "edgeq"})
    (folder / QUANTIZATION).write_text(json.dumps({"backend": recipe.backend, **meta}, indent=1) + "\n")


def load_model(bundle: Bundle, device: str = "cpu") -> torch.nn.Module:
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    recipe = Recipe.model_validate(bundle.recipe)
    backend = load_backend(recipe.backend)
    config = WhisperConfig.from_json_file(str(bundle.file(CONFIG)))
    dev = torch.device(device)
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    model.eval()
    if recipe.modules.embeddings == "int8":
        int8_embedding_skeleton(model, DTYPES[recipe.dtype], dev)
    tensors = load_file(str(bundle.file(WEIGHTS)), device=str(dev))
    meta = json.loads(bundle.file(QUANTIZATION).read_text())
    # Float tensors first: torch.ao's quantized Linear reads its own keys unconditionally in
    # _load_from_state_dict, so the quantized modules must not exist yet when this runs.
    prefixes = tuple(f"{name}." for name in meta.get("layers", {}))
    rest = {k: v for k, v in tensors.items() if not k.startswith(prefixes)}
    _, unexpected = model.load_state_dict(rest, strict=False, assign=True)
    if unexpected:
        raise BundleError(f"{bundle.path}: {WEIGHTS} holds tensors the model does not use: {unexpected[:3]}")
    backend.restore(model, tensors, meta, recipe, dev)
    if recipe.modules.embeddings != "int8" and "proj_out.weight" not in rest:
        model.proj_out.weight = model.model.decoder.embed_tokens.weight
    leftover = [n for n, t in _named_tensors(model) if t.device.type == "meta"]
    if leftover:
        raise BundleError(f"{bundle.path}: {WEIGHTS} lacks {len(leftover)} tensors, e.g. {leftover[:3]}")
    return model


def _named_tensors(model: torch.nn.Module):
    yield from model.named_parameters()
    yield from model.named_buffers()
