"""benchmarks/decoder_step.py --profile: where a decoder step's time goes, by operator type, from
ONNX Runtime's profiler (EDGEQ_ORT_PROFILE). The split must be of the decoder that ran (one
profiled run per step, the products the recipe writes), and the profiler must be off again after."""

import os
import sys
from pathlib import Path

import numpy as np

import edgeq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
try:
    from decoder_step import binding_split, operator_split
finally:
    sys.path.remove(str(REPO / "benchmarks"))


def test_the_profile_splits_every_step_of_the_decoder_by_operator(tiny_model, tmp_path):
    bundle = edgeq.build("onnx-int8-dynamic", model=str(tiny_model), out=tmp_path / "b", language="en").path
    features = np.random.default_rng(0).standard_normal((80, 3000)).astype(np.float32)
    split = operator_split(str(bundle), features, steps=6, threads=1, spinning="off")
    decoder = split["decoder"]
    assert decoder["runs"] == 7  # the prompt, then one run per step
    ops = decoder["by_operator"]
    # onnx-int8-dynamic's decoder: per-channel int8 products (options.decoder_int8 = "channels")
    assert ops["DynamicQuantizeMatMul"]["nodes_per_step"] > 0 and "MatMulNBits" not in ops
    assert abs(decoder["kernel_ms_per_step"] - sum(v["ms_per_step"] for v in ops.values())) < 1e-6
    assert split["profiled_ms_per_step"] > 0
    if "head" in split:  # the projection onto the token table, a session of its own
        assert split["head"]["runs"] == 7
    assert "EDGEQ_ORT_PROFILE" not in os.environ
    assert not list(Path.cwd().glob("onnxruntime_profile_*.json"))


def test_the_binding_split_times_both_ways_and_checks_their_logits(tiny_model, tmp_path):
    # --bindings: steps alternating between the held binding and a fresh one, against an all-fresh decode
    bundle = edgeq.build("onnx-int8-dynamic", model=str(tiny_model), out=tmp_path / "b", language="en").path
    features = np.random.default_rng(0).standard_normal((80, 3000)).astype(np.float32)
    t = edgeq.load(bundle, threads=1, language="en")
    row = binding_split(t, features, steps=6, first=1)
    assert row["held_ms_per_step"] > 0 and row["fresh_ms_per_step"] > 0
    assert row["logits_identical"] is True
