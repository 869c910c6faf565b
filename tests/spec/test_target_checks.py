"""`--target` checks what the README promises: device kind, PyTorch engine, peak memory."""

from __future__ import annotations

import pytest

from edgeq.errors import TargetError
from edgeq.spec.recipe import apply_overrides, load_recipe
from edgeq.spec.targets import MEASURED, check_memory, check_recipe, expected_peak_mb, load_target


def test_an_x86_engine_is_refused_on_arm():
    recipe = apply_overrides(load_recipe("pytorch-int8-dynamic"), ["options.engine=x86"])
    with pytest.raises(TargetError, match=r"x86 engine, which runs on x86_64 only; target rpi4 is arm64"):
        check_recipe(load_target("rpi4"), recipe)
    check_recipe(load_target("x86-avx2"), recipe)
    check_recipe(load_target("rpi4"), load_recipe("pytorch-int8-dynamic"))  # engine auto: picked at load


def test_device_kind_is_checked():
    gpu = apply_overrides(load_recipe("fp32"), ["devices=['cuda']"])
    with pytest.raises(TargetError, match=r"runs on cuda; target rpi4 is cpu"):
        check_recipe(load_target("rpi4"), gpu)


def test_expected_peak_follows_the_measured_whisper_base_table():
    # README, "Every recipe on whisper-base": onnx-int8-dynamic 85.6 MB -> 300 MB peak,
    # fp32 (torch) 294.3 MB -> 817 MB peak. The estimate stays within 10 % of both.
    assert expected_peak_mb("onnxruntime", 85_600_000) == pytest.approx(300, rel=0.1)
    assert expected_peak_mb("torch", 294_300_000) == pytest.approx(817, rel=0.1)


def test_a_bundle_too_big_for_the_target_is_refused_and_the_basis_is_said(tmp_path):
    small = tmp_path / "small.toml"
    small.write_text('description = "d"\narch = "arm64"\nthreads = 1\nmemory_mb = 100\ntorch_engine = "qnnpack"\n')
    target = load_target(str(small))
    with pytest.raises(TargetError, match=r"fp32: estimated peak RSS \(whisper-base fit\) 855 MB of small's 100 MB"):
        check_memory(target, "fp32", expected_peak_mb("torch", 294_000_000))
    line = check_memory(load_target("rpi4"), "onnx-int4", 296.4, MEASURED)
    assert line == "onnx-int4: measured peak RSS 296 MB of rpi4's 2,048 MB"
