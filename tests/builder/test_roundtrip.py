"""Every shipped recipe on a tiny random Whisper: build -> load in a fresh process -> the same
greedy tokens and first-step logits as the quantized model that was never saved."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import PROBE, each
from helpers import outcome as _get

from edgeq.spec.recipe import list_recipes

pytest.importorskip("torch")

import os

# EDGEQ_TEST_RECIPES=a,b narrows the run while working on one backend.
_ONLY = {n for n in os.environ.get("EDGEQ_TEST_RECIPES", "").split(",") if n}
TORCH_RECIPES = [r.name for r in list_recipes() if r.runtime == "torch" and (not _ONLY or r.name in _ONLY)]


@pytest.fixture(scope="module")
def built(tiny_model, audio_dir, calibration_dir, tmp_path_factory):
    """recipe -> (bundle path, in-memory probe)."""
    from probe import in_memory

    import edgeq
    from edgeq.builder.calibration import prepare_calibration
    from edgeq.builder.source import load_float_model, resolve_source
    from edgeq.runtime.decoding import DecodeSettings
    from edgeq.spec.recipe import as_recipe

    root = tmp_path_factory.mktemp("bundles")
    source = resolve_source(str(tiny_model))
    settings = DecodeSettings.from_configs(json.loads((tiny_model / "generation_config.json").read_text()),
                                           source.config, "en")
    audio = str(audio_dir / "a_16k.wav")

    def one(name):
        recipe = as_recipe(name)
        calib = str(calibration_dir) if recipe.scheme == "static" else None
        bundle = edgeq.build(recipe, model=str(tiny_model), out=root / name, calibration=calib, language="en")
        model = load_float_model(source)
        cal = (prepare_calibration(calib, recipe.calibration.samples, settings, 80, reference_model=model)
               if calib else None)
        edgeq.quantize(model, recipe, cal)
        return bundle, in_memory(model, tiny_model, audio)

    return each(TORCH_RECIPES, one)



@pytest.fixture(scope="module")
def reloaded(built, audio_dir):
    proc = subprocess.run(
        [sys.executable, str(PROBE), str(audio_dir / "a_16k.wav"),
         *[str(v[0].path) for v in built.values() if not isinstance(v, Exception)]],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])["probes"]


@pytest.mark.parametrize("name", TORCH_RECIPES)
def test_bundle_reloads_to_the_same_model(name, built, reloaded):
    bundle, mem = _get(built, name)
    fresh = reloaded[str(bundle.path)]
    assert fresh["tokens"] == mem["tokens"]
    assert len(fresh["tokens"]) > 0
    np.testing.assert_allclose(np.array(fresh["logits"]), np.array(mem["logits"]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", TORCH_RECIPES)
def test_manifest_describes_the_bundle(name, built):
    bundle, _ = _get(built, name)
    m = bundle.manifest.to_dict()
    assert m["recipe"]["name"] == name
    assert m["source"]["weights_sha256"] and len(m["source"]["weights_sha256"]) == 64
    assert m["backend"]["version"]
    assert set(m["files"]) >= {"model.safetensors", "quantization.json", "config.json", "generation_config.json",
                               "tokenizer.json", "recipe.toml"}
    assert m["size"]["bundle_bytes"] == sum(f["size"] for f in m["files"].values())
    assert m["requires"]["extra"]
    # `edgeq info`'s layers line: a torch bundle's, from its recipe
    r = bundle.recipe
    expected = (f"not quantized ({r.weights.format})" if r.scheme == "none" else
                f"{r.scheme} {r.weights.format} {r.granularity_label}; table {r.modules.embeddings}")
    assert bundle.layers_summary().startswith(expected), bundle.layers_summary()
