"""`edgeq.build`: source checkpoint + recipe -> bundle."""

from __future__ import annotations

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
from edgeq.builder.source import DEFAULT_MODEL, SourceModel, load_float_model, resolve_source
from edgeq.errors import ModelSourceError, RecipeError
from edgeq.format.bundle import (
    CONFIG,
    DECODE_TABLE,
    GENERATION_CONFIG,
    RECIPE,
    TOKENIZER,
    Bundle,
    check_destination,
    is_weights_file,
    write_bundle,
)
from edgeq.runtime.tokenizer import write_decode_table
from edgeq.spec.catalogue import backend_spec, library_version, load_writer
from edgeq.spec.recipe import Recipe, as_recipe, recipe_to_toml
from edgeq.spec.targets import Target, check_memory, check_recipe, expected_peak_mb, load_target
from edgeq.util import installed_versions, read_json, safe_name

log = logging.getLogger(__name__)

# progress(stage, done, total): the CLI draws it; the library never prints.
Progress = Callable[[str, int, int], None]


def _noop(stage: str, done: int, total: int) -> None:
    pass


def default_out(model: str, recipe: Recipe) -> Path:
    # One folder inside bundles/, whatever the model id or recipe name holds ('/', '..', '[...]').
    return Path("bundles") / safe_name(f"{Path(model.rstrip('/')).name}-{recipe.name}", "bundle")


def fp32_weights_bytes(model) -> int:
    """What the float32 weights of this model take (each tied tensor once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * 4
    return total


def build(
    recipe: Recipe | str | Path,
    model: str = DEFAULT_MODEL,
    out: str | Path | None = None,
    calibration: str | None = None,
    language: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
    target: Target | str | None = None,
) -> Bundle:
    """Load `model`, apply `recipe`, and write a self-contained bundle to `out`.

    With `target`, refuse (TargetError, before the bundle is swapped in) a recipe the target
    cannot run: its device kind, PyTorch engine, or the bundle's expected peak memory.
    """
    progress = progress or _noop
    started = time.perf_counter()
    recipe = as_recipe(recipe).resolved()  # the bundle records every option, defaults too
    spec = backend_spec(recipe.backend)
    if target is not None:
        target = load_target(target) if isinstance(target, str) else target
        check_recipe(target, recipe)
    out = Path(out) if out else default_out(model, recipe)
    check_destination(out.expanduser().resolve(), force)  # fail before the slow part (and torch's import)
    writer = load_writer(spec, f"recipe {recipe.name}")
    calibration_spec = calibration or (recipe.calibration.dataset if recipe.calibration else None)
    if spec.needs_calibration(recipe.scheme) and not calibration_spec:
        raise RecipeError(
            f"recipe {recipe.name} calibrates activations on real audio: pass --calibration DATASET "
            "(a LibriSpeech folder, a manifest or a folder of audio files)"
        )

    progress("resolving model", 0, 1)
    source = resolve_source(model)
    progress("loading model", 0, 1)
    float_model = load_float_model(source)
    reference_bytes = fp32_weights_bytes(float_model)
    if target is not None:
        # Every weight at the recipe's bits is less than any bundle of it holds: if even that
        # does not fit, say so now rather than after quantizing.
        lower = expected_peak_mb(spec.runtime, reference_bytes * recipe.weights.bits // 32)
        check_memory(target, f"recipe {recipe.name}", lower)
    settings = _decode_settings(source, language)
    calibration_audio = None
    if spec.needs_calibration(recipe.scheme):
        from edgeq.builder.calibration import prepare_calibration

        teacher = float_model if spec.runtime_spec.teacher_forced_calibration else None
        calibration_audio = prepare_calibration(
            calibration_spec, recipe.calibration.samples, settings,
            int(source.config.get("num_mel_bins", 80)), progress, reference_model=teacher,
        )

    def populate(folder: Path) -> dict[str, Any]:
        writer.write(float_model, recipe, calibration_audio, folder, progress)
        if target is not None:
            weights = sum(f.stat().st_size for f in folder.iterdir() if is_weights_file(f.name))
            check_memory(target, f"recipe {recipe.name}", expected_peak_mb(spec.runtime, weights))
        _write_common_files(source, recipe, folder)
        return _manifest(source, recipe, reference_bytes, language, started)

    bundle = write_bundle(out, populate, force=force)
    log.info("built %s in %.1f s", bundle.path, time.perf_counter() - started)
    return bundle


def _decode_settings(source: SourceModel, language: str | None):
    from edgeq.runtime.decoding import DecodeSettings

    generation = _generation_config(source)
    return DecodeSettings.from_configs(generation, source.config, language, where=str(source.path))


def _generation_config(source: SourceModel) -> dict:
    path = source.path / GENERATION_CONFIG
    if not path.is_file():
        raise ModelSourceError(f"{source.id}: no generation_config.json (Whisper's prompt token ids live there)")
    generation = read_json(path, ModelSourceError)
    if not isinstance(generation, dict) or "decoder_start_token_id" not in generation or "eos_token_id" not in generation:
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
    write_decode_table(folder / TOKENIZER, folder / DECODE_TABLE)
    (folder / RECIPE).write_text(recipe_to_toml(recipe))


def _manifest(source: SourceModel, recipe: Recipe, reference_bytes: int, language: str | None,
              started: float) -> dict[str, Any]:
    spec = backend_spec(recipe.backend)
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
            "extra": spec.device_extra,
            "packages": installed_versions(spec.device_packages),
            "devices": recipe.devices,
        },
        "decoding": {"language": language, "task": "transcribe"},
        "build": {
            "seconds": round(time.perf_counter() - started, 2),
            "host": {"machine": platform.machine(), "python": platform.python_version()},
            "libraries": installed_versions(["torch", "transformers", spec.library]),
        },
        "size": {"reference_fp32_weights_bytes": reference_bytes},
    }
