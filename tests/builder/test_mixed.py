"""Mixed precision (`--recipe auto --max-size`): the size model matches what HQQ stores, the greedy
allocation spends bits where the scan says they matter, and the auto bundle fits its budget and
replays from its own recipe.toml. Tiny random model, generated audio."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_one_line_error, edgeq, tone

from edgeq.builder.mixed import CANDIDATE_BITS, GROUP, Scan, allocate, auto_recipe, fake_quantize, module_bytes


def test_fake_quantize_error_falls_with_bits():
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    errors = [float((fake_quantize(w, b) - w).pow(2).mean()) for b in (2, 3, 4, 8)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-4
    assert len(torch.unique(fake_quantize(w, 2)[0, :GROUP])) <= 4  # 2 bits: at most 4 levels per group


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_size_model_is_what_hqq_stores(bits):
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

    linear = torch.nn.Linear(256, 128, bias=False)
    q = HQQLinear(linear, BaseQuantizeConfig(nbits=bits, group_size=GROUP, axis=1), compute_dtype=torch.float32,
                  device="cpu")
    stored = sum(t.numel() * t.element_size() for t in (q.W_q, q.meta["scale"], q.meta["zero"]))
    assert module_bytes((128, 256), bits) == stored


def test_allocation_lowers_the_insensitive_module_first():
    shapes = {"a": (64, 256), "b": (64, 256)}
    kl = {"a": {8: 0.0, 4: 0.01, 3: 0.02, 2: 0.05}, "b": {8: 0.0, 4: 0.5, 3: 1.0, 2: 3.0}}
    full = sum(module_bytes(s, 8) for s in shapes.values())
    bits = allocate(Scan(kl, shapes), full - 1)
    assert bits == {"a": 4, "b": 8}
    bits = allocate(Scan(kl, shapes), module_bytes(shapes["a"], 2) + module_bytes(shapes["b"], 4))
    assert bits == {"a": 2, "b": 4}
    with pytest.raises(Exception, match="raise --max-size"):
        allocate(Scan(kl, shapes), 2 * module_bytes(shapes["a"], 2) - 1)


def test_auto_recipe_is_an_ordinary_recipe_with_overrides():
    r = auto_recipe({"model.encoder.layers.0.fc1": 2, "model.decoder.layers.0.fc2": 4, "x.y": 4}, 45)
    assert r.name == "auto-45MB" and r.backend == "hqq" and r.weights.format == "int4"
    assert dict(r.modules.overrides) and set(r.modules.overrides) == {"model.encoder.layers.0.fc1"}
    assert r.modules.overrides["model.encoder.layers.0.fc1"].format == "int2"
    assert set(CANDIDATE_BITS) >= {2, 4, 8}


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    import soundfile as sf

    d = tmp_path_factory.mktemp("mixed-calib")
    for i in range(2):
        sf.write(d / f"c{i}.wav", tone(1.5, freq=180 + 90 * i), 16000)
    return d


def test_auto_bundle_fits_and_replays(tiny_model, calibration, tmp_path):
    import edgeq as lib
    from edgeq.builder.mixed import build_auto

    sizes = {}
    for name in ("hqq-int2-g64", "hqq-int8-g64"):
        sizes[name] = lib.build(name, model=str(tiny_model), out=tmp_path / name).manifest.size.bundle_bytes
    budget_mb = (sizes["hqq-int2-g64"] + sizes["hqq-int8-g64"]) / 2 / 1e6
    bundle, scan = build_auto(str(tiny_model), budget_mb, str(calibration), out=tmp_path / "auto")
    size = bundle.manifest.size.bundle_bytes
    assert sizes["hqq-int2-g64"] < size <= budget_mb * 1e6
    overrides = bundle.manifest.recipe.modules.overrides
    assert overrides, "a budget between all-2 and all-8 bits must mix widths"
    assert len({o.format for o in overrides.values()} | {bundle.manifest.recipe.weights.format}) >= 2
    assert all(v[8] == 0.0 and v[2] >= 0.0 for v in scan.kl.values())
    # Replayable: the bundle's own recipe.toml builds a bundle of the same size.
    again = lib.build(bundle.path / "recipe.toml", model=str(tiny_model), out=tmp_path / "replay")
    assert again.manifest.size.bundle_bytes == size
    assert lib.load(again.path).transcribe(tone(1.0)).text is not None


def test_auto_needs_max_size_and_calibration(tiny_model, tmp_path):
    assert_one_line_error(edgeq("build", "--recipe", "auto", "-m", tiny_model, "-o", tmp_path / "a"), r"--max-size")
    assert_one_line_error(edgeq("build", "--recipe", "auto", "--max-size", "1", "-m", tiny_model, "-o", tmp_path / "a"),
                          r"pass --calibration DATASET")
    # Below what every Linear at 2 bits plus the float/embedding rest needs: refused before the scan.
    assert_one_line_error(edgeq("build", "--recipe", "auto", "--max-size", "0.1", "-m", tiny_model, "--calibration",
                                tmp_path, "-o", tmp_path / "a"), r"--max-size 0.1: .* needs at least [0-9.]+ MB")
