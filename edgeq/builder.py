"""`edgeq.build`: source checkpoint + recipe -> bundle."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import platform
import shutil
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgeq import __version__
from edgeq.backends import BACKENDS, library_version, load_backend, require_library
from edgeq.bundle import (
    CONFIG, GENERATION_CONFIG, RECIPE, TOKENIZER, Bundle, check_destination, write_bundle,
)
from edgeq.errors import ModelSourceError, RecipeError
from edgeq.recipe import Recipe, load_recipe, recipe_to_toml
from edgeq.source import DEFAULT_MODEL, SourceModel, load_float_model, resolve_source

log = logging.getLogger(__name__)

# progress(stage, done, total): the CLI draws it; the library never prints.
Progress = Callable[[str, int, int], None]


def _noop(stage: str, done: int, total: int) -> None:
    pass


def as_recipe(recipe: Recipe | str | Path) -> Recipe:
    return recipe if isinstance(recipe, Recipe) else load_recipe(recipe)


def default_out(model: str, recipe: Recipe) -> Path:
    return Path("bundles") / f"{Path(model.rstrip('/')).name}-{recipe.name}"


def fp32_weights_bytes(model) -> int:
    """What the float32 weights of this model take (each tied tensor once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * 4
    return total


def quantize(model, recipe: Recipe | str | Path, calibration=None):
    """Quantize a float transformers Whisper model in place (torch runtime recipes) and return it."""
    import torch

    from edgeq.backends.base import DTYPES
    from edgeq.backends.embedding import quantize_tied_embedding
    from edgeq.backends.plan import quantization_plan

    recipe = as_recipe(recipe)
    if recipe.runtime != "torch":
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


def build(
    recipe: Recipe | str | Path,
    model: str = DEFAULT_MODEL,
    out: str | Path | None = None,
    calibration: str | None = None,
    language: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> Bundle:
    """Load `model`, apply `recipe`, and write a self-contained bundle to `out`."""
    progress = progress or _noop
    started = time.perf_counter()
    recipe = as_recipe(recipe)
    spec = BACKENDS[recipe.backend]
    require_library(spec, f"recipe {recipe.name}")
    if spec.runtime == "torch":
        require_library(BACKENDS["float"], f"recipe {recipe.name}")
    out = Path(out) if out else default_out(model, recipe)
    check_destination(out.expanduser().resolve(), force)  # fail before the slow part
    calibration_spec = calibration or (recipe.calibration.dataset if recipe.calibration else None)
    if recipe.scheme == "static" and not calibration_spec:
        raise RecipeError(
            f"recipe {recipe.name} calibrates activations on real audio: pass --calibration DATASET "
            "(a LibriSpeech folder, a manifest or a folder of audio files)"
        )

    progress("resolving model", 0, 1)
    source = resolve_source(model)
    progress("loading model", 0, 1)
    float_model = load_float_model(source)
    reference_bytes = fp32_weights_bytes(float_model)
    settings = _decode_settings(source, language)
    calib = None
    if recipe.scheme == "static":
        from edgeq.calibration import prepare_calibration

        calib = prepare_calibration(
            calibration_spec, recipe.calibration.samples, settings,
            int(source.config.get("num_mel_bins", 80)), progress,
            reference_model=float_model if spec.runtime == "torch" else None,
        )

    def populate(folder: Path) -> dict[str, Any]:
        if spec.runtime == "torch":
            from edgeq.torch_bundle import save_model

            progress("quantizing", 0, 1)
            quantize(float_model, recipe, calib)
            progress("writing", 0, 1)
            save_model(float_model, recipe, folder)
        else:
            backend = load_backend(recipe.backend)
            backend.export_bundle(float_model, recipe, calib, folder, progress)
        _write_common_files(source, recipe, folder)
        return _manifest(source, recipe, reference_bytes, language, started)

    bundle = write_bundle(out, populate, force=force)
    log.info("built %s in %.1f s", bundle.path, time.perf_counter() - started)
    return bundle


def _decode_settings(source: SourceModel, language: str | None):
    from edgeq.decoding import DecodeSettings

    generation = _generation_config(source)
    return DecodeSettings.from_configs(generation, source.config, language)


def _generation_config(source: SourceModel) -> dict:
    path = source.path / GENERATION_CONFIG
    if not path.is_file():
        raise ModelSourceError(f"{source.id}: no generation_config.json (Whisper's prompt token ids live there)")
    generation = json.loads(path.read_text())
    if "decoder_start_token_id" not in generation or "eos_token_id" not in generation:
        raise ModelSourceError(f"{source.id}: generation_config.json lacks decoder_start_token_id/eos_token_id")
    return generation


def _write_common_files(source: SourceModel, recipe: Recipe, folder: Path) -> None:
    from transformers import WhisperFeatureExtractor, WhisperTokenizerFast

    config = dict(source.config)
    config["dtype"] = recipe.dtype if recipe.backend != "float" else recipe.weights.format
    (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    shutil.copyfile(source.path / GENERATION_CONFIG, folder / GENERATION_CONFIG)
    try:
        WhisperTokenizerFast.from_pretrained(source.path).save_pretrained(folder)
        WhisperFeatureExtractor.from_pretrained(source.path).save_pretrained(folder)
    except (OSError, ValueError) as err:
        raise ModelSourceError(f"{source.id}: cannot read its tokenizer/feature extractor ({err})") from None
    if not (folder / TOKENIZER).is_file():
        raise ModelSourceError(f"{source.id}: its tokenizer could not be saved as tokenizer.json")
    (folder / RECIPE).write_text(recipe_to_toml(recipe))


def _versions(names: list[str]) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _manifest(source: SourceModel, recipe: Recipe, reference_bytes: int, language: str | None,
              started: float) -> dict[str, Any]:
    spec = BACKENDS[recipe.backend]
    runtime_libs = ["onnxruntime", "numpy", "tokenizers"] if spec.runtime == "onnxruntime" else [
        "torch", "transformers", "safetensors", "numpy", "tokenizers"
    ]
    if spec.runtime == "torch" and spec.library != "torch":
        runtime_libs.append(spec.library)
    versions = _versions(runtime_libs)
    return {
        "edgeq_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "runtime": spec.runtime,
        "source": {
            "model": source.id,
            "revision": source.revision,
            "weights_sha256": source.weights_sha256(),
        },
        "recipe": recipe.to_dict(),
        "backend": {"name": recipe.backend, "library": spec.library, "version": library_version(spec)},
        "requires": {
            "extra": "runtime" if spec.runtime == "onnxruntime" else spec.extra,
            "packages": {name: versions[name] for name in runtime_libs if name in versions},
            "devices": recipe.devices,
        },
        "decoding": {"language": language, "task": "transcribe"},
        "build": {
            "seconds": round(time.perf_counter() - started, 2),
            "host": {"machine": platform.machine(), "python": platform.python_version()},
            "libraries": _versions(["torch", "transformers", spec.library]),
        },
        "size": {"reference_fp32_weights_bytes": reference_bytes},
    }
