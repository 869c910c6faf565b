"""`recommend` as a pure function over a results table: which recipe, which constraint bound, the
runner-up, and the target's device and RAM. The rows are the README's whisper-base numbers."""

from __future__ import annotations

import pytest

from edgeq.errors import EdgeqError
from edgeq.schema import replace
from edgeq.spec.targets import load_target
from edgeq.sweep.recommend import Budget, recommend

# name: (library, size MB, WER %, p50 s, peak RSS MB, devices) — README, whisper-base on speech-dev.
README = {
    "fp32": ("torch", 294.3, 2.82, 1.90, 817, ["cpu", "cuda"]),
    "onnx-int8-dynamic": ("onnxruntime", 85.6, 2.82, 0.85, 300, ["cpu"]),
    "quanto-int8-dynamic": ("optimum-quanto", 83.1, 2.26, 1.85, 715, ["cpu", "cuda"]),
    "onnx-int4": ("onnxruntime", 60.6, 2.82, 1.02, 296, ["cpu"]),
    "hqq-int4-g128": ("hqq", 63.6, 4.52, 2.27, 648, ["cpu", "cuda"]),
    "hqq-int3-g128": ("hqq", 59.2, 7.91, 3.09, 634, ["cpu", "cuda"]),
    "hqq-int2-g128": ("hqq", 52.6, 462.15, 4.55, 608, ["cpu", "cuda"]),
}


def _data(table=README, device="cpu") -> dict:
    recipes, cells = [], []
    for name, (lib, size, wer, p50, rss, devices) in table.items():
        recipes.append({"name": name, "library": lib, "scheme": "weight-only", "method": "m", "granularity": "g",
                        "bits_label": "8", "bits": 8, "format": "int8", "bundle_mb": size, "reduction_pct": 0.0,
                        "devices": devices})
        summary = {"wer": {"wer_pct": wer}, "latency": {"latency_s": {"p50": p50}}, "rtf": p50 / 7.8,
                   "memory": {"peak_rss_os_mb": rss}, "env": {"cpu": {"model": "AMD EPYC"}}}
        cells.append({"recipe": name, "condition": "speech-dev", "summary": summary, "failed": None})
    return {"model": "whisper-base", "baseline": "fp32", "recipes": recipes, "cells": cells,
            "conditions": [{"label": "speech-dev", "device": device}]}


def test_smallest_within_one_wer_point_and_what_bound():
    r = recommend(_data(), load_target("x86-avx2"))
    assert r.pick["name"] == "onnx-int4"
    # hqq-int3-g128 (59.2 MB) is the next smaller: ruled out by WER, which is what bound.
    assert r.bound.startswith("the next smaller, hqq-int3-g128, ΔWER +5.09 on speech-dev > --max-wer-increase 1")
    assert r.runner_up["name"] == "quanto-int8-dynamic"
    assert r.excluded["hqq-int2-g128"].startswith("ΔWER +459.33")


def test_size_latency_and_wer_budgets_bind_in_turn():
    r = recommend(_data(), load_target("x86-avx2"), Budget(max_wer_increase=6.0))
    assert r.pick["name"] == "hqq-int3-g128" and r.bound.startswith("the next smaller, hqq-int2-g128, ΔWER")
    r = recommend(_data(), load_target("x86-avx2"), Budget(max_latency_s=0.9))
    assert r.pick["name"] == "onnx-int8-dynamic"
    assert r.bound == "the next smaller, quanto-int8-dynamic, p50 1.85 s > --max-latency 0.9 s"
    with pytest.raises(EdgeqError, match=r"fits x86-avx2 .*smallest, hqq-int2-g128"):
        recommend(_data(), load_target("x86-avx2"), Budget(max_size_mb=50))


def test_target_ram_and_device_rule_recipes_out():
    # rpi4 has 2048 MB: half of it (1024 MB) holds every recipe; a 512 MB board would not hold fp32.
    small = replace(load_target("rpi4"), name="tiny-board", memory_mb=1200)
    r = recommend(_data(), small, Budget(max_wer_increase=0.0))
    assert r.excluded["fp32"] == "peak RSS 817 MB > 600 MB (50% of tiny-board's 1200 MB)"
    # The Jetson is a CUDA target: ONNX bundles here are CPU-only, and the sweep ran on a CPU.
    r = recommend(_data(), load_target("jetson-orin-nano"))
    assert r.excluded["onnx-int4"] == "does not run on cuda" and r.pick["name"] == "quanto-int8-dynamic"
    assert any("latency and RSS do not" in n for n in r.notes)


def test_failed_recipes_are_never_picked():
    data = _data()
    data["cells"][3]["summary"], data["cells"][3]["failed"] = None, "worker exited with code 9"
    r = recommend(data, load_target("x86-avx2"))
    assert r.pick["name"] == "quanto-int8-dynamic" and "failed (worker exited" in r.excluded["onnx-int4"]
