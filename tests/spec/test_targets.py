"""Targets are validated data: every shipped one loads, and what it recommends exists and fits it."""

from __future__ import annotations

import pytest

from edgeq.errors import TargetError
from edgeq.spec.recipe import load_recipe, shipped_recipe_names
from edgeq.spec.targets import list_targets, load_target

TARGETS = list_targets()


def test_the_shipped_devices_are_there():
    assert {t.name for t in TARGETS} >= {"rpi4", "rpi5", "jetson-orin-nano", "x86-avx2", "x86-avx512-vnni"}


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
def test_recommended_recipes_exist_and_run_on_the_device(target):
    assert target.recommended, f"{target.name} recommends nothing"
    missing = [r for r in target.recommended if r not in shipped_recipe_names()]
    assert not missing, f"{target.name} recommends recipes that are not shipped: {missing}"
    for name in target.recommended:
        assert target.device in load_recipe(name).devices, f"{name} does not run on {target.device}"


def test_arm_targets_use_the_arm_quantized_engine():
    # x86's fbgemm/x86 engines do not exist in ARM builds of PyTorch.
    for t in TARGETS:
        assert (t.torch_engine == "qnnpack") == (t.arch == "arm64"), t.name


def test_unknown_target_suggests_close_names():
    with pytest.raises(TargetError, match="did you mean rpi5"):
        load_target("rpi6")


def test_target_file_with_unknown_key_is_refused(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('description = "x"\narch = "arm64"\nthreads = 4\nmemory_mb = 512\ntorch_engine = "qnnpack"\nram = 1\n')
    with pytest.raises(TargetError, match=r"mine.toml: unknown key 'ram'"):
        load_target(str(path))


def test_spinning_is_off_unless_a_target_says_so(tmp_path):
    from edgeq.spec.protocols import SPINNING

    assert all(t.spinning in SPINNING for t in TARGETS)
    assert load_target("rpi4").spinning == "off"  # a Pi often runs other services beside edgeq
    path = tmp_path / "mine.toml"
    path.write_text('description = "x"\narch = "arm64"\nthreads = 4\nmemory_mb = 512\ntorch_engine = "qnnpack"\n')
    assert load_target(str(path)).spinning == "off"
    path.write_text(path.read_text() + 'spinning = "always"\n')
    with pytest.raises(TargetError, match=r"mine.toml.*spinning"):
        load_target(str(path))
